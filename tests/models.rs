//! The model layer end to end: retries that honour the provider, fallback along the chain,
//! exact cost under failures, budgets, and the OpenAI-compatible and Bedrock providers running
//! the same tool-using task as the Anthropic one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentq::domain::secret::Secret;
use agentq::domain::usage::PriceTable;
use agentq::llm::{BedrockModel, Model, OpenAiModel};
use agentq_tests::{CalculatorScript, FALLBACK, MODEL, TestApp, answer, prompt_of};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, Request, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(60);

fn overloaded() -> ResponseTemplate {
    ResponseTemplate::new(529)
        .set_body_json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
}

/// The cost the price table gives for a task's usage of each model: it must match what the
/// task records, to the nano-dollar.
fn assert_cost_is_exact(task: &Value) {
    let prices = PriceTable::default();
    let mut total = 0.0;
    for (model, u) in task["usage_by_model"].as_object().unwrap() {
        let usage = agentq::domain::usage::Usage {
            input_tokens: u["input_tokens"].as_u64().unwrap(),
            output_tokens: u["output_tokens"].as_u64().unwrap(),
            cache_read_input_tokens: u["cache_read_input_tokens"].as_u64().unwrap(),
            cache_creation_input_tokens: u["cache_creation_input_tokens"].as_u64().unwrap(),
            cost_nanos: 0,
        };
        let expected = prices.price(model).unwrap().cost_nanos(&usage) as f64 / 1e9;
        assert_eq!(u["cost_usd"].as_f64().unwrap(), expected, "{model}: {task}");
        total += expected;
    }
    assert!((task["usage"]["cost_usd"].as_f64().unwrap() - total).abs() < 1e-12, "{task}");
}

#[tokio::test]
async fn with_thirty_percent_of_calls_overloaded_every_task_succeeds_at_the_exact_cost() {
    let app = TestApp::spawn().await;
    let rng = Mutex::new(fastrand::Rng::with_seed(42));
    let successes = Arc::new(Mutex::new(0u64));
    let counted = successes.clone();
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(move |_: &Request| {
            if rng.lock().unwrap().f64() < 0.3 {
                return overloaded();
            }
            *counted.lock().unwrap() += 1;
            answer("ok", json!({"input_tokens": 100, "output_tokens": 20}))
        })
        .mount(&app.model)
        .await;

    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(app.submit(&format!("task {i}")).await);
    }
    let tasks = app.run_all_until_terminal(&ids, PATIENCE).await;
    for task in &tasks {
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["usage"]["input_tokens"], 100, "failed calls add no usage: {task}");
        assert_cost_is_exact(task);
    }
    assert_eq!(*successes.lock().unwrap(), 12, "one paid answer per task");
    let failures = app.model_requests().await.len() as u64 - 12;
    assert!(failures > 0, "the fake should have failed some calls");
    app.drain().await;
}

#[tokio::test]
async fn a_rate_limit_with_retry_after_is_waited_out_before_the_next_try() {
    let app = TestApp::spawn().await;
    let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let seen = arrivals.clone();
    Mock::given(method("POST"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let mut seen = seen.lock().unwrap();
            let times = seen.entry(prompt_of(&body)).or_default();
            times.push(Instant::now());
            if times.len() == 1 {
                ResponseTemplate::new(429).insert_header("retry-after", "1").set_body_json(
                    json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
                )
            } else {
                answer("ok", json!({"input_tokens": 10, "output_tokens": 1}))
            }
        })
        .mount(&app.model)
        .await;

    let ids = vec![app.submit("first").await, app.submit("second").await];
    for task in app.run_all_until_terminal(&ids, PATIENCE).await {
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["model"], MODEL, "the primary answered after the wait");
    }
    for (prompt, times) in arrivals.lock().unwrap().iter() {
        assert_eq!(times.len(), 2, "{prompt}");
        let waited = times[1] - times[0];
        assert!(waited >= Duration::from_secs(1), "{prompt}: retried after {waited:?}, before retry-after");
    }
    app.drain().await;
}

#[tokio::test]
async fn a_primary_that_is_always_overloaded_hands_the_task_to_the_fallback() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": MODEL})))
        .respond_with(overloaded())
        .mount(&app.model)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": FALLBACK})))
        .respond_with(CalculatorScript)
        .mount(&app.model)
        .await;

    let id = app.submit("What is 6 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "The answer is 42.");
    assert_eq!(task["model"], FALLBACK, "the record says which model answered");
    assert_eq!(task["usage_by_model"].as_object().unwrap().keys().collect::<Vec<_>>(), [FALLBACK]);
    assert_cost_is_exact(&task);
    // Each step says how its answer came: the primary passed over, its failed attempts counted,
    // the time it all took; the tool's step how long it ran.
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let steps = steps["steps"].as_array().unwrap();
    assert_eq!(steps[0]["passed_over"], json!([MODEL]), "{steps:?}");
    assert!(steps[0]["attempts"].as_u64().unwrap() >= 2, "the primary's failed attempts and the answer: {steps:?}");
    assert!(steps[0]["latency_ms"].is_u64(), "{steps:?}");
    assert!(steps[1]["duration_ms"].is_u64(), "{steps:?}");
    // The tenant's day counts the cost under the model that answered.
    let (_, usage) = app.call_status(&app.key, "GET", "/v1/usage", &[]).await;
    let by_model = usage["days"][0]["cost_by_model"].as_object().unwrap();
    assert_eq!(by_model.keys().collect::<Vec<_>>(), [FALLBACK], "{usage}");
    assert_eq!(by_model[FALLBACK], task["usage"]["cost_usd"], "{usage}");
    app.drain().await;
}

