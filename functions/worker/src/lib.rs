//! The worker function: runs the tasks of one SQS batch, concurrently (the model is I/O-bound,
//! and one slow task must not hold the others up).
//!
//! Per message: decode it, claim the task with a conditional write (so a duplicate delivery
//! never runs it twice; the lease lasts until this invocation's deadline), check it is within
//! the deployment's task limits, load the steps an earlier run recorded, and run the agent
//! loop from there with a checkpoint that records every model answer (with the progress it
//! makes, in one write) and tool result as it happens; an answer that may end the run waits to
//! go with the end's write ([`settle`] records it first whenever the run stops otherwise).
//! At the claim the message is hidden
//! until shortly after this invocation's deadline (the lease's end too), so a worker that dies
//! is replaced soon, not after the queue's long timeout, and nothing needs renewing per step.
//!
//! How a run stops is a [`Stop`], and [`settle`] alone decides what that means for the task
//! and for SQS:
//!
//! | stop                                              | task                    | message      |
//! |---------------------------------------------------|-------------------------|--------------|
//! | ended (succeeded, failed, cancelled, over limits) | terminal state written  | deleted      |
//! | out of time (deadline)                            | `queued`, handed off    | a fresh one sent, this one deleted |
//! | every model down                                  | `queued`                | back after a growing delay |
//! | tenant over its model rate limit (per minute)     | `queued`, paused        | a fresh one sent, delayed to the next minute; this one deleted |
//! | every model down, last delivery                   | `failed`                | to the dead-letter queue |
//! | tools that need a person's decision               | `waiting_for_input`     | deleted (the decisions send a new one) |
//! | lease lost to another delivery                    | untouched               | deleted      |
//! | store unavailable                                 | untouched               | back just after the deadline |
//!
//! Messages that cannot start a run: undecodable, unknown or finished task → deleted; a task
//! another live delivery holds → deleted too (its holder's message comes back if it dies, and
//! the reconciler is the net under both); a claim the store refused → back later.
//!
//! A hand-off sends a fresh message rather than reusing this one, so a long run never spends
//! the queue's `maxReceiveCount`: receives count failures, and the task's own `attempts` and
//! wall time, checked against [`TaskLimits`] at every claim, decide when a run is too long.
//!
//! A panic in one task's run fails that task (`internal_error`) and nothing else: the other
//! records of the batch finish normally. (The deployed build keeps `panic = "unwind"` for this.)

mod meter;
mod tenants;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentq::agent::{
    AgentTask, Checkpoint, Halt, Limits, Outcome, Report, RetryPolicy, ToolCaps, ToolRegistry, run_agent,
};
use agentq::domain::approval::PendingCall;
use agentq::domain::events::TaskEvent;
use agentq::domain::output::OutputSchema;
use agentq::domain::steps::{ModelStep, Spend, ToolStep};
use agentq::domain::task::{ErrorCode, TaskError, TaskMessage, TaskRecord, TaskStatus};
use agentq::domain::usage::PriceTable;
use agentq::llm::{ModelChain, StopReason};
use agentq::observe::metrics::{self, Unit};
use agentq::observe::telemetry::traces;
use agentq::queue::{Requeue, TaskQueue};
use agentq::runtime::config::{ApprovalConfig, Config, TaskLimits};
use agentq::store::{
    Claim, Finish, Lease, ModelMeter, Progress, StepAck, StoreError, TaskCreate, TaskRead, TaskRun, TenantRead, Wait,
    cancelled_error,
};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::FutureExt as _;
use lambda_runtime::LambdaEvent;
pub use tenants::{TENANT_TTL, TenantCache};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument as _;

/// What the worker reads and writes.
pub trait WorkerStore: TaskRun + TaskRead + TaskCreate + TenantRead + ModelMeter {}
impl<T: TaskRun + TaskRead + TaskCreate + TenantRead + ModelMeter> WorkerStore for T {}

/// The worker's settings, read once from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Model call retries.
    pub retry: RetryPolicy,
    /// The queue's `maxReceiveCount`.
    pub max_receive_count: u32,
    /// Time kept in hand before the invocation's deadline.
    pub deadline_margin: Duration,
    /// Budget of tasks that set none, in nano-dollars.
    pub default_max_cost_nanos: Option<u64>,
    /// First and largest delay before a task whose models were down is tried again.
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    /// What clients read when the models stayed down through every delivery.
    pub unavailable_message: String,
    /// How long after the invocation's deadline a held message becomes visible again: a dead
    /// worker's task is picked up by then, and its lease has expired.
    pub visibility_slack: Duration,
    /// What one task may take: starts, wall time, tool calls and output.
    pub limits: TaskLimits,
    /// Tools whose calls wait for a person in every task, and the default wait.
    pub approval: ApprovalConfig,
}

