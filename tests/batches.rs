//! Batches through submit, the worker and the status API against the emulators: each item
//! admitted on its own (bad fields, the running cap, the rate limit), the answer in the
//! request's order, the batch's progress and results read as a whole, a whole batch cancelled,
//! and an `Idempotency-Key` covering the batch.

use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq_tests::{CalculatorScript, TestApp, body_json};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

async fn post_batch(app: &TestApp, key: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut event: Value = serde_json::from_str(include_str!("../events/submit.json")).unwrap();
    event["rawPath"] = json!("/v1/batches");
    event["requestContext"]["http"]["path"] = json!("/v1/batches");
    event["body"] = json!(body.to_string());
    event["headers"]["authorization"] = json!(format!("Bearer {key}"));
    for (k, v) in headers {
        event["headers"][*k] = json!(v);
    }
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let r = submit::handle(&app.submit, req).await;
    let (status, body) = (r.status().as_u16(), body_json(r.body()));
    for item in body["items"].as_array().into_iter().flatten() {
        if let Some(id) = item["task_id"].as_str() {
            app.track(id);
        }
    }
    (status, body)
}

async fn batch(app: &TestApp, key: &str, id: &str, query: &[(&str, &str)]) -> (u16, Value) {
    app.call_status(key, "GET", &format!("/v1/batches/{id}"), query).await
}

async fn until_done(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (status, b) = batch(app, key, id, &[]).await;
        assert_eq!(status, 200, "{b}");
        if b["done"] == true {
            return b;
        }
        assert!(tokio::time::Instant::now() < deadline, "the batch never finished: {b}");
        app.deliver_once().await;
    }
}

#[tokio::test]
async fn each_item_is_admitted_on_its_own_and_the_batch_reads_as_a_whole() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let capped =
        app.tenant("capped", Limits { max_running: 3, rate_per_sec: 100.0, burst: 100, ..Default::default() }).await;
    let body = json!({"tasks": [
        {"prompt": "What is 6 * 7?", "custom_id": "a"},
        {"prompt": "", "custom_id": "bad"},
        {"prompt": "What is 6 * 7?", "custom_id": "b", "metadata": {"row": 2}},
        {"prompt": "What is 6 * 7?", "custom_id": "c"},
        {"prompt": "What is 6 * 7?", "custom_id": "over"},
    ]});
    let (status, accepted) = post_batch(&app, &capped, &body, &[]).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!((accepted["accepted"].as_u64(), accepted["rejected"].as_u64()), (Some(3), Some(2)));
    let items = accepted["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "bad", "b", "c", "over"], "the answer keeps the request's order");
    assert_eq!(items[1]["error"]["code"], "validation_failed");
    assert_eq!(items[1]["error"]["errors"][0]["field"], "prompt");
    assert_eq!(items[4]["error"]["code"], "concurrency_limited", "the cap applies per item");
    assert!(items[0]["task_id"].is_string() && items[2]["task_id"].is_string() && items[3]["task_id"].is_string());
    let batch_id = accepted["batch_id"].as_str().unwrap().to_owned();

    let done = until_done(&app, &capped, &batch_id).await;
    assert_eq!(done["counts"]["succeeded"], 3);
    assert_eq!(done["counts"]["rejected"], 2);
    assert_eq!(done["total"], 5);
    assert_eq!(done["items"][0]["result"]["text"], "The answer is 42.");
    assert_eq!(done["items"][0]["status"], "succeeded");
    assert_eq!(done["items"][4]["error"]["code"], "concurrency_limited");
    let (_, page) = batch(&app, &capped, &batch_id, &[("limit", "2")]).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = batch(&app, &capped, &batch_id, &[("limit", "2"), ("cursor", &cursor)]).await;
    assert_eq!(next["items"][0]["index"], 2);
    assert_eq!(next["items"][0]["custom_id"], "b");

    let (status, _) = batch(&app, &app.key, &batch_id, &[]).await;
    assert_eq!(status, 404, "another tenant's batch is not found");
    let (status, _) = batch(&app, &capped, "bat_nope", &[]).await;
    assert_eq!(status, 404);
    app.drain().await;
}

#[tokio::test]
async fn the_rate_limit_applies_per_item_and_a_key_replays_the_whole_batch() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let slow =
        app.tenant("slow", Limits { max_running: 100, rate_per_sec: 0.01, burst: 2, ..Default::default() }).await;
    let body = json!({"tasks": [{"prompt": "x"}, {"prompt": "y"}, {"prompt": "z"}]});
    let (status, first) = post_batch(&app, &slow, &body, &[("idempotency-key", "b-1")]).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["items"][2]["error"]["code"], "rate_limited", "the burst of 2 admits two items");
    let (status, again) = post_batch(&app, &slow, &body, &[("idempotency-key", "b-1")]).await;
    assert_eq!((status, &again), (202, &first), "the same key and body answer the same batch");
    let (status, reused) =
        post_batch(&app, &slow, &json!({"tasks": [{"prompt": "other"}]}), &[("idempotency-key", "b-1")]).await;
    assert_eq!((status, reused["code"].as_str()), (409, Some("idempotency_key_reused")));
    let (status, bad) = post_batch(&app, &slow, &json!({"tasks": []}), &[]).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("validation_failed")));
    app.drain().await;
}

#[tokio::test]
async fn cancelling_a_batch_cancels_every_task_that_has_not_ended() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let body = json!({"tasks": [{"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}]});
    let (status, accepted) = post_batch(&app, &app.key, &body, &[]).await;
    assert_eq!(status, 202);
    let id = accepted["batch_id"].as_str().unwrap();
    let (status, cancelled) = app.call_status(&app.key, "DELETE", &format!("/v1/batches/{id}"), &[]).await;
    assert_eq!((status, cancelled["cancelled"].as_u64()), (200, Some(3)), "{cancelled}");
    let (_, read) = batch(&app, &app.key, id, &[]).await;
    assert_eq!((read["counts"]["cancelled"].as_u64(), read["done"].as_bool()), (Some(3), Some(true)));
    app.drain().await;
}

#[tokio::test]
async fn batches_posted_while_single_submits_of_their_tenant_are_in_flight_are_all_accepted() {
    let app = TestApp::spawn().await;
    let busy = app
        .tenant("busy", Limits { max_running: 1_000, rate_per_sec: 1_000.0, burst: 1_000, ..Default::default() })
        .await;
    let batch_body = |b: usize| json!({"tasks": (0..10).map(|i| json!({"prompt": format!("batch {b} item {i}")})).collect::<Vec<_>>()});
    let batches = futures::future::join_all((0..3).map(|b| {
        let (app, busy, body) = (&app, &busy, batch_body(b));
        async move { post_batch(app, busy, &body, &[]).await }
    }));
    let singles = futures::future::join_all((0..30).map(|i| {
        let (app, busy) = (&app, &busy);
        async move { app.post_as(busy, &json!({"prompt": format!("single {i}")}), &[]).await.status().as_u16() }
    }));
    let (batches, singles) = tokio::join!(batches, singles);
    assert!(singles.iter().all(|s| *s == 202), "{singles:?}");
    for (status, body) in &batches {
        assert_eq!(*status, 202, "{body}");
        assert!(body["items"].as_array().unwrap().iter().all(|i| i["task_id"].is_string()), "{body}");
    }
    assert_eq!(app.running_count("busy").await, 60, "one slot a task, none lost to a retry");
    app.drain().await;
    assert_eq!(app.running_count("busy").await, 0);
}