#[tokio::test]
async fn a_request_that_names_a_model_starts_the_chain_there() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (status, body) = app.post_task(&json!({"prompt": "What is 6 * 7?", "model": FALLBACK})).await;
    assert_eq!(status, 202, "{body}");
    let task = app.run_until_terminal(body["task_id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["model"], FALLBACK);
    assert!(app.model_requests().await.iter().all(|r| r["model"] == FALLBACK));

    let (status, body) = app.post_task(&json!({"prompt": "x", "model": "gpt-7"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "model");
    app.drain().await;
}

#[tokio::test]
async fn a_budget_stops_the_task_with_budget_exceeded_and_its_usage_so_far() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    // One call costs 50 × $3 + 10 × $15 per MTok = $0.0003; the budget is a third of that.
    let (status, body) = app.post_task(&json!({"prompt": "What is 6 * 7?", "max_cost_usd": 0.0001})).await;
    assert_eq!(status, 202, "{body}");
    let task = app.run_until_terminal(body["task_id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "budget_exceeded");
    assert_eq!(task["usage"]["cost_usd"], 0.0003);
    assert_eq!(app.model_requests().await.len(), 1, "no call after the budget was reached");
    app.drain().await;
}

#[tokio::test]
async fn a_tool_input_that_violates_its_schema_goes_back_as_an_error_result() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(|req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            match agentq_tests::tool_result_of(&body) {
                None => ResponseTemplate::new(200).set_body_json(agentq_tests::message(
                    json!([{"type": "tool_use", "id": "toolu_x", "name": "calculator", "input": {"formula": "1+1"}}]),
                    "tool_use",
                    json!({"input_tokens": 5, "output_tokens": 5}),
                )),
                Some(r) => answer(
                    &format!("tool said: {}", r["content"].as_str().unwrap()),
                    json!({"input_tokens": 5, "output_tokens": 5}),
                ),
            }
        })
        .mount(&app.model)
        .await;
    let id = app.submit("add one and one").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "a bad tool input is the model's to fix, not a crash");
    let result = agentq_tests::tool_result_of(&app.model_requests().await[1]).unwrap();
    assert_eq!(result["is_error"], true);
    assert!(result["content"].as_str().unwrap().contains("schema"), "{result}");
    app.drain().await;
}

/// The calculator conversation in OpenAI Chat Completions form.
fn openai_script(req: &Request) -> ResponseTemplate {
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let tool_message = body["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").cloned();
    let usage = json!({"prompt_tokens": 80, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 30}});
    let message = match tool_message {
        None => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"6 * 7\"}"}}
        ]}),
        Some(m) => {
            json!({"role": "assistant", "content": format!("The answer is {}.", m["content"].as_str().unwrap())})
        }
    };
    let finish = if message["tool_calls"].is_array() { "tool_calls" } else { "stop" };
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage
    }))
}

#[tokio::test]
async fn the_openai_compatible_provider_runs_the_same_tool_using_task() {
    let app = TestApp::spawn_with(|uri| {
        let m = OpenAiModel::new(
            agentq::net::client(),
            &format!("{uri}/v1"),
            Some(Secret::new("sk-test")),
            "gpt-4o-mini",
            512,
            Duration::from_secs(10),
        );
        vec![Arc::new(m) as Arc<dyn Model>]
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::header("authorization", "Bearer sk-test"))
        .respond_with(openai_script)
        .mount(&app.model)
        .await;
    let id = app.submit("What is 6 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "The answer is 42.");
    assert_eq!(task["model"], "gpt-4o-mini");
    assert_eq!(task["usage"]["cache_read_input_tokens"], 60, "cached prompt tokens are cache reads");
    assert_eq!(task["usage"]["input_tokens"], 100);
    assert_cost_is_exact(&task);
    app.drain().await;
}

/// The calculator conversation in Bedrock Converse form.
fn bedrock_script(req: &Request) -> ResponseTemplate {
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let result = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find_map(|b| b.get("toolResult").cloned());
    let (content, stop) = match result {
        None => (
            json!([{"toolUse": {"toolUseId": "tooluse_1", "name": "calculator", "input": {"expression": "6 * 7"}}}]),
            "tool_use",
        ),
        Some(r) => {
            (json!([{"text": format!("The answer is {}.", r["content"][0]["text"].as_str().unwrap())}]), "end_turn")
        }
    };
    ResponseTemplate::new(200).set_body_json(json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": 60, "outputTokens": 9, "totalTokens": 69, "cacheReadInputTokens": 5},
        "metrics": {"latencyMs": 12}
    }))
}

