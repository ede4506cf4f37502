//! Fork through the pipeline, with the model over HTTP: a fork keeps its parent's first steps
//! (shown as inherited, not asked for or billed again), runs from there with its next turn
//! edited, names its parent and is listed by it; bad forks get clear 4xx.

use std::time::Duration;

use agentq_tests::{CalculatorScript, TestApp};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

const WAIT: Duration = Duration::from_secs(60);

/// `POST /v1/tasks/{id}/fork` as `key`.
async fn fork(app: &TestApp, key: &str, id: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut event: Value = serde_json::from_str(include_str!("../events/input.json")).unwrap();
    let path = format!("/v1/tasks/{id}/fork");
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["routeKey"] = json!("POST /v1/tasks/{id}/fork");
    event["pathParameters"] = json!({"id": id});
    event["body"] = json!(body.to_string());
    event["headers"]["authorization"] = json!(format!("Bearer {key}"));
    for (k, v) in headers {
        event["headers"][*k] = json!(v);
    }
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let r = submit::handle(&app.submit, req).await;
    let (status, body) = (r.status().as_u16(), agentq_tests::body_json(r.body()));
    if status == 202 {
        app.track(body["task_id"].as_str().unwrap());
    }
    (status, body)
}

async fn finished_parent(app: &TestApp) -> (String, Value) {
    let id = app.submit("What is 6 * 7?").await;
    let parent = app.run_until_terminal(&id, WAIT).await;
    assert_eq!(parent["result"]["text"], "The answer is 42.");
    (id, parent)
}

#[tokio::test]
async fn a_fork_with_a_corrected_tool_result_runs_from_there_paying_only_for_its_own_steps() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (parent_id, parent) = finished_parent(&app).await;
    let calls = app.model_requests().await.len();
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{parent_id}/steps"), &[]).await;
    let call = steps["steps"][0]["content"][0]["id"].as_str().unwrap().to_owned();

    let body = json!({"from_step": 1, "edit": {"tool_results": [{"tool_use_id": call, "content": "41"}]}});
    let (status, accepted) = fork(&app, &app.key, &parent_id, &body, &[("idempotency-key", "fork-1")]).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        (accepted["parent"]["task_id"].as_str(), accepted["parent"]["from_step"].as_u64()),
        (Some(parent_id.as_str()), Some(1))
    );
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let (status, again) = fork(&app, &app.key, &parent_id, &body, &[("idempotency-key", "fork-1")]).await;
    assert_eq!((status, again["task_id"].as_str()), (202, Some(id.as_str())), "the same key is the same fork");

    let done = app.run_until_terminal(&id, WAIT).await;
    assert_eq!(done["result"]["text"], "The answer is 41.", "the fork ran on the corrected result");
    assert_eq!(app.model_requests().await.len(), calls + 1, "one model call: the inherited step was not asked again");
    assert_eq!(done["iterations"], 2);
    let parent_cost = parent["usage"]["cost_usd"].as_f64().unwrap();
    let fork_cost = done["usage"]["cost_usd"].as_f64().unwrap();
    assert!(fork_cost > 0.0 && fork_cost < parent_cost, "only its own step is billed: {fork_cost} of {parent_cost}");
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let shown: Vec<(String, bool)> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap().to_owned(), s["inherited"] == true))
        .collect();
    let expected = [("model", true), ("tool", true), ("model", false)].map(|(k, i)| (k.to_owned(), i));
    assert_eq!(shown, expected);
    assert_eq!(steps["steps"][1]["content"], "41");

    let (_, parent) = app.get_task(&parent_id).await;
    assert_eq!(parent["forks"][0]["task_id"], json!(id), "the parent lists its fork once");
    assert_eq!(parent["forks"].as_array().unwrap().len(), 1);
    let (_, usage) = app.call_status(&app.key, "GET", "/v1/usage", &[]).await;
    let total = usage["total"]["usage"]["cost_usd"].as_f64().unwrap();
    assert!((total - (parent_cost + fork_cost)).abs() < 1e-9, "usage counts each step once: {total}");
    app.drain().await;
}

#[tokio::test]
async fn a_fork_from_the_final_answer_goes_on_with_its_message() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (parent_id, _) = finished_parent(&app).await;
    let body = json!({"from_step": 2, "edit": {"message": "Now say it in French."}, "metadata": {"try": 2}});
    let (status, accepted) = fork(&app, &app.key, &parent_id, &body, &[]).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let done = app.run_until_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["iterations"], 3);
    assert_eq!(done["metadata"], json!({"try": 2}));
    let last = app.model_requests().await.pop().unwrap();
    let sent = last["messages"].as_array().unwrap();
    assert_eq!(sent.len(), 5, "prompt, tool turn, results, final answer, the fork's message");
    assert_eq!(sent[4]["content"][0]["text"], "Now say it in French.");
    app.drain().await;
}

#[tokio::test]
async fn bad_forks_get_clear_errors() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (parent_id, _) = finished_parent(&app).await;
    let fields = |body: &Value| -> Vec<String> {
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
    };
    let (status, body) = fork(&app, &app.key, &parent_id, &json!({"from_step": 9}), &[]).await;
    assert_eq!((status, fields(&body)), (400, vec!["from_step".to_owned()]));
    let (status, body) = fork(&app, &app.key, &parent_id, &json!({"from_step": 2}), &[]).await;
    assert_eq!((status, fields(&body)), (400, vec!["edit.message".to_owned()]), "a final answer needs a message");
    let bad = json!({"from_step": 1, "edit": {"tool_results": [{"tool_use_id": "toolu_x", "content": "1"}], "model": "gpt-9"}});
    let (status, body) = fork(&app, &app.key, &parent_id, &bad, &[]).await;
    assert_eq!((status, fields(&body)), (400, vec!["edit.model".to_owned()]));
    let (status, body) = fork(&app, &app.key, &parent_id, &json!({"from_step": 1, "max_iterations": 1}), &[]).await;
    assert_eq!((status, fields(&body)), (400, vec!["max_iterations".to_owned()]));
    let other = app.tenant("other", agentq::domain::tenant::Limits::default()).await;
    let (status, _) = fork(&app, &other, &parent_id, &json!({"from_step": 1}), &[]).await;
    assert_eq!(status, 404, "another tenant's task cannot be forked");
    app.drain().await;
}