impl From<&Config> for WorkerSettings {
    fn from(c: &Config) -> Self {
        Self {
            retry: RetryPolicy {
                max_attempts: c.model.max_attempts,
                cap: c.model.max_backoff,
                ..RetryPolicy::default()
            },
            max_receive_count: c.max_receive_count,
            deadline_margin: c.deadline_margin,
            default_max_cost_nanos: c.default_max_cost_nanos,
            retry_delay: c.retry_delay,
            retry_max_delay: c.retry_max_delay,
            unavailable_message: c.unavailable_message.clone(),
            visibility_slack: c.visibility_slack,
            limits: c.task_limits,
            approval: c.approval.clone(),
        }
    }
}

impl WorkerSettings {
    /// How long a task given back after its `receive_count`th delivery stays out of sight.
    pub fn retry_delay_for(&self, receive_count: u32) -> Duration {
        agentq::domain::backoff::growing(self.retry_delay, self.retry_max_delay, receive_count.saturating_sub(1))
    }

    fn tool_caps(&self) -> ToolCaps {
        ToolCaps {
            max_calls_per_step: self.limits.max_tool_calls_per_step,
            max_output_bytes: self.limits.max_tool_output_bytes,
        }
    }
}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn WorkerStore>,
    pub models: ModelChain,
    pub tools: ToolRegistry,
    pub prices: PriceTable,
    /// Where hand-offs send a task's fresh message.
    pub queue: Arc<dyn TaskQueue>,
    pub requeue: Arc<dyn Requeue>,
    pub settings: WorkerSettings,
    /// Tenants' limits as this instance last read them (model metering, held lines).
    pub tenants: TenantCache,
}

/// What to tell SQS about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delete it: the task is finished, handed to a fresh message, or the message can never
    /// be processed.
    Done,
    /// Leave it to come back after its visibility timeout.
    Retry,
}

/// Handles one SQS batch; failed records go back through `batchItemFailures`.
pub async fn handle(worker: &Worker, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = Deadline::from_epoch_millis(event.context.deadline);
    hide_batch(worker, &event.payload.records, deadline).await;
    let runs = event.payload.records.iter().map(|record| {
        let message_id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "message",
            message_id = %message_id,
            task_id = tracing::field::Empty,
            tenant_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let trace_id = traces::continue_trace(&span, &trace_context(record));
        if !trace_id.is_empty() {
            span.record("trace_id", trace_id.as_str());
        }
        async move {
            // A panic before a run started (or one the run's own guard missed) costs this
            // message a delivery, not the batch.
            let disposition = std::panic::AssertUnwindSafe(process(worker, record, deadline))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    tracing::error!(panic = panic_text(&panic), "processing the message panicked; retrying later");
                    Disposition::Retry
                });
            (message_id, disposition)
        }
        .instrument(span)
    });
    let mut response = SqsBatchResponse::default();
    for (message_id, disposition) in futures::future::join_all(runs).await {
        if disposition == Disposition::Retry {
            response.add_failure(message_id);
        }
    }
    Ok(response)
}

/// Keeps the batch's messages out of sight until shortly after the invocation's deadline: a
/// task whose invocation dies comes back then, not after the queue's whole visibility timeout.
/// One request per queue for the batch (the local event source and Lambda's send one queue's
/// records to an invocation), not one per message.
async fn hide_batch(worker: &Worker, records: &[SqsMessage], deadline: Deadline) {
    let hide = deadline.instant.saturating_duration_since(Instant::now()) + worker.settings.visibility_slack;
    let mut by_queue = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for record in records {
        if let (Some(arn), Some(receipt)) = (record.event_source_arn.as_deref(), record.receipt_handle.as_deref()) {
            by_queue.entry(arn).or_default().push(receipt);
        }
    }
    for (arn, receipts) in by_queue {
        if let Err(e) = worker.requeue.set_visibility_all(arn, &receipts, hide).await {
            tracing::warn!(
                error = format!("{:#}", e.0),
                "could not change the batch's visibility; the queue's timeout applies"
            );
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The trace context a message carries: the submitter's (message attributes `traceparent`,
/// `x-amzn-trace-id`), else the one SQS adds itself when X-Ray is on (`AWSTraceHeader`).
fn trace_context(record: &SqsMessage) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = record
        .message_attributes
        .iter()
        .filter(|(k, _)| matches!(k.to_ascii_lowercase().as_str(), "traceparent" | "tracestate" | "x-amzn-trace-id"))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.string_value.clone()?)))
        .collect();
    if out.is_empty()
        && let Some(xray) = record.attributes.get("AWSTraceHeader")
    {
        out.insert("x-amzn-trace-id".to_owned(), xray.clone());
    }
    out
}

/// The invocation's deadline, on both clocks: wall time for the lease stored in the table,
/// monotonic time for our own timers.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    wall: OffsetDateTime,
    instant: Instant,
}

