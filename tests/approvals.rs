//! Approvals through the whole pipeline, with the model over HTTP and the store and queues in
//! the emulators: a tool that needs a person stops the run as `waiting_for_input` holding no
//! message, lease or slot; each decision (approve, reject, edit) reaches the model as the
//! tool's result; bad, stale and repeated decisions get clear errors; a wait that times out
//! is rejected by the reconciler; a waiting task can be cancelled.

use std::time::Duration;

use agentq_tests::{CalculatorScript, TestApp};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

const WAIT: Duration = Duration::from_secs(60);

/// A task that asks for the calculator, which needs approval.
fn guarded(extra: Value) -> Value {
    let mut body = json!({"prompt": "What is 6 * 7?", "approval": {"tools": ["calculator"]}});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    body
}

async fn scripted() -> TestApp {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    app
}

async fn submit(app: &TestApp, body: &Value) -> String {
    let (status, accepted) = app.post_task(body).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["task_id"].as_str().unwrap().to_owned()
}

/// The tool results the model was sent, in order.
async fn tool_results(app: &TestApp) -> Vec<Value> {
    app.model_requests()
        .await
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .collect()
}

fn one_decision(task: &Value, action: &str, extra: Value) -> Value {
    let mut d = json!({"tool_use_id": task["pending"][0]["tool_use_id"], "action": action});
    d.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    json!({"decisions": [d]})
}

#[tokio::test]
async fn a_tool_that_needs_approval_waits_holding_nothing_and_runs_once_approved() {
    let app = scripted().await;
    let id = submit(&app, &guarded(json!({}))).await;
    let waiting = app.run_until_status(&id, "waiting_for_input", WAIT).await;
    let pending = &waiting["pending"][0];
    assert_eq!((pending["name"].as_str(), pending["step"].as_u64()), (Some("calculator"), Some(1)));
    assert_eq!(pending["input"], json!({"expression": "6 * 7"}));
    assert!(waiting["waiting_until"].is_string(), "{waiting}");
    assert_eq!(waiting["approval"], json!({"tools": ["calculator"]}));
    assert!(tool_results(&app).await.is_empty(), "nothing ran");
    assert_eq!(app.running_count("acme").await, 0, "a waiting task holds no slot");
    assert_eq!(app.queue_depth(&app.queues.default).await, 0, "and no message");
    let (_, listed) = app.call_status(&app.key, "GET", "/v1/tasks", &[("status", "waiting_for_input")]).await;
    assert_eq!(listed["tasks"][0]["task_id"], json!(id));
    assert_eq!(listed["tasks"][0]["pending"][0]["name"], "calculator");

    let (status, resumed) = app.post_input(&app.key, &id, &one_decision(&waiting, "approve", json!({}))).await;
    assert_eq!(status, 202, "{resumed}");
    assert_eq!(resumed["status"], "queued");
    assert!(resumed.get("pending").is_none());
    let (status, again) = app.post_input(&app.key, &id, &one_decision(&waiting, "approve", json!({}))).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("not_waiting")), "{again}");

    let done = app.run_until_terminal(&id, WAIT).await;
    assert_eq!(done["result"]["text"], "The answer is 42.");
    assert_eq!(done["iterations"], 2, "the recorded answer was not asked for again");
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let kinds: Vec<&str> = steps["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["model", "decision", "tool", "model"]);
    let decision = &steps["steps"][1];
    assert_eq!((decision["action"].as_str(), decision["by"].as_str().map(str::len)), (Some("approve"), Some(16)));
    let (_, events) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/events"), &[]).await;
    let types: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.windows(2).any(|w| w == ["task.waiting_for_input", "task.resumed"]),
        "the log tells the wait and the decision: {types:?}"
    );
    assert!(events.to_string().find("6 * 7").is_none(), "events carry no content");
    app.drain().await;
}

#[tokio::test]
async fn a_rejection_reaches_the_model_as_an_error_and_an_edit_runs_the_corrected_input() {
    let app = scripted().await;
    let rejected = submit(&app, &guarded(json!({"metadata": {"n": 1}}))).await;
    let edited = submit(&app, &guarded(json!({"metadata": {"n": 2}}))).await;
    let r = app.run_until_status(&rejected, "waiting_for_input", WAIT).await;
    let e = app.run_until_status(&edited, "waiting_for_input", WAIT).await;

    let (status, body) =
        app.post_input(&app.key, &rejected, &one_decision(&r, "reject", json!({"message": "not today"}))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) =
        app.post_input(&app.key, &edited, &one_decision(&e, "edit", json!({"input": {"expr": "2 + 2"}}))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("validation_failed")),
        "an edit must fit the schema: {body}"
    );
    assert!(body.to_string().contains("decisions[0].input"), "{body}");
    let (status, body) =
        app.post_input(&app.key, &edited, &one_decision(&e, "edit", json!({"input": {"expression": "2 + 2"}}))).await;
    assert_eq!(status, 202, "{body}");

    let done = app.run_all_until_terminal(&[rejected.clone(), edited.clone()], WAIT).await;
    assert_eq!(done[0]["result"]["text"], "The answer is The reviewer rejected this tool call: not today.");
    assert_eq!(done[1]["result"]["text"], "The answer is 4.");
    let results = tool_results(&app).await;
    assert!(
        results.iter().any(|r| r["is_error"] == true && r["content"].as_str().unwrap().contains("not today")),
        "the model read the rejection as an error result: {results:?}"
    );
    app.drain().await;
}