/// A Bedrock client's configuration for the fake at `uri`, with test credentials, over the
/// process's TLS stack (as `runtime::aws` builds every client).
fn bedrock_config(uri: &str) -> aws_sdk_bedrockruntime::config::Builder {
    use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(uri)
        .http_client(agentq::net::sdk_client())
}

#[tokio::test]
async fn the_bedrock_provider_runs_the_same_tool_using_task() {
    const BEDROCK_MODEL: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    let app = TestApp::spawn_with(|uri| {
        let config = bedrock_config(uri).build();
        let client = aws_sdk_bedrockruntime::Client::from_conf(config);
        vec![Arc::new(BedrockModel::new(client, BEDROCK_MODEL, 512)) as Arc<dyn Model>]
    })
    .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/model/.+/converse$"))
        .respond_with(bedrock_script)
        .mount(&app.model)
        .await;
    let id = app.submit("What is 6 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "The answer is 42.");
    assert_eq!(task["model"], BEDROCK_MODEL);
    assert_eq!(task["usage"]["input_tokens"], 120);
    assert_cost_is_exact(&task);
    let sent = app.model.received_requests().await.unwrap();
    assert!(sent[0].headers.contains_key("authorization"), "requests are SigV4-signed");
    app.drain().await;
}

#[tokio::test]
async fn a_bedrock_throttle_is_retried_and_a_validation_error_fails_the_task() {
    let app = TestApp::spawn_with(|uri| {
        let config = bedrock_config(uri)
            // The SDK's own retries would hide the throttle from ours.
            .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
            .build();
        let client = aws_sdk_bedrockruntime::Client::from_conf(config);
        vec![Arc::new(BedrockModel::new(client, "anthropic.claude-3-haiku-20240307-v1:0", 512)) as Arc<dyn Model>]
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-amzn-errortype", "ThrottlingException")
                .set_body_json(json!({"message": "Too many requests"})),
        )
        .up_to_n_times(1)
        .mount(&app.model)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-amzn-errortype", "ValidationException")
                .set_body_json(json!({"message": "The model returned the following errors: bad input"})),
        )
        .mount(&app.model)
        .await;
    let id = app.submit("hi").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "model_error");
    assert!(task["error"]["message"].as_str().unwrap().contains("bad input"), "{task}");
    assert_eq!(app.model.received_requests().await.unwrap().len(), 2, "the throttle was retried once");
    app.drain().await;
}

#[tokio::test]
async fn a_dead_primary_gets_as_many_failed_requests_as_the_breaker_threshold_and_other_instances_none() {
    let mut app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": MODEL})))
        .respond_with(overloaded())
        .mount(&app.model)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": FALLBACK})))
        .respond_with(CalculatorScript)
        .mount(&app.model)
        .await;
    // The deployment's breaker (5 failed attempts, a long cool-down) over the test's models.
    let first = dead_primary_chain(&app).with_board(app.store.clone());
    app.worker.models = first;
    // Ten two-call tasks, one after another, during the outage.
    for n in 0..10 {
        let id = app.submit(&format!("What is {n} * 7?")).await;
        let task = app.run_until_terminal(&id, PATIENCE).await;
        assert_eq!((task["status"].as_str(), task["model"].as_str()), (Some("succeeded"), Some(FALLBACK)), "{task}");
    }
    let to_primary = app.model_requests().await.iter().filter(|r| r["model"] == MODEL).count();
    // Counting calls, it took 5 calls of 2 attempts (10 requests) to open; counting attempts, 5.
    assert_eq!(to_primary, 5, "failed requests to the dead primary across 20 model calls");

    // Another instance (breakers of its own, the same table) learns it from the shared item.
    app.worker.models = dead_primary_chain(&app).with_board(app.store.clone());
    let id = app.submit("What is 8 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["model"], FALLBACK);
    let after = app.model_requests().await.iter().filter(|r| r["model"] == MODEL).count();
    assert_eq!(after, 5, "the second instance sent the dead primary nothing");
    app.drain().await;
}

/// A fresh chain over the test's models (new breakers: another instance's), with the
/// deployment's breaker policy and a long cool-down.
fn dead_primary_chain(app: &TestApp) -> agentq::llm::ModelChain {
    use agentq::llm::{BreakerPolicy, ModelChain};
    let models = [MODEL, FALLBACK]
        .into_iter()
        .map(|m| {
            let key = Secret::new("test-key");
            let model = agentq::llm::AnthropicModel::new(
                agentq::net::client(),
                &app.model.uri(),
                key,
                m,
                1024,
                Duration::from_secs(10),
            );
            Arc::new(model) as Arc<dyn Model>
        })
        .collect();
    ModelChain::new(models, BreakerPolicy { threshold: 5, cooldown: Duration::from_secs(600) })
}
