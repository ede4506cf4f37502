//! The task event log through the API: every change of a task, in order, numbered, with its
//! spending, and never its content.

use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq_tests::{CalculatorScript, TestApp};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use wiremock::Mock;
use wiremock::matchers::method;

async fn events(app: &TestApp, id: &str, query: &[(&str, &str)]) -> (u16, Value) {
    app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/events"), query).await
}

#[tokio::test]
async fn a_finished_task_has_its_whole_story_in_order() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let id = app.submit("What is 6 * 7? A secret: swordfish").await;
    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded");

    let (status, body) = events(&app, &id, &[]).await;
    assert_eq!(status, 200, "{body}");
    let log = body["events"].as_array().unwrap();
    let kinds: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["task.queued", "task.started", "task.step", "task.step", "task.succeeded"]);
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(log.iter().all(|e| e["id"].as_str().unwrap().starts_with("evt_") && e["task_id"] == id.as_str()));
    assert_eq!(log[2]["data"]["step"], 1);
    assert_eq!(log[2]["data"]["tool_calls"], 1);
    assert_eq!(log[4]["data"]["spent"]["cost_usd"], task["usage"]["cost_usd"], "the end carries the bill");
    assert!(!body.to_string().contains("swordfish"), "no content in events");
    assert!(body.get("next_after").is_none());

    let (_, later) = events(&app, &id, &[("after", "3")]).await;
    let seqs: Vec<u64> = later["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5], "resumes after a seq");
    let (_, page) = events(&app, &id, &[("limit", "2")]).await;
    assert_eq!((page["events"].as_array().unwrap().len(), page["next_after"].as_u64()), (2, Some(2)));
    app.drain().await;
}

#[tokio::test]
async fn events_are_the_tenants_own_and_bad_cursors_are_refused() {
    let app = TestApp::spawn().await;
    let id = app.submit("mine").await;
    let other = app.tenant("globex", Limits::default()).await;
    let (status, _) = app.call_status(&other, "GET", &format!("/v1/tasks/{id}/events"), &[]).await;
    assert_eq!(status, 404);
    let (status, body) = events(&app, &id, &[("after", "-1")]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("validation_failed")));
    let (_, queued) = events(&app, &id, &[]).await;
    assert_eq!(queued["events"][0]["type"], "task.queued");
    app.drain().await;
}

#[tokio::test]
async fn a_task_stored_with_its_first_event_written_shows_that_event_once() {
    // Before the first event was derived from the task's item, submit wrote it as `EVT#000001`.
    let app = TestApp::spawn().await;
    let id = app.submit("stored the old way").await;
    let (_, derived) = events(&app, &id, &[]).await;
    assert_eq!(derived["events"][0]["id"], format!("evt_{id}"), "derived from the task: {derived}");
    let mut written = derived["events"][0].clone();
    written["id"] = "evt_01M0000000000000000000WRTN".into();
    app.dynamodb
        .put_item()
        .table_name(&app.table)
        .item("pk", AttributeValue::S(format!("TASK#{id}")))
        .item("sk", AttributeValue::S("EVT#000001".into()))
        .item("data", AttributeValue::S(written.to_string()))
        .item("expires_at", AttributeValue::N("4102444800".into()))
        .send()
        .await
        .unwrap();
    let (status, body) = events(&app, &id, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["events"][0], written, "the stored one, once");
    app.drain().await;
}
