//! What a run leaves behind for the people operating it: JSON log lines, EMF metrics and
//! spans, checked end to end through the emulators. One task's trace id must lead from the
//! submit response to every worker line and span of that task; the metrics must say what
//! happened with the right numbers; prompts and answers must stay out of the logs.
//!
//! The subscriber is global, so these tests install it once per process and tell their own
//! lines and records apart by task id (nextest also runs each test in its own process).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentq::observe::metrics;
use agentq_tests::{FALLBACK, MODEL, TestApp, answer};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(30);

/// Every span exported, kept for the test to read.
#[derive(Debug, Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Every log line written, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Captured {
    spans: Spans,
    lines: Lines,
}

impl Captured {
    fn get() -> &'static Captured {
        static CAPTURED: OnceLock<Captured> = OnceLock::new();
        CAPTURED.get_or_init(|| {
            let (spans, lines) = (Spans::default(), Lines::default());
            let writer = lines.clone();
            let _tracing = agentq::observe::telemetry::traces::init_for_tests(spans.clone(), move || writer.clone());
            Captured { spans, lines }
        })
    }

    /// The log lines, parsed (each must be one JSON object).
    fn lines(&self) -> Vec<Value> {
        let raw = String::from_utf8(self.lines.0.lock().unwrap().clone()).unwrap();
        raw.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect()
    }

    fn raw_lines(&self) -> String {
        String::from_utf8(self.lines.0.lock().unwrap().clone()).unwrap()
    }

    fn spans(&self) -> Vec<SpanData> {
        self.spans.0.lock().unwrap().clone()
    }
}

/// The metric records written so far that carry `name`.
fn records_with(records: &[Value], name: &str) -> Vec<Value> {
    records.iter().filter(|r| r.get(name).is_some()).cloned().collect()
}

#[tokio::test]
async fn one_trace_id_leads_from_the_submit_response_to_the_workers_lines_and_spans() {
    let captured = Captured::get();
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(answer("Paris.", json!({})))
        .mount(&app.model)
        .await;

    // The client's own W3C trace: the task's work joins it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{client_trace}-00f067aa0ba902b7-01");
    let response =
        app.post_as(&app.key, &json!({"prompt": "Capital of France?"}), &[("traceparent", &traceparent)]).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], client_trace);
    let id = agentq_tests::body_json(response.body())["task_id"].as_str().unwrap().to_owned();

    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["trace_id"], client_trace, "the task record names its trace");

    let lines: Vec<Value> = captured.lines().into_iter().filter(|l| l["task_id"] == id.as_str()).collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in ["task accepted", "task claimed", "model call", "task finished"] {
        assert!(messages.contains(&expected), "no {expected:?} line for the task in {messages:?}");
    }
    for line in &lines {
        assert_eq!(line["trace_id"], client_trace, "{line}");
        assert_eq!(line["tenant_id"], "acme", "{line}");
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    let call = lines.iter().find(|l| l["message"] == "model call").unwrap();
    assert_eq!(call["model"], MODEL);
    assert_eq!(call["provider"], "anthropic");
    assert_eq!(call["attempt"], 1);
    assert_eq!(call["outcome"], "ok");
    assert!(call["latency_ms"].is_u64(), "{call}");

    let spans: Vec<SpanData> =
        captured.spans().into_iter().filter(|s| s.span_context.trace_id().to_string() == client_trace).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    for expected in ["submit", "message", "model_call"] {
        assert!(names.contains(&expected), "no {expected:?} span in the client's trace: {names:?}");
    }
    let submit = spans.iter().find(|s| s.name == "submit").unwrap();
    assert_eq!(submit.parent_span_id.to_string(), "00f067aa0ba902b7", "submit continues the client's span");
    let span =
        |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span in {names:?}"));
    let send = span("sqs.send");
    assert_eq!(send.parent_span_id, submit.span_context.span_id());
    let message = span("message");
    assert_eq!(message.parent_span_id, send.span_context.span_id(), "the worker's span hangs off the send");
    let step = span("step");
    assert_eq!(span("model_call").parent_span_id, step.span_context.span_id());
    assert_eq!(step.parent_span_id, message.span_context.span_id());
    for store_write in ["store.admit", "store.claim", "store.finish"] {
        span(store_write);
    }
    assert!(!names.contains(&"store.record_step"), "a run's only answer is written with its end: {names:?}");
    app.drain().await;
}

#[tokio::test]
async fn a_task_without_a_client_trace_gets_its_own_trace_id_in_x_ray_form() {
    let captured = Captured::get();
    let app = TestApp::spawn().await;
    let response = app.post_as(&app.key, &json!({"prompt": "hi"}), &[]).await;
    assert_eq!(response.status(), 202);
    let trace = response.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32, "{trace}");
    // X-Ray ids begin with the epoch second they were made in.
    let epoch = u64::from_str_radix(&trace[..8], 16).unwrap();
    let now = agentq::now().unix_timestamp() as u64;
    assert!(now.abs_diff(epoch) < 600, "{trace} does not start with the time");
    assert!(captured.spans().iter().any(|s| s.name == "submit" && s.span_context.trace_id().to_string() == trace));
    app.drain().await;
}

