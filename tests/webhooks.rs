//! Webhooks end to end: endpoints registered through the API, tasks run by the worker, the
//! table's stream read by the local stream event source into the notifier, deliveries made
//! from the webhook queue to a receiver that verifies each one with the Standard Webhooks
//! reference library (Python `standardwebhooks`), not with agentq's code.
//!
//! The retry schedule runs at 1% of the deployed one here (0.3 s, 1.2 s, 6 s, 18 s between five
//! attempts), so "down for minutes" is seconds.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use agentq::domain::events::TaskEvent;
use agentq::domain::task::{TaskId, TaskResult, TaskStatus};
use agentq::store::{Claim, Finish, Lease, TaskRead as _, TaskRun as _};
use agentq_tests::webhooks::{Receiver, Rig};
use agentq_tests::{CalculatorScript, TestApp, WEBHOOK_MAX_ATTEMPTS, answer};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

/// Registers an endpoint through the API; returns its id and secret.
async fn register(app: &TestApp, url: &str, events: Option<&[&str]>) -> (String, String) {
    let mut body = json!({"url": url});
    if let Some(events) = events {
        body["events"] = json!(events);
    }
    let (status, created) = app.call_status_with(&app.key, "POST", "/v1/webhooks", &[], Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

/// Submits a task with its own webhook; returns its id and the webhook's secret.
async fn submit_hooked(app: &TestApp, prompt: &str, url: &str) -> (String, String) {
    let (status, body) = app.post_task(&json!({"prompt": prompt, "webhook": {"url": url}})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["webhook"]["url"], url);
    (body["task_id"].as_str().unwrap().to_owned(), body["webhook"]["secret"].as_str().unwrap().to_owned())
}

async fn log_of(app: &TestApp, id: &str) -> Vec<Value> {
    let (_, body) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/events"), &[]).await;
    body["events"].as_array().cloned().unwrap()
}

/// The event ids a receiver took (answered 2xx), each once.
fn taken(received: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = received
        .iter()
        .filter(|r| r["answered"].as_u64().is_some_and(|s| (200..300).contains(&s)))
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test]
async fn every_event_reaches_the_tasks_webhook_and_the_endpoints_signed_for_the_reference_library() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let receiver = Receiver::start();
    let rig = Rig::new(&app).await;
    let (_, all_secret) = register(&app, &receiver.url("all"), None).await;
    let (_, end_secret) = register(&app, &receiver.url("ends"), Some(&["task.succeeded", "task.failed"])).await;
    assert!(all_secret.starts_with("whsec_"));
    receiver.set("all", &[&all_secret], 204).await;
    receiver.set("ends", &[&end_secret], 200).await;
    let (id, task_secret) = submit_hooked(&app, "What is 6 * 7? A secret: swordfish", &receiver.url("task")).await;
    receiver.set("task", &[&task_secret], 202).await;

    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["webhook_url"], receiver.url("task"));
    assert!(task.get("webhook").is_none() && !task.to_string().contains(&task_secret), "the secret is shown once");
    let log = log_of(&app, &id).await;
    let mut ids: Vec<String> = log.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    rig.pump_until(Duration::from_secs(30), async || {
        taken(&receiver.received("task").await).len() == log.len()
            && taken(&receiver.received("all").await).len() == log.len()
            && !receiver.received("ends").await.is_empty()
    })
    .await;

    for name in ["task", "all", "ends"] {
        let received = receiver.received(name).await;
        assert!(received.iter().all(|r| r["verified"] == true), "{name}: every delivery verifies: {received:?}");
        assert!(!serde_json::to_string(&received).unwrap().contains("swordfish"), "no content in webhooks");
    }
    assert_eq!(taken(&receiver.received("task").await), ids, "the task's webhook gets its whole log");
    assert_eq!(taken(&receiver.received("all").await), ids, "so does an endpoint of every event");
    let ends = receiver.received("ends").await;
    assert_eq!(ends.len(), 1, "an endpoint of terminal events gets the end only: {ends:?}");
    let end = &ends[0]["body"];
    assert_eq!(end["type"], "task.succeeded");
    assert_eq!(end["data"]["task_id"], id.as_str());
    assert_eq!(end["data"]["status"], "succeeded");
    assert_eq!(end["data"]["spent"]["cost_usd"], task["usage"]["cost_usd"]);
    assert_eq!(ends[0]["id"], log.last().unwrap()["id"], "webhook-id is the event's id");

    let (status, deliveries) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/deliveries"), &[]).await;
    assert_eq!(status, 200, "{deliveries}");
    let attempts = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(attempts.len(), 2 * log.len() + 1, "one attempt per event and target: {deliveries}");
    assert!(attempts.iter().all(|a| a["delivered"] == true && a["attempt"] == 1 && a["latency_ms"].is_u64()));
    let other = app.tenant("globex", Default::default()).await;
    let (status, _) = app.call_status(&other, "GET", &format!("/v1/tasks/{id}/deliveries"), &[]).await;
    assert_eq!(status, 404, "another tenant cannot read them");
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_every_event_once_it_is_back() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let receiver = Receiver::start();
    let rig = Rig::new(&app).await;
    let (_, secret) = register(&app, &receiver.url("down"), None).await;
    receiver.set("down", &[&secret], 503).await;
    let id = app.submit("What is 6 * 7?").await;
    app.run_until_terminal(&id, Duration::from_secs(60)).await;
    let log = log_of(&app, &id).await;

    // Down through the first three attempts (0, 0.3 s and 1.5 s in; 30 s and 2.5 min deployed).
    let down_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < down_until {
        rig.pump().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = receiver.received("down").await;
    assert!(refused.len() >= log.len() * 2, "every event was tried more than once: {}", refused.len());
    receiver.answer("down", 204).await;
    rig.pump_until(Duration::from_secs(40), async || taken(&receiver.received("down").await).len() == log.len()).await;

    let received = receiver.received("down").await;
    let mut ids: Vec<String> = log.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(taken(&received), ids, "nothing lost");
    assert!(received.iter().all(|r| r["verified"] == true));
    // Retries of one event carry the same id and body.
    let mut by_id: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for r in &received {
        by_id.entry(r["id"].as_str().unwrap()).or_default().insert(r["body"].to_string());
    }
    assert!(by_id.values().all(|bodies| bodies.len() == 1), "a retry is the same delivery");

    let (_, deliveries) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/deliveries"), &[]).await;
    let attempts = deliveries["deliveries"].as_array().unwrap();
    let first = attempts.iter().find(|a| a["seq"] == 1 && a["attempt"] == 1).unwrap();
    assert_eq!((first["delivered"].as_bool(), first["status"].as_u64()), (Some(false), Some(503)));
    assert!(first["next_attempt_at"].is_string(), "a failed attempt says when the next is due");
    assert!(attempts.iter().any(|a| a["seq"] == 1 && a["delivered"] == true && a["attempt"].as_u64() > Some(1)));
    app.drain().await;
}

#[tokio::test]
async fn a_task_whose_runner_dies_right_after_its_last_write_still_sends_its_webhook() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let rig = Rig::new(&app).await;
    let (id, secret) = submit_hooked(&app, "hello", &receiver.url("task")).await;
    receiver.set("task", &[&secret], 204).await;

    // What a worker writes, and nothing after: it dies the moment `finish` returns.
    let task_id: TaskId = id.parse().unwrap();
    let lease = Lease { owner: "doomed".into(), until: agentq::now() + Duration::from_secs(60) };
    let Claim::Claimed(task) = app.store.claim(task_id, &lease, agentq::now()).await.unwrap() else { panic!("claim") };
    let now = agentq::now();
    let event = TaskEvent::ended(task_id, task.events + 1, TaskStatus::Succeeded, &task.spend, None, now);
    let finish = Finish {
        status: TaskStatus::Succeeded,
        result: Some(TaskResult::text("hi")),
        error: None,
        spend: task.spend.clone(),
        now,
        event: event.clone(),
        last_step: None,
    };
    app.store.finish(&task, &lease, &finish).await.unwrap();
    drop(task);

    rig.pump_until(Duration::from_secs(20), async || {
        receiver.received("task").await.iter().any(|r| r["body"]["type"] == "task.succeeded")
    })
    .await;
    let end = receiver.received("task").await.into_iter().find(|r| r["body"]["type"] == "task.succeeded").unwrap();
    assert_eq!((end["id"].as_str(), end["verified"].as_bool()), (Some(event.id.as_str()), Some(true)));
    assert_eq!(app.store.get(task_id).await.unwrap().unwrap().status, TaskStatus::Succeeded);
}