#[tokio::test]
async fn bad_stale_and_foreign_decisions_get_clear_errors() {
    let app = scripted().await;
    let (status, body) = app.post_task(&json!({"prompt": "x", "approval": {"tools": ["rm"], "timeout_secs": 5}})).await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["approval.tools", "approval.timeout_secs"]);

    let id = submit(&app, &guarded(json!({}))).await;
    let (status, body) =
        app.post_input(&app.key, &id, &json!({"decisions": [{"tool_use_id": "x", "action": "approve"}]})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_waiting")), "a queued task has nothing to decide");
    let waiting = app.run_until_status(&id, "waiting_for_input", WAIT).await;
    let (status, body) =
        app.post_input(&app.key, &id, &json!({"decisions": [{"tool_use_id": "toolu_old", "action": "approve"}]})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("stale_decision")), "{body}");
    let (status, body) = app.post_input(&app.key, &id, &json!({"decisions": [{"tool_use_id": 5}]})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("validation_failed")), "{body}");
    let other = app.tenant("other", agentq::domain::tenant::Limits::default()).await;
    let (status, _) = app.post_input(&other, &id, &one_decision(&waiting, "approve", json!({}))).await;
    assert_eq!(status, 404, "another tenant's task is not found");
    let (status, _) = app.post_input(&app.key, &id, &one_decision(&waiting, "approve", json!({}))).await;
    assert_eq!(status, 202);
    app.drain().await;
}

#[tokio::test]
async fn a_wait_that_times_out_is_rejected_by_the_reconciler_and_the_task_goes_on() {
    let app = scripted().await;
    let id = submit(&app, &guarded(json!({"approval": {"tools": ["calculator"], "timeout_secs": 10}}))).await;
    let waiting = app.run_until_status(&id, "waiting_for_input", WAIT).await;
    let until = time::OffsetDateTime::parse(
        waiting["waiting_until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let early = reconciler::reconcile(&app.reconciler(), until - Duration::from_secs(1)).await.unwrap();
    assert_eq!(early.timed_out, 0, "not before its time");
    let report = reconciler::reconcile(&app.reconciler(), until + Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.timed_out, 1);
    let done = app.run_until_terminal(&id, WAIT).await;
    assert_eq!(
        done["result"]["text"],
        "The answer is The reviewer rejected this tool call: no decision was made within 10 seconds."
    );
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    assert_eq!(steps["steps"][1]["by"], "agentq:timeout");
    app.drain().await;
}

#[tokio::test]
async fn a_waiting_task_frees_its_slot_for_the_next_and_can_be_cancelled() {
    let app = scripted().await;
    let capped = app.tenant("capped", agentq::domain::tenant::Limits { max_running: 1, ..Default::default() }).await;
    let post = |body: Value| {
        let (app, capped) = (&app, capped.clone());
        async move {
            let r = app.post_as(&capped, &body, &[]).await;
            (r.status().as_u16(), agentq_tests::body_json(r.body()))
        }
    };
    let (status, first) = post(guarded(json!({}))).await;
    assert_eq!(status, 202);
    let first = first["task_id"].as_str().unwrap().to_owned();
    let (status, _) = post(json!({"prompt": "hello"})).await;
    assert_eq!(status, 429, "the cap holds while the first task is queued");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, task) = app.call_status(&capped, "GET", &format!("/v1/tasks/{first}"), &[]).await;
        if task["status"] == "waiting_for_input" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{task}");
        app.deliver_once().await;
    }
    let (status, second) = post(json!({"prompt": "hello"})).await;
    assert_eq!(status, 202, "a waiting task does not count against the cap: {second}");

    let (status, cancelled) = app.call_status(&capped, "DELETE", &format!("/v1/tasks/{first}"), &[]).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(cancelled.get("pending").is_none());
    app.drain().await;
    assert_eq!(app.running_count("capped").await, 0, "the count is true after all of it");
}
