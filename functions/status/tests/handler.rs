//! The status handler on the `events/` fixture, with the in-memory store.

use std::sync::Arc;

use agentq::store::{Finish, Lease, MemoryStore, Progress, TaskCreate, TaskRun};
use agentq::task::{TaskError, TaskRecord, TaskRequest, TaskResult, TaskStatus};
use agentq::usage::Usage;
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use status::App;

fn event(id: &str) -> Request {
    let mut v: Value = serde_json::from_str(include_str!("../../../events/status.json")).unwrap();
    v["rawPath"] = json!(format!("/v1/tasks/{id}"));
    v["requestContext"]["http"]["path"] = v["rawPath"].clone();
    v["pathParameters"]["id"] = json!(id);
    lambda_http::request::from_str(&v.to_string()).unwrap()
}

fn json_of(r: &Response<Body>) -> Value {
    serde_json::from_slice(r.body().as_ref()).unwrap()
}

async fn stored(store: &MemoryStore) -> TaskRecord {
    let req = TaskRequest::parse(br#"{"prompt":"secret prompt","max_iterations":7}"#, &Default::default()).unwrap();
    let task = TaskRecord::new(req, agentq::now());
    store.create(&task).await.unwrap();
    task
}

fn lease() -> Lease {
    Lease { owner: "w1".into(), until: agentq::now() + time::Duration::minutes(5) }
}

#[tokio::test]
async fn a_queued_task_reads_back_with_every_field() {
    let store = Arc::new(MemoryStore::new());
    let task = stored(&store).await;
    let r = status::handle(&App { store: store.clone() }, event(&task.task_id.to_string())).await;
    assert_eq!(r.status(), 200);
    let b = json_of(&r);
    assert_eq!(b["task_id"], task.task_id.to_string());
    assert_eq!(b["status"], "queued");
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
    let store = Arc::new(MemoryStore::new());
    let task = stored(&store).await;
    store.claim(task.task_id, &lease(), agentq::now()).await.unwrap();
    let usage = Usage { input_tokens: 1000, output_tokens: 100, cost_nanos: 4_500_000, ..Usage::default() };
    let progress = Progress {
        step: 2,
        usage,
        usage_by_model: [("claude-sonnet-4-5".to_owned(), usage)].into(),
        model: Some("claude-sonnet-4-5".into()),
        lease_until: lease().until,
        now: agentq::now(),
    };
    store.progress(task.task_id, &lease(), &progress).await.unwrap();
    let b = json_of(&status::handle(&App { store }, event(&task.task_id.to_string())).await);
    assert_eq!(b["status"], "running");
    assert_eq!(b["progress"], json!({"step": 2, "max_steps": 7}));
    assert_eq!(b["usage"]["cost_usd"], 0.0045);
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["usage_by_model"]["claude-sonnet-4-5"]["cost_usd"], 0.0045);
}

#[tokio::test]
async fn terminal_tasks_show_their_result_or_error() {
    let store = Arc::new(MemoryStore::new());
    for (status, result, error) in [
        (TaskStatus::Succeeded, Some(TaskResult { text: "42".into(), truncated: false }), None),
        (TaskStatus::Failed, None, Some(TaskError::new("max_iterations_exceeded", "too many steps"))),
    ] {
        let task = stored(&store).await;
        store.claim(task.task_id, &lease(), agentq::now()).await.unwrap();
        let finish = Finish {
            status,
            result,
            error,
            step: 3,
            usage: Usage::default(),
            usage_by_model: Default::default(),
            model: None,
            now: agentq::now(),
        };
        store.finish(task.task_id, &lease(), &finish).await.unwrap();
        let b = json_of(&status::handle(&App { store: store.clone() }, event(&task.task_id.to_string())).await);
        assert_eq!(b["status"], status.as_str());
        assert_eq!(b["iterations"], 3);
        match status {
            TaskStatus::Succeeded => assert_eq!(b["result"], json!({"text": "42"})),
            _ => assert_eq!(b["error"], json!({"code": "max_iterations_exceeded", "message": "too many steps"})),
        }
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids_get_the_same_404() {
    let app = App { store: Arc::new(MemoryStore::new()) };
    for id in ["01KB3Z5Q9V1W7E6D8C4B2A0F9G", "not-a-task", "01kb3z5q9v1w7e6d8c4b2a0f9g"] {
        let r = status::handle(&app, event(id)).await;
        assert_eq!(r.status(), 404, "{id}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(json_of(&r)["status"], 404);
    }
}

#[tokio::test]
async fn a_store_failure_is_a_503_not_a_404() {
    let store = Arc::new(MemoryStore::new());
    store.set_down(true);
    let r = status::handle(&App { store }, event("01KB3Z5Q9V1W7E6D8C4B2A0F9G")).await;
    assert_eq!(r.status(), 503);
}