impl Deadline {
    fn from_epoch_millis(ms: u64) -> Self {
        let now = agentq::now();
        let wall = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(now);
        // A missing or past deadline (a hand-made event) leaves a minute to work.
        let left = if wall > now { (wall - now).unsigned_abs() } else { Duration::from_secs(60) };
        Self { wall: now + left, instant: Instant::now() + left }
    }
}

/// The terminal state a run reached, before it is written (with its event).
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub status: TaskStatus,
    pub result: Option<agentq::domain::task::TaskResult>,
    pub error: Option<TaskError>,
    pub spend: agentq::domain::steps::Spend,
}

/// How a run stopped: everything [`settle`] needs to decide the task's and the message's fate.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The task reached a terminal state: write it.
    End(Ending),
    /// The invocation ran out of time: give the task to the next one.
    HandOff(TaskError),
    /// Every model of the chain is unavailable: try again after a growing delay.
    ModelsDown(TaskError),
    /// Another runner holds the task now: leave it to that one.
    LeaseLost,
    /// The store could not record progress: let the message come back.
    StoreTrouble(String),
    /// The model asked for tools that need a person's decision: the task waits, holding
    /// nothing, until the decisions arrive.
    Wait(Vec<PendingCall>),
    /// The tenant's model use reached its per-minute limit: the task pauses until then.
    Pause(OffsetDateTime),
}

impl Stop {
    /// What a finished run's report means.
    fn of(report: &Report, task: &TaskRecord) -> Self {
        let finish = |status, result, error| {
            let mut spend = task.spend.clone();
            spend.advance_to(&report.spend);
            Stop::End(Ending { status, result, error, spend })
        };
        match &report.outcome {
            Outcome::Succeeded(result) => finish(TaskStatus::Succeeded, Some(result.clone()), None),
            Outcome::Failed(error) => finish(TaskStatus::Failed, None, Some(error.clone())),
            Outcome::Halted(Halt::CancelRequested) => finish(TaskStatus::Cancelled, None, Some(cancelled_error())),
            Outcome::Interrupted(e) if e.code == ErrorCode::ModelsUnavailable => Stop::ModelsDown(e.clone()),
            Outcome::Interrupted(e) => Stop::HandOff(e.clone()),
            Outcome::Halted(Halt::LeaseLost) => Stop::LeaseLost,
            Outcome::Halted(Halt::Store(why)) => Stop::StoreTrouble(why.clone()),
            Outcome::Halted(Halt::ModelRateLimited { until }) => Stop::Pause(*until),
            Outcome::WaitingForInput(pending) => Stop::Wait(pending.clone()),
        }
    }
}

/// A terminal state for `task` as it stands, ending it with `status` and `error`.
fn end_as_is(task: &TaskRecord, status: TaskStatus, error: TaskError) -> Ending {
    Ending { status, result: None, error: Some(error), spend: task.spend.clone() }
}

/// The seq of a run's next event: the run is its task's only writer while its lease holds.
#[derive(Debug)]
struct EventSeq(std::sync::atomic::AtomicU32);

