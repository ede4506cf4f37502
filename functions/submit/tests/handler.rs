//! The submit handler on the `events/` fixture, with in-memory store and queue.

use std::sync::Arc;

use agentq::domain::task::{Priority, TaskStatus};
use agentq::domain::tenant::Limits;
use agentq::queue::MemoryQueue;
use agentq::store::{MemoryStore, TaskRead};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use submit::App;

struct Fixture {
    app: App,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    key: String,
}

fn fixture() -> Fixture {
    fixture_with(Limits::default())
}

fn fixture_with(limits: Limits) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let key = store.tenant_with_key("acme", limits);
    let queue = Arc::new(MemoryQueue::new());
    let allowed = agentq::domain::task::Allowed {
        models: vec!["claude-sonnet-4-5".into(), "claude-haiku-4-5".into()],
        tools: vec!["calculator".into()],
        ..Default::default()
    };
    let auth = Arc::new(agentq::edge::auth::AuthCache::new(std::time::Duration::ZERO));
    let webhooks = agentq::outbound::webhook::SendPolicy::new(false, std::time::Duration::from_secs(5));
    let tools = agentq::agent::ToolRegistry::builtin();
    let app =
        App { store: store.clone(), queue: queue.clone(), model_configured: true, allowed, auth, webhooks, tools };
    Fixture { app, store, queue, key }
}

/// The fixture event with `edit` applied.
fn event(edit: impl FnOnce(&mut Value)) -> Request {
    let mut v: Value = serde_json::from_str(include_str!("../../../events/submit.json")).unwrap();
    edit(&mut v);
    lambda_http::request::from_str(&v.to_string()).unwrap()
}

impl Fixture {
    /// The fixture event, authenticated as `acme`, with `edit` applied.
    fn event(&self, edit: impl FnOnce(&mut Value)) -> Request {
        let key = self.key.clone();
        event(move |v| {
            v["headers"]["authorization"] = json!(format!("Bearer {key}"));
            edit(v)
        })
    }

    fn post(&self, body: &str) -> Request {
        self.event(|v| v["body"] = json!(body))
    }
}

fn get(path: &str) -> Request {
    bodiless("GET", path)
}

fn bodiless(method: &str, path: &str) -> Request {
    event(|v| {
        v["routeKey"] = json!(format!("{method} {path}"));
        v["rawPath"] = json!(path);
        v["requestContext"]["http"]["method"] = json!(method);
        v["requestContext"]["http"]["path"] = json!(path);
        v.as_object_mut().unwrap().remove("body");
    })
}

fn json_of(r: &Response<Body>) -> Value {
    serde_json::from_slice(r.body().as_ref()).unwrap()
}

fn problem_fields(r: &Response<Body>) -> Vec<String> {
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    json_of(r)["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn submit_returns_202_and_a_location_for_a_valid_task() {
    let f = fixture();
    let r = submit::handle(&f.app, f.event(|_| {})).await;
    assert_eq!(r.status(), 202);
    let body = json_of(&r);
    let id = body["task_id"].as_str().unwrap();
    assert_eq!(body["status"], "queued");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.headers()["location"], format!("/v1/tasks/{id}"));

    let stored = f.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Queued);
    assert_eq!(stored.prompt, "What is 6 * 7?");
    assert_eq!(stored.max_iterations, 5);
    let sent = f.queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].task_id.to_string(), id);
    assert_eq!(sent[0].priority, Priority::High);
}