#[tokio::test]
async fn a_delivery_that_fails_every_attempt_is_dead_lettered_and_can_be_redriven() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("done", json!({}))).mount(&app.model).await;
    let receiver = Receiver::start();
    let rig = Rig::new(&app).await;
    let (_, secret) = register(&app, &receiver.url("broken"), Some(&["task.succeeded"])).await;
    receiver.set("broken", &[&secret], 500).await;
    let id = app.submit("hello").await;
    app.run_until_terminal(&id, Duration::from_secs(60)).await;

    rig.pump_until(Duration::from_secs(60), async || app.queue_depth(&app.webhook_dlq_url).await == 1).await;
    let received = receiver.received("broken").await;
    assert_eq!(received.len() as u32, WEBHOOK_MAX_ATTEMPTS, "every attempt was made: {received:?}");
    let (_, deliveries) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/deliveries"), &[]).await;
    let attempts = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(attempts.len() as u32, WEBHOOK_MAX_ATTEMPTS);
    let last = attempts.last().unwrap();
    assert_eq!(
        (last["attempt"].as_u64(), last["dead_lettered"].as_bool()),
        (Some(WEBHOOK_MAX_ATTEMPTS.into()), Some(true))
    );
    assert_eq!(last["error"], "the receiver answered 500");

    // `agentq webhooks redrive`, once the receiver is mended.
    receiver.answer("broken", 204).await;
    let moved = agentq::usecases::webhooks::redrive(
        &agentq::queue::SqsDeadLetters::new(app.sqs.clone()),
        &app.webhook_dlq_url,
        &agentq::queue::SqsDeliveryQueue::new(app.sqs.clone(), app.webhook_queue.url.clone()),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(moved, 1);
    rig.pump_until(Duration::from_secs(20), async || taken(&receiver.received("broken").await).len() == 1).await;
    assert_eq!(app.queue_depth(&app.webhook_dlq_url).await, 0);
    let ids: HashSet<String> =
        receiver.received("broken").await.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "every attempt, redriven or not, carries the one event id");
}

