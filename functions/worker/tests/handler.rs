//! The worker handler on the `events/` fixture, with the in-memory store and an in-process
//! scripted model (the integration tests use a model over HTTP).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentq::agent::{RetryPolicy, ToolRegistry};
use agentq::domain::events::EventKind;
use agentq::domain::steps::Step;
use agentq::domain::task::{ErrorCode, TaskId, TaskRecord, TaskRequest, TaskStatus};
use agentq::domain::usage::PriceTable;
use agentq::llm::{
    BreakerPolicy, ContentBlock, Model, ModelChain, ModelError, ModelRequest, ModelResponse, StopReason, TokenUsage,
};
use agentq::queue::{MemoryQueue, MemoryRequeue};
use agentq::store::{Lease, MemoryStore, TaskCancel, TaskRead, TaskRun};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use worker::{Worker, WorkerSettings};

/// Answers every call with `end_turn`, after waiting at `gate` if one is set.
struct FakeModel {
    calls: AtomicUsize,
    down: bool,
    gate: Option<tokio::sync::Barrier>,
}

impl FakeModel {
    fn up() -> Self {
        Self { calls: AtomicUsize::new(0), down: false, gate: None }
    }
}

#[async_trait]
impl Model for FakeModel {
    fn id(&self) -> &str {
        "claude-haiku-4-5"
    }
    async fn complete(&self, _: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.wait().await;
        }
        if self.down {
            return Err(overloaded());
        }
        Ok(ModelResponse {
            model: "claude-haiku-4-5".into(),
            content: vec![ContentBlock::Text { text: "done".into() }],
            stop_reason: StopReason::EndTurn,
            usage: TokenUsage { input_tokens: 10, output_tokens: 2, ..TokenUsage::default() },
        })
    }
}

/// What an overloaded provider answers.
fn overloaded() -> ModelError {
    ModelError::Status { status: 529, kind: "overloaded_error".into(), message: "Overloaded".into(), retry_after: None }
}

/// An answer asking for the `current_time` tool.
fn asks_for_current_time() -> ModelResponse {
    ModelResponse {
        model: "claude-haiku-4-5".into(),
        content: vec![ContentBlock::ToolUse { id: "t".into(), name: "current_time".into(), input: json!({}) }],
        stop_reason: StopReason::ToolUse,
        usage: TokenUsage { input_tokens: 10, output_tokens: 2, ..TokenUsage::default() },
    }
}

fn worker(store: Arc<MemoryStore>, model: Arc<FakeModel>) -> Worker {
    worker_with(store, model, Arc::new(MemoryRequeue::new()))
}

/// The deployment's defaults, with the test queue's receive count and a short margin.
fn settings() -> WorkerSettings {
    let config = agentq::runtime::config::Config::from_lookup(|k| match k {
        "AGENTQ_TABLE" => Some("t".into()),
        "AGENTQ_MAX_RECEIVE_COUNT" => Some("3".into()),
        "AGENTQ_DEADLINE_MARGIN_SECS" => Some("1".into()),
        "AGENTQ_UNAVAILABLE_MESSAGE" => Some("Try again later.".into()),
        _ => None,
    })
    .unwrap();
    WorkerSettings {
        retry: RetryPolicy { max_attempts: 2, base: Duration::from_millis(1), cap: Duration::from_millis(2) },
        ..WorkerSettings::from(&config)
    }
}

fn worker_with(store: Arc<MemoryStore>, model: Arc<FakeModel>, requeue: Arc<MemoryRequeue>) -> Worker {
    Worker {
        store,
        models: ModelChain::new(vec![model as Arc<dyn Model>], BreakerPolicy::default()),
        tools: ToolRegistry::builtin(),
        prices: PriceTable::default(),
        queue: Arc::new(MemoryQueue::new()),
        requeue,
        settings: settings(),
        tenants: worker::TenantCache::default(),
    }
}