#[tokio::test]
async fn a_request_may_pick_an_allowed_model_tools_and_a_budget() {
    let f = fixture();
    let body = r#"{"prompt":"x","model":"claude-haiku-4-5","tools":["calculator"],"max_cost_usd":0.5}"#;
    let r = submit::handle(&f.app, f.post(body)).await;
    assert_eq!(r.status(), 202);
    let id = json_of(&r)["task_id"].as_str().unwrap().parse().unwrap();
    let task = f.store.get(id).await.unwrap().unwrap();
    assert_eq!(task.requested_model.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(task.tools, Some(vec!["calculator".to_owned()]));
    assert_eq!(task.max_cost_nanos, Some(500_000_000));
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let f = fixture();
    let r = submit::handle(
        &f.app,
        f.event(|v| {
            v["body"] = json!("eyJwcm9tcHQiOiJoaSJ9"); // {"prompt":"hi"}
            v["isBase64Encoded"] = json!(true);
        }),
    )
    .await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn invalid_fields_get_400_naming_each_field() {
    let f = fixture();
    let cases = [
        (r#"{"prompt":"x","colour":"red"}"#, vec!["colour"]),
        (r#"{"prompt":""}"#, vec!["prompt"]),
        (r#"{"prompt":42}"#, vec!["prompt"]),
        (r#"{}"#, vec!["prompt"]),
        (r#"{"prompt":"x","priority":"urgent"}"#, vec!["priority"]),
        (r#"{"prompt":"x","max_iterations":0}"#, vec!["max_iterations"]),
        (r#"{"prompt":"x","max_iterations":51}"#, vec!["max_iterations"]),
        (r#"{"prompt":"x","max_iterations":"3"}"#, vec!["max_iterations"]),
        (r#"{"prompt":"x","metadata":"tag"}"#, vec!["metadata"]),
        (r#"{"prompt":"x","model":"gpt-5"}"#, vec!["model"]),
        (r#"{"prompt":"x","tools":["shell"]}"#, vec!["tools"]),
        (r#"{"prompt":"x","max_cost_usd":-1}"#, vec!["max_cost_usd"]),
    ];
    for (body, fields) in cases {
        let r = submit::handle(&f.app, f.post(body)).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(problem_fields(&r), fields, "{body}");
        let p = json_of(&r);
        assert_eq!(p["status"], 400);
        assert!(p["type"].is_string() && p["title"].is_string() && p["detail"].is_string());
    }
    assert!(f.queue.sent().is_empty(), "nothing invalid is queued");
}

#[tokio::test]
async fn a_prompt_as_large_as_the_body_allows_is_accepted() {
    let f = fixture();
    let body = json!({"prompt": "a".repeat(1_000_000)}).to_string();
    let r = submit::handle(&f.app, f.post(&body)).await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn metadata_over_4_kb_is_rejected() {
    let f = fixture();
    let body = json!({"prompt": "x", "metadata": {"blob": "b".repeat(5000)}}).to_string();
    let r = submit::handle(&f.app, f.post(&body)).await;
    assert_eq!(problem_fields(&r), ["metadata"]);
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_400() {
    let f = fixture();
    let r = submit::handle(&f.app, f.post("prompt=hello")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(&r)["code"], "malformed_json");
}

#[tokio::test]
async fn a_body_over_1_mib_gets_413() {
    let f = fixture();
    let body = json!({"prompt": "a".repeat(1024 * 1024)}).to_string();
    let r = submit::handle(&f.app, f.post(&body)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_gets_415() {
    let f = fixture();
    let r = submit::handle(&f.app, f.event(|v| v["headers"]["content-type"] = json!("text/plain"))).await;
    assert_eq!(r.status(), 415);
    let r = submit::handle(
        &f.app,
        f.event(|v| {
            v["headers"].as_object_mut().unwrap().remove("content-type");
        }),
    )
    .await;
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn a_queue_failure_answers_503_and_marks_the_task_failed() {
    let f = fixture();
    f.queue.set_down(true);
    let r = submit::handle(&f.app, f.event(|_| {})).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // The one record written must not wait for a worker that will never come.
    let body = json_of(&r);
    assert!(!body.to_string().contains("memory queue"), "no internals in the answer: {body}");
    let ids = f.store.ids();
    assert_eq!(ids.len(), 1);
    let task = f.store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().code, agentq::domain::task::ErrorCode::EnqueueFailed);
}

#[tokio::test]
async fn a_store_failure_answers_503_and_sends_nothing() {
    let f = fixture();
    f.store.set_down(true);
    let r = submit::handle(&f.app, f.event(|_| {})).await;
    assert_eq!(r.status(), 503);
    assert!(f.queue.sent().is_empty());
}

#[tokio::test]
async fn health_answers_without_touching_anything() {
    let f = fixture();
    f.store.set_down(true);
    f.queue.set_down(true);
    let r = submit::handle(&f.app, get("/health")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ready_reports_each_check() {
    let f = fixture();
    let r = submit::handle(&f.app, get("/ready")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(&r)["checks"], json!({"store": "ok", "queue": "ok", "model": "ok"}));

    f.queue.set_down(true);
    let r = submit::handle(&f.app, get("/ready")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(json_of(&r)["checks"], json!({"store": "ok", "queue": "unavailable", "model": "ok"}));

    let unconfigured = App { model_configured: false, ..fixture().app };
    let r = submit::handle(&unconfigured, get("/ready")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(json_of(&r)["checks"]["model"], "not configured");
}

#[tokio::test]
async fn unknown_routes_get_404_and_wrong_methods_405() {
    let f = fixture();
    let r = submit::handle(&f.app, get("/v2/everything")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Unmatched requests reach this function through the `$default` route.
    let r = submit::handle(&f.app, bodiless("PUT", "/v1/tasks")).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
}
