//! The status handler on the `events/` fixture, with the in-memory store.

use std::sync::Arc;

use agentq::domain::events::TaskEvent;
use agentq::domain::steps::{ModelStep, Spend};
use agentq::domain::task::{ErrorCode, TaskError, TaskRecord, TaskRequest, TaskResult, TaskStatus};
use agentq::domain::tenant::Limits;
use agentq::domain::usage::Usage;
use agentq::store::{Finish, Lease, MemoryStore, Progress, TaskRun};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use status::App;

struct Fixture {
    app: App,
    store: Arc<MemoryStore>,
    key: String,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let key = store.tenant_with_key("acme", Limits::default());
    let reads = Arc::new(agentq::edge::throttle::ReadThrottle::new(1000.0, 1000));
    let auth = Arc::new(agentq::edge::auth::AuthCache::new(std::time::Duration::ZERO));
    let webhooks = agentq::outbound::webhook::SendPolicy::new(false, std::time::Duration::from_secs(5));
    Fixture { app: App { store: store.clone(), reads, auth, webhooks }, store, key }
}

fn request(key: &str, method: &str, path: &str, query: &[(&str, &str)]) -> Request {
    let mut v: Value = serde_json::from_str(include_str!("../../../events/status.json")).unwrap();
    v["rawPath"] = json!(path);
    v["requestContext"]["http"]["path"] = json!(path);
    v["requestContext"]["http"]["method"] = json!(method);
    match path.strip_prefix("/v1/tasks/") {
        Some(id) => v["pathParameters"]["id"] = json!(id),
        None => drop(v.as_object_mut().unwrap().remove("pathParameters")),
    }
    if !key.is_empty() {
        v["headers"]["authorization"] = json!(format!("Bearer {key}"));
    }
    if !query.is_empty() {
        v["queryStringParameters"] = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        v["rawQueryString"] = json!(query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
    }
    lambda_http::request::from_str(&v.to_string()).unwrap()
}

impl Fixture {
    async fn call(&self, method: &str, path: &str, query: &[(&str, &str)]) -> Response<Body> {
        status::handle(&self.app, request(&self.key, method, path, query)).await
    }

    async fn get(&self, id: &str) -> Response<Body> {
        self.call("GET", &format!("/v1/tasks/{id}"), &[]).await
    }

    async fn stored(&self, tenant: &str) -> TaskRecord {
        let req = TaskRequest::parse(br#"{"prompt":"secret prompt","max_iterations":7}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(req, tenant, agentq::now());
        self.store.insert(&task).await;
        task
    }
}

fn json_of(r: &Response<Body>) -> Value {
    serde_json::from_slice(r.body().as_ref()).unwrap()
}

fn lease() -> Lease {
    Lease { owner: "w1".into(), until: agentq::now() + time::Duration::minutes(5) }
}

#[tokio::test]
async fn a_queued_task_reads_back_with_every_field() {
    let f = fixture();
    let task = f.stored("acme").await;
    let r = f.get(&task.task_id.to_string()).await;
    assert_eq!(r.status(), 200);
    let b = json_of(&r);
    assert_eq!(b["task_id"], task.task_id.to_string());
    assert_eq!(b["status"], "queued");
    assert_eq!(b["priority"], "default");
    assert_eq!(b["progress"], json!({"step": 0, "max_steps": 7}));
    assert_eq!(
        b["usage"],
        json!({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "cost_usd": 0.0})
    );
    assert_eq!(b["iterations"], 0);
    assert!(b["created_at"].is_string() && b["updated_at"].is_string());
    assert!(b.get("result").is_none() && b.get("error").is_none());
    assert!(!b.to_string().contains("secret prompt"), "the prompt is not echoed back");
}

#[tokio::test]
async fn a_running_task_shows_its_progress_and_model() {
    let f = fixture();
    let task = f.stored("acme").await;
    f.store.claim(task.task_id, &lease(), agentq::now()).await.unwrap();
    let usage = Usage { input_tokens: 1000, output_tokens: 100, cost_nanos: 4_500_000, ..Usage::default() };
    let spend = Spend {
        step: 2,
        usage,
        usage_by_model: [("claude-sonnet-4-5".to_owned(), usage)].into(),
        model: Some("claude-sonnet-4-5".into()),
    };
    let answer = ModelStep {
        step: 2,
        model: "claude-sonnet-4-5".into(),
        content: vec![],
        stop_reason: agentq::llm::StopReason::ToolUse,
        usage,
        call: None,
    };
    let event = TaskEvent::step(task.task_id, 2, &answer, &spend, agentq::now());
    let progress = Progress { spend, now: agentq::now(), event };
    f.store.record_model_step(task.task_id, &lease(), &answer, &progress).await.unwrap();
    let b = json_of(&f.get(&task.task_id.to_string()).await);
    assert_eq!(b["status"], "running");
    assert_eq!(b["progress"], json!({"step": 2, "max_steps": 7}));
    assert_eq!(b["usage"]["cost_usd"], 0.0045);
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["usage_by_model"]["claude-sonnet-4-5"]["cost_usd"], 0.0045);
}

#[tokio::test]
async fn terminal_tasks_show_their_result_or_error() {
    let f = fixture();
    for (status, result, error) in [
        (TaskStatus::Succeeded, Some(TaskResult::text("42")), None),
        (TaskStatus::Failed, None, Some(TaskError::new(ErrorCode::MaxIterationsExceeded, "too many steps"))),
    ] {
        let task = f.stored("acme").await;
        f.store.claim(task.task_id, &lease(), agentq::now()).await.unwrap();
        let spend = Spend { step: 3, ..Spend::default() };
        let event = TaskEvent::ended(task.task_id, 2, status, &spend, error.as_ref(), agentq::now());
        let finish = Finish { status, result, error, spend, now: agentq::now(), event, last_step: None };
        f.store.finish(&task, &lease(), &finish).await.unwrap();
        let b = json_of(&f.get(&task.task_id.to_string()).await);
        assert_eq!(b["status"], status.as_str());
        assert_eq!(b["iterations"], 3);
        match status {
            TaskStatus::Succeeded => assert_eq!(b["result"], json!({"text": "42"})),
            _ => assert_eq!(b["error"], json!({"code": "max_iterations_exceeded", "message": "too many steps"})),
        }
    }
}

#[tokio::test]
async fn unknown_malformed_and_other_tenants_ids_get_the_same_404() {
    let f = fixture();
    let theirs = f.stored("globex").await.task_id.to_string();
    for id in ["01KB3Z5Q9V1W7E6D8C4B2A0F9G", "not-a-task", "01kb3z5q9v1w7e6d8c4b2a0f9g", theirs.as_str()] {
        for method in ["GET", "DELETE"] {
            let r = f.call(method, &format!("/v1/tasks/{id}"), &[]).await;
            assert_eq!(r.status(), 404, "{method} {id}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            assert_eq!(json_of(&r)["detail"], format!("no task with id {id:?}"));
        }
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_are_401_with_a_challenge() {
    let f = fixture();
    let task = f.stored("acme").await;
    for key in ["", "aq_wrong"] {
        let r = status::handle(&f.app, request(key, "GET", &format!("/v1/tasks/{}", task.task_id), &[])).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"agentq\"");
        assert_eq!(json_of(&r)["status"], 401);
    }
}

#[tokio::test]
async fn a_store_failure_is_a_503_not_a_404() {
    let f = fixture();
    f.store.set_down(true);
    let r = f.get("01KB3Z5Q9V1W7E6D8C4B2A0F9G").await;
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn cancel_ends_a_queued_task_marks_a_running_one_and_refuses_a_finished_one() {
    let f = fixture();
    let queued = f.stored("acme").await;
    let r = f.call("DELETE", &format!("/v1/tasks/{}", queued.task_id), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(&r)["status"], "cancelled");

    let running = f.stored("acme").await;
    f.store.claim(running.task_id, &lease(), agentq::now()).await.unwrap();
    let r = f.call("DELETE", &format!("/v1/tasks/{}", running.task_id), &[]).await;
    assert_eq!(r.status(), 202);
    let b = json_of(&r);
    assert_eq!((b["status"].as_str(), b["cancel_requested"].as_bool()), (Some("running"), Some(true)));

    let r = f.call("DELETE", &format!("/v1/tasks/{}", queued.task_id), &[]).await;
    assert_eq!(r.status(), 409);
    assert_eq!(json_of(&r)["code"], "task_finished");
}

#[tokio::test]
async fn the_list_pages_through_a_tenants_tasks_newest_first() {
    let f = fixture();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(f.stored("acme").await.task_id.to_string());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    f.stored("globex").await;
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "2")];
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let b = json_of(&f.call("GET", "/v1/tasks", &q).await);
        seen.extend(b["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_owned()));
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every task once, newest first, none of another tenant's");
}

#[tokio::test]
async fn list_parameters_are_validated() {
    let f = fixture();
    for (k, v) in [("limit", "0"), ("limit", "101"), ("limit", "x"), ("status", "done"), ("cursor", "!!")] {
        let r = f.call("GET", "/v1/tasks", &[(k, v)]).await;
        assert_eq!(r.status(), 400, "{k}={v}");
        assert_eq!(json_of(&r)["errors"][0]["field"], k);
    }
}

#[tokio::test]
async fn usage_dates_are_validated() {
    let f = fixture();
    assert_eq!(f.call("GET", "/v1/usage", &[]).await.status(), 200);
    for q in [[("from", "2026-13-01")], [("to", "yesterday")]] {
        assert_eq!(f.call("GET", "/v1/usage", &q).await.status(), 400, "{q:?}");
    }
    let r = f.call("GET", "/v1/usage", &[("from", "2026-02-01"), ("to", "2026-01-01")]).await;
    assert_eq!(r.status(), 400);
}