impl EventSeq {
    /// The next seq, unused until [`advance`](Self::advance)d past.
    fn next(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst) + 1
    }

    fn advance(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What this run has recorded of the task's bill, and the answer still waiting to be recorded.
///
/// An answer that may end the run waits to be written with the end: one transaction instead
/// of two (docs/durability.md); it is recorded on its own as soon as the run goes on, or stops
/// some other way. Kept on the [`Run`], not in the agent's future, so a deadline or a panic
/// that drops the future leaves both to [`settle`], and an ending made from the task as
/// claimed still bills what the run recorded since.
struct Ledger(std::sync::Mutex<LedgerState>);

struct LedgerState {
    recorded: Spend,
    waiting: Option<(ModelStep, Progress)>,
}

impl Ledger {
    fn new(claimed: &Spend) -> Self {
        Self(std::sync::Mutex::new(LedgerState { recorded: claimed.clone(), waiting: None }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds an answer back, to go with the end.
    fn keep(&self, step: ModelStep, progress: Progress) {
        self.state().waiting = Some((step, progress));
    }

    fn take_waiting(&self) -> Option<(ModelStep, Progress)> {
        self.state().waiting.take()
    }

    /// An answer's progress is stored.
    fn recorded(&self, spend: &Spend) {
        let mut state = self.state();
        if spend.step >= state.recorded.step {
            state.recorded.advance_to(spend);
        }
    }

    /// The spend an ending writes: its own, unless the run recorded more (an ending made from
    /// the task as claimed must not take back, or leave unbilled, the answers stored since).
    fn ending(&self, spend: &Spend) -> Spend {
        let state = self.state();
        if state.recorded.step > spend.step { state.recorded.clone() } else { spend.clone() }
    }
}

/// Records an answer and the progress it makes, noting it in the run's ledger.
async fn record_answer(
    store: &dyn WorkerStore,
    id: agentq::domain::task::TaskId,
    lease: &Lease,
    ledger: &Ledger,
    step: &ModelStep,
    progress: &Progress,
) -> Result<StepAck, StoreError> {
    let ack =
        store.record_model_step(id, lease, step, progress).instrument(tracing::info_span!("store.record_step")).await?;
    ledger.recorded(&progress.spend);
    Ok(ack)
}

/// One message's run, from claim to what SQS should do with it.
struct Run<'a> {
    /// The task's log, as far as this run has written it.
    events: EventSeq,
    /// What the run recorded of the bill, and its last answer while that waits for the end.
    ledger: Ledger,
    worker: &'a Worker,
    task: TaskRecord,
    lease: Lease,
    visibility: Visibility<'a>,
    receive_count: u32,
    started: Instant,
}

/// Processes one message and says what SQS should do with it.
async fn process(worker: &Worker, record: &SqsMessage, deadline: Deadline) -> Disposition {
    let body = record.body.as_deref().unwrap_or_default();
    let message: TaskMessage = match serde_json::from_str(body) {
        Ok(m) => m,
        Err(e) => {
            // Retrying cannot make it decodable: drop it, loudly (the body may hold anything,
            // so only its size is logged).
            tracing::error!(error = %e, body_bytes = body.len(), "undecodable message; acknowledged without processing");
            return Disposition::Done;
        }
    };
    let id = message.task_id;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let receive_count: u32 = record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
    let settings = &worker.settings;

    let lease = Lease { owner: ulid::Ulid::generate().to_string(), until: deadline.wall };
    let visibility = Visibility { requeue: worker.requeue.as_ref(), record };
    let task = match worker.store.claim(id, &lease, agentq::now()).instrument(tracing::info_span!("store.claim")).await
    {
        Ok(Claim::Claimed(task)) => *task,
        Ok(Claim::NotFound) => {
            tracing::error!("message for an unknown task; acknowledged without processing");
            return Disposition::Done;
        }
        Ok(Claim::Terminal(status)) => {
            tracing::info!(%status, "task already finished; duplicate delivery acknowledged");
            return Disposition::Done;
        }
        Ok(Claim::Leased { until }) => {
            // A live runner holds it, with its own message in flight: this one is a duplicate.
            tracing::info!(lease_until = %until, "task is running under another delivery; duplicate acknowledged");
            return Disposition::Done;
        }
        Err(e) => {
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not claim the task; retrying later"
            );
            visibility.hide_for(settings.retry_delay_for(receive_count)).await;
            return Disposition::Retry;
        }
    };
    tracing::Span::current().record("tenant_id", task.tenant_id.as_str());
    let queue_wait_ms = (agentq::now() - task.created_at).whole_milliseconds().max(0) as u64;
    let deadline_in_ms = deadline.instant.saturating_duration_since(Instant::now()).as_millis() as u64;
    tracing::info!(attempt = task.attempts, receive_count, queue_wait_ms, deadline_in_ms, "task claimed");
    if task.attempts <= 1 {
        // Time from accepted to first picked up; later deliveries would count retry delays.
        metrics::record()
            .dimension("priority", task.priority.as_str())
            .value("QueueWaitMs", queue_wait_ms as f64, Unit::Milliseconds)
            .property("task_id", id.to_string())
            .emit();
    }
    // The claim reserved the run's first seq (the record's `events`): the started event's, or
    // the ending's of a run that stops before it starts.
    let events = EventSeq(std::sync::atomic::AtomicU32::new(task.events.saturating_sub(1)));
    let run = Run {
        events,
        ledger: Ledger::new(&task.spend),
        worker,
        task,
        lease,
        visibility,
        receive_count,
        started: Instant::now(),
    };
    if let Some(error) = settings.limits.exceeded_by(&run.task, agentq::now()) {
        tracing::warn!(code = %error.code, attempts = run.task.attempts, "the task is over the deployment's limits");
        let stop = Stop::End(end_as_is(&run.task, TaskStatus::Failed, error));
        return settle(&run, stop).await;
    }
    if run.task.cancel_requested {
        // Cancelled while its last runner held it: nothing more to run.
        let stop = Stop::End(end_as_is(&run.task, TaskStatus::Cancelled, cancelled_error()));
        return settle(&run, stop).await;
    }

    let started = TaskEvent::started(&run.task, run.events.next(), agentq::now());
    match worker.store.record_started(id, &started).await {
        Ok(()) => run.events.advance(),
        Err(StoreError::Conflict) => return settle(&run, Stop::LeaseLost).await,
        Err(e) => {
            let stop = Stop::StoreTrouble(format!("writing the started event: {:#}", anyhow::Error::from(e)));
            return settle(&run, stop).await;
        }
    }
    let history = match history(worker, &run.task).instrument(tracing::info_span!("store.steps")).await {
        Ok(h) => h,
        Err(e) => {
            let stop = Stop::StoreTrouble(format!("reading the recorded steps: {:#}", anyhow::Error::from(e)));
            return settle(&run, stop).await;
        }
    };
    let stop = match std::panic::AssertUnwindSafe(execute(&run, &history, deadline)).catch_unwind().await {
        Ok(stop) => stop,
        Err(panic) => {
            tracing::error!(panic = panic_text(&panic), "the task's run panicked; failing the task");
            let error = TaskError::new(ErrorCode::InternalError, "the task stopped on an internal error in agentq");
            Stop::End(end_as_is(&run.task, TaskStatus::Failed, error))
        }
    };
    settle(&run, stop).await
}

/// The task's recorded steps. A fork's first run copies the steps it inherits from its parent
/// first (a run that died while copying left some: those stand), so its own record shows them.
async fn history(worker: &Worker, task: &TaskRecord) -> Result<Vec<agentq::domain::steps::Step>, StoreError> {
    let Some(origin) = task.fork.as_ref() else {
        // No model step recorded (the count moves in the same write as the step), so no tool
        // step either (each follows the answer that asked for it): a first run reads nothing.
        if task.spend.step == 0 {
            return Ok(Vec::new());
        }
        return worker.store.steps(task.task_id).await;
    };
    let steps = worker.store.steps(task.task_id).await?;
    let inherited_all =
        steps.iter().any(|s| matches!(s, agentq::domain::steps::Step::Model(m) if m.step == origin.from_step));
    if origin.from_step == 0 || inherited_all {
        return Ok(steps);
    }
    let parent = worker.store.steps(origin.task_id).await?;
    let inherited = agentq::domain::fork::inherited(&parent, origin);
    tracing::info!(parent = %origin.task_id, from_step = origin.from_step, steps = inherited.len(), "copying the steps a fork inherits");
    worker.store.inherit(task.task_id, &inherited).await?;
    worker.store.steps(task.task_id).await
}

/// Runs the agent loop for a claimed task until it ends or the invocation's time is up.
async fn execute(run: &Run<'_>, history: &[agentq::domain::steps::Step], deadline: Deadline) -> Stop {
    let (worker, task, settings) = (run.worker, &run.task, &run.worker.settings);
    let meter = worker.tenants.metered(worker.store.as_ref(), &task.tenant_id).await.map(|limits| meter::Meter {
        store: worker.store.as_ref(),
        tenant: &task.tenant_id,
        limits,
        jitter: Duration::from_millis((task.task_id.random_bits() % 5_000) as u64),
        call_started: None,
    });
    let mut checkpoint = StoreCheckpoint {
        store: worker.store.as_ref(),
        id: task.task_id,
        lease: run.lease.clone(),
        events: &run.events,
        ledger: &run.ledger,
        meter,
    };
    let models = match &task.requested_model {
        Some(m) => worker.models.starting_at(m).unwrap_or_else(|| {
            tracing::warn!(model = %m, "the requested model is no longer in the chain; using the whole chain");
            worker.models.clone()
        }),
        None => worker.models.clone(),
    };
    // The MCP servers' tools as this instance last listed them (listed now when stale).
    let offered = worker.tools.resolved().await;
    let tools = task.tools.as_deref().map_or_else(|| offered.clone(), |names| offered.subset(names));
    let limits = Limits {
        retry: settings.retry,
        deadline: Some(deadline.instant - settings.deadline_margin),
        tools: settings.tool_caps(),
    };
    let task_id = task.task_id.to_string();
    // Checked at submit; a schema that no longer compiles (a newer validator) fails the task
    // rather than running it without its contract.
    let output = match task.output_schema.as_ref().map(|m| OutputSchema::compile(&serde_json::Value::Object(m.clone())))
    {
        None => None,
        Some(Ok(schema)) => Some(schema),
        Some(Err(why)) => {
            let error = TaskError::new(ErrorCode::OutputInvalid, format!("the task's output_schema {why}"));
            return Stop::End(end_as_is(task, TaskStatus::Failed, error));
        }
    };
    // The deployment's approval tools, and the task's own.
    let mut approval = settings.approval.tools.clone();
    approval.extend(task.approval.iter().flat_map(|a| a.tools.iter().cloned()));
    let agent_task = AgentTask {
        task_id: &task_id,
        tenant_id: &task.tenant_id,
        prompt: &task.prompt,
        max_iterations: task.max_iterations,
        max_cost_nanos: task.max_cost_nanos.or(settings.default_max_cost_nanos),
        history,
        output: output.as_ref(),
        approval: &approval,
        inherited: task.fork.as_ref().map_or(0, |f| f.from_step),
        fork_message: task.fork.as_ref().and_then(|f| f.message.as_deref()),
    };
    // A model call in flight when time runs out is abandoned, leaving half the margin to write.
    let ran = tokio::time::timeout_at(
        deadline.instant - settings.deadline_margin / 2,
        run_agent(&models, &tools, &worker.prices, agent_task, limits, &mut checkpoint),
    )
    .await;
    match ran {
        Ok(report) => Stop::of(&report, task),
        // What was recorded stays recorded; the next invocation resumes from it.
        Err(_) => {
            Stop::HandOff(TaskError::new(ErrorCode::Deadline, "the worker ran out of time; the task will resume"))
        }
    }
}

/// The one place a stop becomes a write and a message's fate.
async fn settle(run: &Run<'_>, stop: Stop) -> Disposition {
    let (worker, task, settings) = (run.worker, &run.task, &run.worker.settings);
    // The run's last answer goes with its end when the end counts it; otherwise it is
    // recorded first, on its own, and the stop goes on as it was (or as that write says).
    let stop = match (stop, run.ledger.take_waiting()) {
        (Stop::End(ending), Some((step, progress))) if ending.spend.step == step.step => {
            return write_finish(run, &ending, Disposition::Done, Some((step, progress.event))).await;
        }
        (stop, Some((step, progress))) => {
            match record_answer(worker.store.as_ref(), task.task_id, &run.lease, &run.ledger, &step, &progress).await {
                Ok(_) => stop,
                Err(StoreError::Conflict) => Stop::LeaseLost,
                Err(e) => Stop::StoreTrouble(format!("recording a step: {:#}", anyhow::Error::from(e))),
            }
        }
        (stop, None) => stop,
    };
    match stop {
        Stop::End(ending) => write_finish(run, &ending, Disposition::Done, None).await,
        Stop::LeaseLost => {
            tracing::warn!("lease lost to another delivery; stopping without writing");
            Disposition::Done
        }
        Stop::StoreTrouble(why) => {
            tracing::error!(reason = %why, "could not record progress; the message will come back");
            Disposition::Retry
        }
        Stop::Wait(pending) => wait(run, pending).await,
        Stop::ModelsDown(error) if run.receive_count >= settings.max_receive_count => {
            tracing::error!(code = %error.code, receive_count = run.receive_count, "last delivery and the models are still down: failing the task; the message goes to the dead-letter queue");
            // Users get the deployment's words; the provider's error is in the log.
            let error = TaskError::new(ErrorCode::ModelsUnavailable, settings.unavailable_message.clone());
            // Dead-letter it now, not after the batch's hiding time.
            run.visibility.hide_for(Duration::ZERO).await;
            write_finish(run, &end_as_is(task, TaskStatus::Failed, error), Disposition::Retry, None).await
        }
        Stop::ModelsDown(error) => {
            let delay = settings.retry_delay_for(run.receive_count);
            tracing::warn!(code = %error.code, receive_count = run.receive_count, retry_in_s = delay.as_secs(), "models unavailable; giving the task back to the queue");
            match release(run, &error).await {
                Released::Yes => {
                    run.visibility.hide_for(delay).await;
                    Disposition::Retry
                }
                Released::Cancelled => cancelled(run).await,
                Released::No => Disposition::Retry,
            }
        }
        Stop::HandOff(error) => {
            tracing::info!(code = %error.code, steps = task.spend.step, "out of time; handing the task to a fresh message");
            match release(run, &error).await {
                Released::Yes => hand_off(run, Duration::ZERO).await,
                Released::Cancelled => cancelled(run).await,
                Released::No => Disposition::Retry,
            }
        }
        Stop::Pause(until) => {
            let delay = (until - agentq::now()).try_into().unwrap_or(Duration::ZERO);
            tracing::info!(
                steps = task.spend.step,
                resume_in_ms = delay.as_millis() as u64,
                "the tenant's model rate limit is reached; pausing the task"
            );
            let error = TaskError::new(
                ErrorCode::ModelRateLimited,
                "the tenant's model calls reached their per-minute limit; the task resumes in the next minute",
            );
            match worker.store.pause(task.task_id, &run.lease, &error, until, agentq::now()).await {
                Ok(()) => hand_off(run, delay).await,
                Err(StoreError::Conflict) => cancelled(run).await,
                Err(e) => {
                    log_store_error("could not pause the task; its lease will expire", e);
                    Disposition::Retry
                }
            }
        }
    }
}

/// Sends the released task a fresh message, out of sight for `delay`, and lets this one go.
async fn hand_off(run: &Run<'_>, delay: Duration) -> Disposition {
    let message = TaskMessage::of(&run.task).delayed(delay);
    let context = traces::headers_for(&tracing::Span::current());
    match run.worker.queue.enqueue(&message, &context).await {
        Ok(()) => Disposition::Done,
        Err(e) => {
            // This message carries it instead, at the cost of one receive.
            tracing::warn!(error = format!("{:#}", e.0), "could not send the hand-off message; reusing this one");
            run.visibility.hide_for(delay).await;
            Disposition::Retry
        }
    }
}

/// `running` → `waiting_for_input`: the message is done with; the decisions send a new one.
async fn wait(run: &Run<'_>, pending: Vec<PendingCall>) -> Disposition {
    let task = &run.task;
    let now = agentq::now();
    let timeout = task
        .approval
        .as_ref()
        .and_then(|a| a.timeout_secs)
        .map_or(run.worker.settings.approval.timeout, Duration::from_secs);
    let until = now + timeout;
    let event = TaskEvent::waiting(task.task_id, run.events.next(), &pending, until, now);
    let names: Vec<&str> = pending.iter().map(|p| p.name.as_str()).collect();
    let wait = Wait { pending: pending.clone(), until, event, now };
    match run.worker.store.wait(task, &run.lease, &wait).instrument(tracing::info_span!("store.wait")).await {
        Ok(()) => {
            tracing::info!(tools = ?names, timeout_s = timeout.as_secs(), "waiting for a decision on tool calls");
            start_held(run).await;
            metrics::record()
                .value("TasksWaitingForInput", 1.0, Unit::Count)
                .property("task_id", task.task_id.to_string())
                .emit();
            Disposition::Done
        }
        // A cancel arrived meanwhile (or the lease is gone, and finishing will say so).
        Err(StoreError::Conflict) => cancelled(run).await,
        Err(e) => {
            log_store_error("could not record the wait; the message will come back", e);
            Disposition::Retry
        }
    }
}

/// The task's slot is free: the tenant's oldest held task, if any, takes it. Only a tenant
/// that holds work is asked (its limits from the instance's cache, which the run's start read).
async fn start_held(run: &Run<'_>) {
    let worker = run.worker;
    if !worker.tenants.holds(worker.store.as_ref(), &run.task.tenant_id).await {
        return;
    }
    agentq::usecases::held::start_held(
        worker.store.as_ref(),
        worker.queue.as_ref(),
        &run.task.tenant_id,
        true,
        agentq::now(),
    )
    .await;
}

enum Released {
    Yes,
    /// A cancel arrived meanwhile: end it rather than run it again.
    Cancelled,
    No,
}

/// `running` → `queued`, noting why.
async fn release(run: &Run<'_>, why: &TaskError) -> Released {
    match run.worker.store.release(run.task.task_id, &run.lease, why, agentq::now()).await {
        Ok(()) => Released::Yes,
        Err(StoreError::Conflict) => Released::Cancelled,
        Err(e) => {
            log_store_error("could not release the task; its lease will expire", e);
            Released::No
        }
    }
}

async fn cancelled(run: &Run<'_>) -> Disposition {
    let ending = end_as_is(&run.task, TaskStatus::Cancelled, cancelled_error());
    write_finish(run, &ending, Disposition::Done, None).await
}

/// Writes a terminal state and its event (with the run's last answer and its event, if
/// `last_step` holds one); what SQS is told depends on whether the write held.
async fn write_finish(
    run: &Run<'_>,
    ending: &Ending,
    disposition: Disposition,
    last_step: Option<(ModelStep, TaskEvent)>,
) -> Disposition {
    let task = &run.task;
    let now = agentq::now();
    let spend = run.ledger.ending(&ending.spend);
    let event = TaskEvent::ended(task.task_id, run.events.next(), ending.status, &spend, ending.error.as_ref(), now);
    let finish = &Finish {
        status: ending.status,
        result: ending.result.clone(),
        error: ending.error.clone(),
        spend,
        now,
        event,
        last_step,
    };
    match run.worker.store.finish(task, &run.lease, finish).instrument(tracing::info_span!("store.finish")).await {
        Ok(()) => {
            let error_code = finish.error.as_ref().map(|e| e.code.as_str());
            let duration_ms = run.started.elapsed().as_millis() as u64;
            // From accepted to finished, across every delivery: what the client waited.
            let total_ms = (finish.now - task.created_at).whole_milliseconds().max(0) as u64;
            tracing::info!(
                status = %finish.status,
                iterations = finish.spend.step,
                cost_usd = finish.spend.usage.cost_usd(),
                duration_ms,
                total_ms,
                error_code,
                "task finished"
            );
            metrics::record()
                .dimension("status", finish.status.as_str())
                .value("TasksFinished", 1.0, Unit::Count)
                .value("TaskDurationMs", total_ms as f64, Unit::Milliseconds)
                .value("TaskCostUsd", finish.spend.usage.cost_usd(), Unit::None)
                .value("TaskIterations", f64::from(finish.spend.step), Unit::Count)
                .property("tenant_id", task.tenant_id.as_str())
                .property("task_id", task.task_id.to_string())
                .property("error_code", error_code)
                .emit();
            start_held(run).await;
            disposition
        }
        Err(StoreError::Conflict) => {
            tracing::warn!("lease lost before the result was written; the other delivery owns the task");
            Disposition::Done
        }
        Err(e) => {
            log_store_error("could not write the task's result; retrying later", e);
            Disposition::Retry
        }
    }
}

fn log_store_error(what: &str, e: StoreError) {
    tracing::error!(error = format!("{:#}", anyhow::Error::from(e)), "{what}");
}

/// One message's visibility: how long it stays out of sight when a run gives it back (the
/// whole batch is hidden until just past the deadline when the invocation starts).
#[derive(Clone, Copy)]
struct Visibility<'a> {
    requeue: &'a dyn Requeue,
    record: &'a SqsMessage,
}

impl Visibility<'_> {
    async fn hide_for(&self, delay: Duration) {
        let (Some(arn), Some(receipt)) =
            (self.record.event_source_arn.as_deref(), self.record.receipt_handle.as_deref())
        else {
            return;
        };
        if let Err(e) = self.requeue.set_visibility(arn, receipt, delay).await {
            tracing::warn!(
                error = format!("{:#}", e.0),
                "could not change the message's visibility; the queue's timeout applies"
            );
        }
    }
}