#[tokio::test]
async fn two_hundred_tasks_bring_two_hundred_terminal_deliveries() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 5, "output_tokens": 1})))
        .mount(&app.model)
        .await;
    let receiver = Receiver::start();
    let rig = Rig::new(&app).await;
    let (_, secret) =
        register(&app, &receiver.url("ends"), Some(&["task.succeeded", "task.failed", "task.cancelled"])).await;
    receiver.set("ends", &[&secret], 204).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(app.submit(&format!("task {i}")).await);
    }
    // The notifier works while the tasks run, as it does deployed.
    let work = async {
        app.run_all_until_terminal(&ids, Duration::from_secs(600)).await;
    };
    let notify =
        rig.pump_until(Duration::from_secs(660), async || taken(&receiver.received("ends").await).len() >= 200);
    tokio::join!(work, notify);

    let received = receiver.received("ends").await;
    assert!(received.iter().all(|r| r["verified"] == true && r["body"]["type"] == "task.succeeded"));
    let tasks: HashSet<&str> = received.iter().map(|r| r["body"]["data"]["task_id"].as_str().unwrap()).collect();
    assert_eq!(tasks.len(), 200, "every task's end arrived");
    let mut id_of_task: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for r in &received {
        id_of_task.entry(r["body"]["data"]["task_id"].as_str().unwrap()).or_default().insert(r["id"].as_str().unwrap());
    }
    assert!(id_of_task.values().all(|ids| ids.len() == 1), "a duplicate, if any, repeats its event id");
}

#[tokio::test]
async fn endpoints_are_checked_listed_rotated_tested_and_removed() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let post = |body: Value| {
        let app = &app;
        async move { app.call_status_with(&app.key, "POST", "/v1/webhooks", &[], Some(&body)).await }
    };
    for (body, field) in [
        (json!({"url": "ftp://example.com/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data"}), "url"),
        (json!({"url": "http://10.1.2.3/hook"}), "url"),
        (json!({"url": receiver.url("x"), "events": ["task.exploded"]}), "events"),
        (json!({"url": receiver.url("x"), "secret": "mine"}), "secret"),
        (json!({}), "url"),
    ] {
        let (status, problem) = post(body.clone()).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("validation_failed")), "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (status, problem) =
        app.post_task(&json!({"prompt": "hi", "webhook": {"url": "http://192.168.0.1/hook"}})).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (400, Some("webhook.url")), "{problem}");

    let (id, secret) = register(&app, &receiver.url("rot"), None).await;
    let (_, list) = app.call_status(&app.key, "GET", "/v1/webhooks", &[]).await;
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(list["webhooks"][0].get("secret").is_none(), "a list never shows a secret");
    let other = app.tenant("globex", Default::default()).await;
    let (_, theirs) = app.call_status(&other, "GET", "/v1/webhooks", &[]).await;
    assert_eq!(theirs["webhooks"], json!([]), "another tenant sees none");
    let (status, _) = app.call_status(&other, "DELETE", &format!("/v1/webhooks/{id}"), &[]).await;
    assert_eq!(status, 404, "nor removes one");

    // A receiver that knows only the old secret keeps verifying through the rotation's overlap.
    receiver.set("rot", &[&secret], 204).await;
    let (status, rotated) = app.call_status(&app.key, "POST", &format!("/v1/webhooks/{id}/rotate"), &[]).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret != secret && rotated["previous_secret_expires_at"].is_string());
    let (status, tested) = app.call_status(&app.key, "POST", &format!("/v1/webhooks/{id}/test"), &[]).await;
    assert_eq!(
        (status, tested["delivered"].as_bool(), tested["status"].as_u64()),
        (200, Some(true), Some(204)),
        "{tested}"
    );
    receiver.set("rot", &[new_secret], 204).await;
    app.call_status(&app.key, "POST", &format!("/v1/webhooks/{id}/test"), &[]).await;
    let received = receiver.received("rot").await;
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r["verified"] == true && r["body"]["type"] == "webhook.test"), "{received:?}");

    let (status, _) = app.call_status(&app.key, "DELETE", &format!("/v1/webhooks/{id}"), &[]).await;
    assert_eq!(status, 204);
    let (status, problem) = app.call_status(&app.key, "DELETE", &format!("/v1/webhooks/{id}"), &[]).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
}