#[tokio::test]
async fn the_metrics_of_a_finished_task_carry_its_status_cost_tokens_and_model() {
    Captured::get();
    let app = TestApp::spawn().await;
    let usage = json!({"input_tokens": 1000, "output_tokens": 500});
    Mock::given(method("POST")).and(path("/v1/messages")).respond_with(answer("Paris.", usage)).mount(&app.model).await;
    let id = app.submit("Capital of France?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let records = metrics::take();
    let mine: Vec<Value> = records.iter().filter(|r| r["task_id"] == id.as_str()).cloned().collect();
    let accepted = &records_with(&mine, "TasksAccepted")[0];
    assert_eq!(accepted["priority"], "default");
    assert_eq!(accepted["tenant_id"], "acme");

    let finished = records_with(&mine, "TasksFinished");
    assert_eq!(finished.len(), 1, "one terminal record: {finished:?}");
    let f = &finished[0];
    assert_eq!(f["status"], "succeeded");
    assert_eq!(f["TaskIterations"], 1.0);
    // Sonnet 4.5: $3 in, $15 out per million tokens.
    let cost = 1000.0 * 3.0e-6 + 500.0 * 15.0e-6;
    assert!((f["TaskCostUsd"].as_f64().unwrap() - cost).abs() < 1e-12, "{f}");
    assert_eq!(f["TaskCostUsd"], task["usage"]["cost_usd"]);
    assert!(f["TaskDurationMs"].as_f64().unwrap() >= 0.0);
    let cw = &f["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(cw["Namespace"], "agentq");
    assert_eq!(cw["Dimensions"], json!([["function"], ["function", "status"]]));

    let tokens = &records_with(&mine, "InputTokens")[0];
    assert_eq!((tokens["model"].as_str(), tokens["InputTokens"].as_f64()), (Some(MODEL), Some(1000.0)));
    assert_eq!(tokens["OutputTokens"], 500.0);
    assert_eq!(records_with(&mine, "QueueWaitMs").len(), 1);

    let calls = records_with(&records, "ModelCalls");
    assert!(calls.iter().any(|c| c["model"] == MODEL && c["outcome"] == "ok"), "{calls:?}");
    assert!(records_with(&records, "ModelLatencyMs").iter().all(|c| c["ModelLatencyMs"].as_f64().unwrap() >= 0.0));
    // Every AWS request is counted, by service, with its operations.
    let requests = records_with(&records, "AwsRequests");
    let dynamodb = requests.iter().find(|r| r["service"] == "DynamoDB").expect("DynamoDB requests counted");
    // The submit's put of the task, the end's transaction.
    assert!(dynamodb["operations"]["PutItem"].as_u64().unwrap() >= 1, "{dynamodb}");
    assert!(dynamodb["operations"]["TransactWriteItems"].as_u64().unwrap() >= 1, "{dynamodb}");
    assert!(requests.iter().any(|r| r["service"] == "SQS" && r["operations"]["SendMessage"].as_u64() >= Some(1)));
    app.drain().await;
}

#[tokio::test]
async fn a_failing_model_is_counted_by_error_kind_with_its_retries_and_the_fallback() {
    Captured::get();
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": MODEL})))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})),
        )
        .mount(&app.model)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"model": FALLBACK})))
        .respond_with(answer("Paris.", json!({})))
        .mount(&app.model)
        .await;
    let id = app.submit("Capital of France?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!((task["status"].as_str(), task["model"].as_str()), (Some("succeeded"), Some(FALLBACK)), "{task}");

    let records = metrics::take();
    let failed: Vec<_> = records_with(&records, "ModelCalls").into_iter().filter(|c| c["model"] == MODEL).collect();
    // The test chain tries each model twice.
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|c| c["outcome"] == "http_503"), "{failed:?}");
    assert_eq!(records_with(&records, "ModelRetries").iter().filter(|r| r["model"] == MODEL).count(), 1);
    let fallbacks = records_with(&records, "Fallbacks");
    assert!(fallbacks.iter().any(|f| f["from"] == MODEL && f["to"] == FALLBACK), "{fallbacks:?}");
    app.drain().await;
}

#[tokio::test]
async fn tool_calls_are_counted_by_tool_and_outcome() {
    Captured::get();
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(agentq_tests::CalculatorScript)
        .mount(&app.model)
        .await;
    let id = app.submit("What is 6 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let records = metrics::take();
    let tools: Vec<_> =
        records_with(&records, "ToolCalls").into_iter().filter(|r| r["task_id"] == id.as_str()).collect();
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!((tools[0]["tool"].as_str(), tools[0]["outcome"].as_str()), (Some("calculator"), Some("ok")));
    assert!(tools[0]["ToolLatencyMs"].as_f64().is_some());
    app.drain().await;
}

#[tokio::test]
async fn rejected_submits_are_counted_by_reason() {
    Captured::get();
    let app = TestApp::spawn().await;
    let (status, _) = app.post_task(&json!({"prompt": ""})).await;
    assert_eq!(status, 400);
    let response = app.post_as("aq_wrong_key", &json!({"prompt": "hi"}), &[]).await;
    assert_eq!(response.status(), 401);
    let rejected = records_with(&metrics::take(), "SubmitsRejected");
    let reasons: Vec<&str> = rejected.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(reasons.contains(&"validation_failed") && reasons.contains(&"unauthorized"), "{reasons:?}");
    app.drain().await;
}

#[tokio::test]
async fn prompts_and_answers_stay_out_of_the_logs_by_default() {
    let captured = Captured::get();
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(answer("the answer is ZEBRA-ANSWER-42", json!({})))
        .mount(&app.model)
        .await;
    let id = app.submit("my password is hunter2-SECRET").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let raw = captured.raw_lines();
    assert!(raw.contains(&id), "the task's lines were captured");
    assert!(!raw.contains("hunter2"), "the prompt was logged");
    assert!(!raw.contains("ZEBRA-ANSWER"), "the answer was logged");
    assert!(!raw.contains(&app.key), "an API key was logged");
    let accepted =
        captured.lines().into_iter().find(|l| l["task_id"] == id.as_str() && l["message"] == "task accepted");
    let prompt = accepted.expect("an accepted line")["prompt"].as_str().unwrap().to_owned();
    assert!(prompt.starts_with("[29 chars, sha256 "), "{prompt}");
    app.drain().await;
}