/// Records each step with the progress it makes; stops the run when the lease was lost or a
/// cancel requested.
struct StoreCheckpoint<'a> {
    store: &'a dyn WorkerStore,
    id: agentq::domain::task::TaskId,
    lease: Lease,
    events: &'a EventSeq,
    ledger: &'a Ledger,
    /// Set for a tenant with per-minute model limits.
    meter: Option<meter::Meter<'a>>,
}

impl StoreCheckpoint<'_> {
    /// Records an answer now.
    async fn record(&self, step: &ModelStep, progress: &Progress) -> Result<StepAck, Halt> {
        record_answer(self.store, self.id, &self.lease, self.ledger, step, progress)
            .await
            .map_err(|e| halt("recording a step", e))
    }
}

/// Whether the run goes on after a recorded step: not when a cancel was requested.
fn go_on(ack: StepAck) -> Result<(), Halt> {
    match ack {
        StepAck::CancelRequested => Err(Halt::CancelRequested),
        StepAck::Continue => Ok(()),
    }
}

fn halt(what: &str, e: StoreError) -> Halt {
    match e {
        StoreError::Conflict => Halt::LeaseLost,
        e => Halt::Store(format!("{what}: {:#}", anyhow::Error::from(e))),
    }
}

#[async_trait]
impl Checkpoint for StoreCheckpoint<'_> {
    async fn model_step(&mut self, step: &ModelStep, report: &Report) -> Result<(), Halt> {
        // One write: the answer and the progress it makes. The lease (at the claim) and the
        // message's invisibility (when the invocation started) hold to the invocation's
        // deadline and need no renewal. An answer that asks for no tools usually ends the
        // run: it waits to go with the end's write (`settle`), or with the next call's.
        let now = agentq::now();
        let event = TaskEvent::step(self.id, self.events.next(), step, &report.spend, now);
        let progress = Progress { spend: report.spend.clone(), now, event };
        let ack = if step.stop_reason == StopReason::ToolUse {
            self.record(step, &progress).await?
        } else {
            self.ledger.keep(step.clone(), progress);
            StepAck::Continue
        };
        // The event's seq is this run's now (written, or to be written with the step).
        self.events.advance();
        if let Some(meter) = self.meter.as_mut() {
            meter.answered(&step.usage).await;
        }
        go_on(ack)
    }

    async fn before_model_call(&mut self) -> Result<(), Halt> {
        // The run goes on after an answer that could have ended it (a correction asked for).
        if let Some((step, progress)) = self.ledger.take_waiting() {
            go_on(self.record(&step, &progress).await?)?;
        }
        match self.meter.as_mut() {
            Some(meter) => meter.before_call().await,
            None => Ok(()),
        }
    }

    async fn tool_result(&self, step: &ToolStep) -> Result<(), Halt> {
        self.store
            .record_tool_step(self.id, step)
            .instrument(tracing::info_span!("store.record_tool_result"))
            .await
            .map_err(|e| halt("recording a tool result", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::SqsMessageAttribute;

    fn attribute(value: &str) -> SqsMessageAttribute {
        let mut a = SqsMessageAttribute::default();
        a.string_value = Some(value.into());
        a.data_type = Some("String".into());
        a
    }

    #[test]
    fn the_submitters_trace_context_wins_over_the_one_sqs_adds() {
        let mut record = SqsMessage::default();
        record.message_attributes.insert("traceparent".into(), attribute("00-abc-def-01"));
        record.attributes.insert("AWSTraceHeader".into(), "Root=1-5759e988-bd862e3fe1be46a994272793".into());
        let context = trace_context(&record);
        assert_eq!(context.get("traceparent").map(String::as_str), Some("00-abc-def-01"));
        assert!(!context.contains_key("x-amzn-trace-id"));
    }

    #[test]
    fn sqs_own_trace_header_is_honoured_when_the_message_carries_none() {
        let mut record = SqsMessage::default();
        record.attributes.insert("AWSTraceHeader".into(), "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into());
        let context = trace_context(&record);
        assert_eq!(
            context.get("x-amzn-trace-id").map(String::as_str),
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")
        );
    }
}