async fn queued(store: &MemoryStore) -> TaskId {
    let task =
        TaskRecord::new(TaskRequest::parse(br#"{"prompt":"hi"}"#, &Default::default()).unwrap(), "acme", agentq::now());
    store.insert(&task).await;
    task.task_id
}

/// The fixture batch with its records' bodies replaced, all with one receive count.
fn batch(bodies: &[String], receive_count: u32) -> LambdaEvent<SqsEvent> {
    let mut v: Value = serde_json::from_str(include_str!("../../../events/worker.json")).unwrap();
    let template = v["Records"][0].clone();
    v["Records"] = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let mut r = template.clone();
            r["messageId"] = json!(format!("m{i}"));
            r["body"] = json!(body);
            r["attributes"]["ApproximateReceiveCount"] = json!(receive_count.to_string());
            r
        })
        .collect();
    let mut context = Context::default();
    context.deadline = (time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 60) * 1000;
    LambdaEvent::new(serde_json::from_value(v).unwrap(), context)
}

fn message(id: TaskId) -> String {
    json!({"task_id": id.to_string(), "priority": "default"}).to_string()
}

fn failures(r: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    r.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect()
}

#[tokio::test]
async fn the_fixture_batch_parses_and_unknown_tasks_are_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let model = Arc::new(FakeModel::up());
    let event: LambdaEvent<SqsEvent> = LambdaEvent::new(
        serde_json::from_str(include_str!("../../../events/worker.json")).unwrap(),
        Context::default(),
    );
    let r = worker::handle(&worker(store, model.clone()), event).await.unwrap();
    assert!(failures(&r).is_empty(), "a task nobody stored is never retried");
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_queued_task_runs_to_succeeded_with_its_cost() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let r = worker::handle(&worker(store.clone(), Arc::new(FakeModel::up())), batch(&[message(id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty());
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.result.unwrap().text, "done");
    // 10 input at $1/MTok + 2 output at $5/MTok.
    assert_eq!(task.spend.usage.cost_nanos, 10_000 + 10_000);
    assert_eq!(task.spend.step, 1);
    assert_eq!(task.spend.model.as_deref(), Some("claude-haiku-4-5"));
    // The answer that ended the run was recorded with the end, announced before it.
    assert!(matches!(&store.steps(id).await.unwrap()[..], [Step::Model(m)] if m.step == 1));
    let log: Vec<EventKind> = store.events(id, 0, 10).await.unwrap().events.into_iter().map(|e| e.kind).collect();
    assert_eq!(log, [EventKind::Queued, EventKind::Started, EventKind::Step, EventKind::Succeeded]);
}

#[tokio::test]
async fn a_task_whose_stored_output_schema_does_not_compile_fails_saying_so_without_a_model_call() {
    // A schedule's task is read back with its schema uncompiled (`TaskRequest::parse_stored`).
    let body = br#"{"prompt": "hi", "output_schema": {"type": 12}}"#;
    let task = TaskRecord::new(TaskRequest::parse_stored(body, &Default::default()).unwrap(), "acme", agentq::now());
    let store = Arc::new(MemoryStore::new());
    store.insert(&task).await;
    let model = Arc::new(FakeModel::up());
    let r = worker::handle(&worker(store.clone(), model.clone()), batch(&[message(task.task_id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty(), "a task that cannot run is finished, not retried");
    let task = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap();
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    assert!(error.message.starts_with("the task's output_schema is not a valid JSON Schema"), "{}", error.message);
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_undecodable_message_is_acknowledged_not_retried() {
    let store = Arc::new(MemoryStore::new());
    let r = worker::handle(&worker(store, Arc::new(FakeModel::up())), batch(&["not json".into(), "{}".into()], 1))
        .await
        .unwrap();
    assert!(failures(&r).is_empty());
}

#[tokio::test]
async fn a_finished_task_is_not_run_again() {
    let store = Arc::new(MemoryStore::new());
    let model = Arc::new(FakeModel::up());
    let id = queued(&store).await;
    let w = worker(store.clone(), model.clone());
    worker::handle(&w, batch(&[message(id)], 1)).await.unwrap();
    let r = worker::handle(&w, batch(&[message(id)], 2)).await.unwrap();
    assert!(failures(&r).is_empty());
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_task_leased_by_another_delivery_is_acknowledged_as_a_duplicate() {
    // Its live runner holds a message of its own, which comes back if the runner dies: this
    // one would only spend receives until it reached the dead-letter queue.
    let store = Arc::new(MemoryStore::new());
    let model = Arc::new(FakeModel::up());
    let id = queued(&store).await;
    let other = Lease { owner: "elsewhere".into(), until: agentq::now() + time::Duration::minutes(5) };
    store.claim(id, &other, agentq::now()).await.unwrap();
    let r = worker::handle(&worker(store.clone(), model.clone()), batch(&[message(id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty());
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Running, "the live run is left alone");
}

#[tokio::test]
async fn a_task_whose_runner_died_is_taken_over_once_its_lease_expires() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let dead = Lease { owner: "dead".into(), until: agentq::now() - time::Duration::seconds(1) };
    store.claim(id, &dead, agentq::now() - time::Duration::minutes(1)).await.unwrap();
    let r = worker::handle(&worker(store.clone(), Arc::new(FakeModel::up())), batch(&[message(id)], 2)).await.unwrap();
    assert!(failures(&r).is_empty());
    assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Succeeded);
}

#[tokio::test]
async fn a_model_outage_gives_the_task_back_to_the_queue_with_a_growing_delay() {
    let store = Arc::new(MemoryStore::new());
    let requeue = Arc::new(MemoryRequeue::new());
    let model = Arc::new(FakeModel { down: true, ..FakeModel::up() });
    let w = worker_with(store.clone(), model, requeue.clone());
    let id = queued(&store).await;
    for receive_count in [1, 2] {
        let r = worker::handle(&w, batch(&[message(id)], receive_count)).await.unwrap();
        assert_eq!(failures(&r), ["m0"]);
        assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Queued);
    }
    // Each delivery hides its batch until past the deadline, then the message sets its retry delay.
    let delays: Vec<u64> = requeue.delays().iter().map(|(_, d)| d.as_secs()).collect();
    assert_eq!(delays.len(), 4, "{delays:?}");
    assert!((30..=33).contains(&delays[1]) && (60..=66).contains(&delays[3]), "{delays:?}");
}

#[test]
fn retry_delays_double_up_to_the_cap() {
    let w = worker(Arc::new(MemoryStore::new()), Arc::new(FakeModel::up()));
    let secs = |n| w.settings.retry_delay_for(n).as_secs();
    assert!((30..=33).contains(&secs(1)));
    assert!((240..=264).contains(&secs(4)));
    assert!((900..=990).contains(&secs(10)));
}

#[tokio::test]
async fn on_the_last_delivery_an_outage_fails_the_task_before_it_is_dead_lettered() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let model = Arc::new(FakeModel { down: true, ..FakeModel::up() });
    let r = worker::handle(&worker(store.clone(), model), batch(&[message(id)], 3)).await.unwrap();
    assert_eq!(failures(&r), ["m0"], "the message still goes to the DLQ for inspection");
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap();
    assert_eq!(error.code, ErrorCode::ModelsUnavailable);
    assert_eq!(error.message, "Try again later.", "users read the deployment's message, not the provider's");
}

#[tokio::test]
async fn a_store_outage_retries_the_message() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    store.set_down(true);
    let r = worker::handle(&worker(store, Arc::new(FakeModel::up())), batch(&[message(id)], 1)).await.unwrap();
    assert_eq!(failures(&r), ["m0"]);
}

#[tokio::test]
async fn the_records_of_a_batch_run_concurrently() {
    // Each model call waits until all three are in flight: run one after another, the batch
    // would never finish.
    let store = Arc::new(MemoryStore::new());
    let ids = [queued(&store).await, queued(&store).await, queued(&store).await];
    let model = Arc::new(FakeModel { gate: Some(tokio::sync::Barrier::new(3)), ..FakeModel::up() });
    let bodies: Vec<_> = ids.iter().map(|id| message(*id)).collect();
    let w = worker(store.clone(), model);
    let run = worker::handle(&w, batch(&bodies, 1));
    let r = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the batch ran its records one by one")
        .unwrap();
    assert!(failures(&r).is_empty());
    for id in ids {
        assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Succeeded);
    }
}

#[tokio::test]
async fn a_cancel_requested_during_a_run_stops_it_at_the_next_step_with_its_usage() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    // The model asks for a tool forever; the cancel lands during the first call.
    struct Looping(Arc<MemoryStore>, TaskId);
    #[async_trait]
    impl Model for Looping {
        fn id(&self) -> &str {
            "claude-haiku-4-5"
        }
        async fn complete(&self, _: &ModelRequest) -> Result<ModelResponse, ModelError> {
            self.0.cancel(self.1, agentq::now()).await.unwrap();
            Ok(asks_for_current_time())
        }
    }
    let mut w = worker(store.clone(), Arc::new(FakeModel::up()));
    w.models = ModelChain::new(vec![Arc::new(Looping(store.clone(), id)) as Arc<dyn Model>], BreakerPolicy::default());
    let r = worker::handle(&w, batch(&[message(id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty());
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.spend.step, 1, "stopped at the first step boundary");
    assert_eq!(task.spend.usage.input_tokens, 10, "the usage spent is kept");
    assert_eq!(store.active("acme"), 0);
}

#[tokio::test]
async fn a_queued_task_cancelled_before_delivery_is_never_run() {
    let store = Arc::new(MemoryStore::new());
    let model = Arc::new(FakeModel::up());
    let id = queued(&store).await;
    store.cancel(id, agentq::now()).await.unwrap();
    let r = worker::handle(&worker(store.clone(), model.clone()), batch(&[message(id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty());
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_run_out_of_time_is_handed_to_a_fresh_message_and_this_one_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let queue = Arc::new(MemoryQueue::new());
    let mut w = worker(store.clone(), Arc::new(FakeModel::up()));
    w.queue = queue.clone();
    // An invocation already inside its margin: the loop stops before its first call.
    let mut event = batch(&[message(id)], 4);
    event.context.deadline = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64 + 500;
    let r = worker::handle(&w, event).await.unwrap();
    assert!(failures(&r).is_empty(), "a hand-off spends no receive");
    assert_eq!(queue.sent().iter().map(|m| m.task_id).collect::<Vec<_>>(), [id]);
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(task.last_error.unwrap().code, ErrorCode::Deadline);
}

#[tokio::test]
async fn a_task_started_more_often_than_the_limit_fails_with_its_own_code() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let model = Arc::new(FakeModel::up());
    let mut w = worker(store.clone(), model.clone());
    w.settings.limits.max_attempts = 2;
    for n in 0..2 {
        let lease = Lease { owner: format!("crashed-{n}"), until: agentq::now() - time::Duration::seconds(1) };
        store.claim(id, &lease, agentq::now()).await.unwrap();
    }
    let r = worker::handle(&w, batch(&[message(id)], 1)).await.unwrap();
    assert!(failures(&r).is_empty());
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().code, ErrorCode::TooManyAttempts);
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(store.active("acme"), 0);
}

/// Asks for a tool once, then is down: a run that made progress before its models failed.
struct ToolThenDown(AtomicUsize);

#[async_trait]
impl Model for ToolThenDown {
    fn id(&self) -> &str {
        "claude-haiku-4-5"
    }
    async fn complete(&self, _: &ModelRequest) -> Result<ModelResponse, ModelError> {
        if self.0.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(overloaded());
        }
        Ok(asks_for_current_time())
    }
}

#[tokio::test]
async fn a_task_failed_after_answers_of_its_last_run_keeps_and_bills_them() {
    let store = Arc::new(MemoryStore::new());
    let id = queued(&store).await;
    let mut w = worker(store.clone(), Arc::new(FakeModel::up()));
    w.models =
        ModelChain::new(vec![Arc::new(ToolThenDown(AtomicUsize::new(0))) as Arc<dyn Model>], BreakerPolicy::default());
    // The last delivery: the first answer is recorded, then every model is down.
    let r = worker::handle(&w, batch(&[message(id)], 3)).await.unwrap();
    assert_eq!(failures(&r), ["m0"]);
    let task = store.get(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().code, ErrorCode::ModelsUnavailable);
    assert_eq!(task.spend.step, 1, "the recorded answer still counts");
    assert_eq!(task.spend.usage.input_tokens, 10);
    let today = agentq::store::day_of(agentq::now());
    let days = agentq::store::UsageRead::days(store.as_ref(), "acme", &today, &today).await.unwrap();
    assert_eq!(days.iter().map(|d| d.usage.input_tokens).sum::<u64>(), 10, "billed once, not forgotten: {days:?}");
}
