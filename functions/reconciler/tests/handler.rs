//! The reconciler on the scheduled-event fixture, with the in-memory store and queue.

use std::sync::Arc;
use std::time::Duration;

use agentq::domain::task::{ErrorCode, TaskId, TaskRecord, TaskRequest, TaskStatus};
use agentq::queue::MemoryQueue;
use agentq::store::{Lease, MemoryStore, TaskRead, TaskRun};
use lambda_runtime::{Context, LambdaEvent};
use reconciler::{Reconciler, Settings};

const AFTER: Duration = Duration::from_secs(60);

fn settings() -> Settings {
    let config =
        agentq::runtime::config::Config::from_lookup(|k| (k == "AGENTQ_TABLE").then(|| "t".to_owned())).unwrap();
    Settings { reconcile_after: AFTER, ..Settings::from(&config) }
}

fn app() -> (Reconciler, Arc<MemoryStore>, Arc<MemoryQueue>) {
    let store = Arc::new(MemoryStore::new().with_reconcile_after(AFTER));
    let queue = Arc::new(MemoryQueue::new());
    (Reconciler { store: store.clone(), queue: queue.clone(), settings: settings() }, store, queue)
}

async fn accepted(store: &MemoryStore, at: time::OffsetDateTime) -> TaskId {
    let request = TaskRequest::parse(br#"{"prompt":"hi"}"#, &Default::default()).unwrap();
    let task = TaskRecord::new(request, "acme", at);
    store.insert(&task).await;
    task.task_id
}

#[tokio::test]
async fn the_schedule_fixture_runs_a_pass() {
    let (r, _, _) = app();
    let event = LambdaEvent::new(
        serde_json::from_str(include_str!("../../../events/schedule.json")).unwrap(),
        Context::default(),
    );
    let out = reconciler::handle(&r, event).await.unwrap();
    assert_eq!(out["due"], 0);
}

#[tokio::test]
async fn a_queued_task_nobody_sent_is_sent_again_once_its_grace_period_is_over() {
    let (r, store, queue) = app();
    let now = agentq::now();
    let id = accepted(&store, now).await;
    let early = reconciler::reconcile(&r, now + Duration::from_secs(30)).await.unwrap();
    assert_eq!(early.resent, 0, "within its grace period a task is left alone");
    let late = reconciler::reconcile(&r, now + Duration::from_secs(61)).await.unwrap();
    assert_eq!(late.resent, 1);
    assert_eq!(queue.sent().iter().map(|m| m.task_id).collect::<Vec<_>>(), [id]);
    let again = reconciler::reconcile(&r, now + Duration::from_secs(62)).await.unwrap();
    assert_eq!(again.resent, 0, "a task sent again waits a whole grace period before the next");
    assert_eq!(store.get(id).await.unwrap().unwrap().resends, 1);
}

#[tokio::test]
async fn a_running_task_whose_runner_vanished_is_sent_again_after_its_lease() {
    let (r, store, queue) = app();
    let now = agentq::now();
    let id = accepted(&store, now).await;
    let lease = Lease { owner: "gone".into(), until: now + Duration::from_secs(300) };
    store.claim(id, &lease, now).await.unwrap();
    let report = reconciler::reconcile(&r, now + Duration::from_secs(61)).await.unwrap();
    assert_eq!((report.deferred, report.resent), (1, 0), "due, but its lease is live");
    assert_eq!(reconciler::reconcile(&r, now + Duration::from_secs(330)).await.unwrap().resent, 0, "lease + grace");
    assert_eq!(reconciler::reconcile(&r, now + Duration::from_secs(361)).await.unwrap().resent, 1);
    assert_eq!(queue.sent().len(), 1);
}

#[tokio::test]
async fn a_task_over_the_limits_is_ended_with_its_code_and_its_count_released() {
    let (mut r, store, queue) = app();
    r.settings.limits.max_queued = Duration::from_secs(100);
    let now = agentq::now();
    let id = accepted(&store, now).await;
    let report = reconciler::reconcile(&r, now + Duration::from_secs(101)).await.unwrap();
    assert_eq!((report.ended, report.resent), (1, 0));
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().code, ErrorCode::QueueExpired);
    assert!(queue.sent().is_empty());
    assert_eq!(store.active("acme"), 0);
}
