//! The worker function: runs the tasks of one SQS batch, concurrently (the model is I/O-bound,
//! and one slow task must not hold the others up).
//!
//! Per message: decode it, claim the task with a conditional write (so a duplicate delivery
//! never runs it twice; the lease lasts until this invocation's deadline), load the steps an
//! earlier run recorded, and run the agent loop from there with a checkpoint that records
//! every model answer and tool result as it happens, writes progress, renews the lease and
//! keeps the message hidden (a visibility heartbeat: until shortly after this invocation's
//! deadline, so a worker that dies is replaced soon, not after the queue's long timeout).
//! Then write the terminal state. What SQS should do next follows from the outcome:
//!
//! | outcome                                              | message        |
//! |------------------------------------------------------|----------------|
//! | terminal state written, or task already terminal     | deleted        |
//! | undecodable message, unknown task (permanent)        | deleted, logged|
//! | model unavailable, deadline near, store unavailable  | retried        |
//! | deadline near (the next delivery resumes at once)    | retried, now   |
//! | another live delivery is running the task            | retried        |
//!
//! A task given back because every model was down is kept out of sight for a growing delay
//! (`ChangeMessageVisibility`: 30 s, 60 s, 120 s… up to a cap), not retried at once. On the
//! last delivery SQS will make (`maxReceiveCount`), a task that still cannot finish is marked
//! `failed` (`models_unavailable`, with the deployment's message for users) before its message
//! goes to the dead-letter queue, so no client waits on a task that will never end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentq::agent::{AgentTask, Checkpoint, Limits, Outcome, Report, RetryPolicy, ToolRegistry, run_agent};
use agentq::llm::ModelChain;
use agentq::metrics::{self, Unit};
use agentq::queue::Requeue;
use agentq::steps::{ModelStep, ToolStep};
use agentq::store::{Claim, Finish, Lease, Progress, StepAck, StoreError, TaskRead, TaskRun, cancelled_error};
use agentq::task::{TaskError, TaskId, TaskMessage, TaskRecord, TaskStatus};
use agentq::telemetry::traces;
use agentq::usage::PriceTable;
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument as _;

/// What the worker reads and writes.
pub trait WorkerStore: TaskRun + TaskRead {}
impl<T: TaskRun + TaskRead> WorkerStore for T {}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn WorkerStore>,
    pub models: ModelChain,
    pub tools: ToolRegistry,
    pub prices: PriceTable,
    pub retry: RetryPolicy,
    pub requeue: Arc<dyn Requeue>,
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
}

impl Worker {
    /// How long a task given back after its `receive_count`th delivery stays out of sight:
    /// the delay doubles with each delivery, up to the cap, with a little jitter so tasks that
    /// failed together do not all come back together.
    pub fn retry_delay_for(&self, receive_count: u32) -> Duration {
        let doubled = self.retry_delay.saturating_mul(1 << receive_count.saturating_sub(1).min(16));
        doubled.min(self.retry_max_delay).mul_f64(1.0 + fastrand::f64() * 0.1)
    }
}

/// What to tell SQS about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delete it: the task is finished, or the message can never be processed.
    Done,
    /// Leave it to come back after its visibility timeout.
    Retry,
}

/// Handles one SQS batch; failed records go back through `batchItemFailures`.
pub async fn handle(worker: &Worker, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = Deadline::from_epoch_millis(event.context.deadline);
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
        async move { (message_id, process(worker, record, deadline).await) }.instrument(span)
    });
    let mut response = SqsBatchResponse::default();
    for (message_id, disposition) in futures::future::join_all(runs).await {
        if disposition == Disposition::Retry {
            response.add_failure(message_id);
        }
    }
    Ok(response)
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
    let last_delivery = receive_count >= worker.max_receive_count;

    let lease = Lease { owner: ulid::Ulid::generate().to_string(), until: deadline.wall };
    let heartbeat = Heartbeat { requeue: worker.requeue.as_ref(), record, deadline, slack: worker.visibility_slack };
    let task = match worker.store.claim(id, &lease, agentq::now()).instrument(tracing::info_span!("store.claim")).await
    {
        Ok(Claim::Claimed(task)) => task,
        Ok(Claim::NotFound) => {
            tracing::error!("message for an unknown task; acknowledged without processing");
            return Disposition::Done;
        }
        Ok(Claim::Terminal(status)) => {
            tracing::info!(%status, "task already finished; duplicate delivery acknowledged");
            return Disposition::Done;
        }
        Ok(Claim::Leased { until }) => {
            // Come back once that lease has run out, in case its runner dies.
            let wait = until - agentq::now();
            tracing::info!(lease_until = %until, "task is running under another delivery; retrying later");
            heartbeat.hide_for(wait.try_into().unwrap_or_default()).await;
            return Disposition::Retry;
        }
        Err(e) => {
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not claim the task; retrying later"
            );
            heartbeat.hide_for(worker.retry_delay_for(receive_count)).await;
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
    if task.cancel_requested {
        // Cancelled while its last runner held it: nothing more to run.
        let finish = Finish {
            status: TaskStatus::Cancelled,
            result: None,
            error: Some(cancelled_error()),
            step: task.step,
            usage: task.usage,
            usage_by_model: task.usage_by_model.clone(),
            model: task.model.clone(),
            now: agentq::now(),
        };
        return write_finish(worker, &task, &lease, &finish, Instant::now(), Disposition::Done).await;
    }

    // Keep the message hidden while we run, and no longer than our deadline plus a little.
    heartbeat.beat().await;

    let history = match worker.store.steps(id).instrument(tracing::info_span!("store.steps")).await {
        Ok(h) => h,
        Err(e) => {
            log_store_error("could not read the task's recorded steps; retrying later", e);
            if let Err(e) = worker
                .store
                .release(id, &lease, &TaskError::new("store_error", "could not read the task's steps"), agentq::now())
                .await
            {
                log_store_error("could not release the task; its lease will expire", e);
            }
            heartbeat.hide_for(worker.retry_delay_for(receive_count)).await;
            return Disposition::Retry;
        }
    };
    let mut checkpoint = StoreCheckpoint {
        store: worker.store.as_ref(),
        id,
        lease: lease.clone(),
        lease_until: deadline.wall,
        heartbeat,
        lost: false,
        cancelled: false,
    };
    let models = match &task.requested_model {
        Some(m) => worker.models.starting_at(m).unwrap_or_else(|| {
            tracing::warn!(model = %m, "the requested model is no longer in the chain; using the whole chain");
            worker.models.clone()
        }),
        None => worker.models.clone(),
    };
    let tools = task.tools.as_deref().map_or_else(|| worker.tools.clone(), |names| worker.tools.subset(names));
    let started = Instant::now();
    let limits = Limits { retry: worker.retry, deadline: Some(deadline.instant - worker.deadline_margin) };
    let task_id = id.to_string();
    let agent_task = AgentTask {
        task_id: &task_id,
        prompt: &task.prompt,
        max_iterations: task.max_iterations,
        max_cost_nanos: task.max_cost_nanos.or(worker.default_max_cost_nanos),
        history: &history,
    };
    // A model call in flight when time runs out is abandoned, leaving half the margin to write.
    let run = tokio::time::timeout_at(
        deadline.instant - worker.deadline_margin / 2,
        run_agent(&models, &tools, &worker.prices, agent_task, limits, &mut checkpoint),
    )
    .await;
    let (lost, cancelled) = (checkpoint.lost, checkpoint.cancelled);
    let report = match run {
        Ok(report) => report,
        // What was recorded stays recorded; the next delivery resumes from it.
        Err(_) => Report {
            outcome: Outcome::Interrupted(TaskError::new("deadline", "the worker ran out of time")),
            steps: task.step,
            usage: task.usage,
            usage_by_model: task.usage_by_model.clone(),
            model: task.model.clone(),
            new_calls: 0,
        },
    };
    let usage = report.usage;
    let usage_by_model = report.usage_by_model.clone();

    let finish = |status, result, error| Finish {
        status,
        result,
        error,
        step: report.steps,
        usage,
        usage_by_model: usage_by_model.clone(),
        model: report.model.clone(),
        now: agentq::now(),
    };
    let (write, disposition) = match report.outcome.clone() {
        Outcome::Abandoned(_) if cancelled => {
            tracing::info!("cancel requested: stopping at this step boundary");
            (Some(finish(TaskStatus::Cancelled, None, Some(cancelled_error()))), Disposition::Done)
        }
        Outcome::Succeeded(result) => (Some(finish(TaskStatus::Succeeded, Some(result), None)), Disposition::Done),
        Outcome::Failed(error) => (Some(finish(TaskStatus::Failed, None, Some(error))), Disposition::Done),
        Outcome::Interrupted(error) if last_delivery => {
            tracing::error!(code = %error.code, detail = %error.message, receive_count, "last delivery and the task cannot finish: failing it; the message goes to the dead-letter queue");
            // Users get the deployment's words; the provider's error stays in the log.
            let error = match error.code.as_str() {
                "models_unavailable" => TaskError::new("models_unavailable", worker.unavailable_message.clone()),
                _ => error,
            };
            // Dead-letter it now, not after the heartbeat's hiding time.
            heartbeat.hide_for(Duration::ZERO).await;
            (Some(finish(TaskStatus::Failed, None, Some(error))), Disposition::Retry)
        }
        Outcome::Interrupted(error) => {
            let delay = match error.code.as_str() {
                "models_unavailable" => worker.retry_delay_for(receive_count),
                // Out of time, not out of luck: the next delivery may start at once.
                _ => Duration::ZERO,
            };
            tracing::warn!(code = %error.code, detail = %error.message, receive_count, retry_in_s = delay.as_secs(), steps = report.steps, "task interrupted; giving it back to the queue");
            match worker.store.release(id, &lease, &error, agentq::now()).await {
                Ok(()) => {}
                // A cancel arrived meanwhile: end it now rather than run it again.
                Err(StoreError::Conflict) => {
                    let f = finish(TaskStatus::Cancelled, None, Some(cancelled_error()));
                    return write_finish(worker, &task, &lease, &f, started, Disposition::Done).await;
                }
                Err(e) => log_store_error("could not release the task; its lease will expire", e),
            }
            heartbeat.hide_for(delay).await;
            (None, Disposition::Retry)
        }
        Outcome::Abandoned(why) if lost => {
            tracing::warn!(reason = %why, "lease lost to another delivery; stopping without writing");
            (None, Disposition::Done)
        }
        Outcome::Abandoned(why) => {
            tracing::error!(reason = %why, "could not record progress; retrying later");
            (None, Disposition::Retry)
        }
    };
    let Some(finish) = write else { return disposition };
    write_finish(worker, &task, &lease, &finish, started, disposition).await
}

/// Writes a terminal state; what SQS is told depends on whether the write held.
async fn write_finish(
    worker: &Worker,
    task: &TaskRecord,
    lease: &Lease,
    finish: &Finish,
    started: Instant,
    disposition: Disposition,
) -> Disposition {
    match worker.store.finish(task, lease, finish).instrument(tracing::info_span!("store.finish")).await {
        Ok(()) => {
            let error_code = finish.error.as_ref().map(|e| e.code.as_str());
            let duration_ms = started.elapsed().as_millis() as u64;
            // From accepted to finished, across every delivery: what the client waited.
            let total_ms = (finish.now - task.created_at).whole_milliseconds().max(0) as u64;
            tracing::info!(
                status = %finish.status,
                iterations = finish.step,
                cost_usd = finish.usage.cost_usd(),
                duration_ms,
                total_ms,
                error_code,
                "task finished"
            );
            metrics::record()
                .dimension("status", finish.status.as_str())
                .value("TasksFinished", 1.0, Unit::Count)
                .value("TaskDurationMs", total_ms as f64, Unit::Milliseconds)
                .value("TaskCostUsd", finish.usage.cost_usd(), Unit::None)
                .value("TaskIterations", f64::from(finish.step), Unit::Count)
                .property("tenant_id", task.tenant_id.as_str())
                .property("task_id", task.task_id.to_string())
                .property("error_code", error_code)
                .emit();
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

/// Keeps a held message out of sight until shortly after the invocation's deadline.
#[derive(Clone, Copy)]
struct Heartbeat<'a> {
    requeue: &'a dyn Requeue,
    record: &'a SqsMessage,
    deadline: Deadline,
    slack: Duration,
}

impl Heartbeat<'_> {
    async fn beat(&self) {
        let left = self.deadline.instant.saturating_duration_since(Instant::now());
        self.hide_for(left + self.slack).await;
    }

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

/// Records each step, writes progress, renews the lease and the message's invisibility;
/// notices when the lease was lost or a cancel requested.
struct StoreCheckpoint<'a> {
    store: &'a dyn WorkerStore,
    id: TaskId,
    lease: Lease,
    lease_until: OffsetDateTime,
    heartbeat: Heartbeat<'a>,
    lost: bool,
    /// A client asked to cancel; the run stopped for it.
    cancelled: bool,
}

#[async_trait]
impl Checkpoint for StoreCheckpoint<'_> {
    async fn model_step(&mut self, step: &ModelStep, report: &Report) -> Result<(), anyhow::Error> {
        match self
            .store
            .record_model_step(self.id, &self.lease, step)
            .instrument(tracing::info_span!("store.record_step"))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                self.lost = true;
                anyhow::bail!("the lease is no longer ours");
            }
            Err(e) => return Err(anyhow::Error::from(e).context("recording a step")),
        }
        let progress = Progress {
            step: step.step,
            usage: report.usage,
            usage_by_model: report.usage_by_model.clone(),
            model: Some(step.model.clone()),
            lease_until: self.lease_until,
            now: agentq::now(),
        };
        let ack = match self
            .store
            .progress(self.id, &self.lease, &progress)
            .instrument(tracing::info_span!("store.progress"))
            .await
        {
            Ok(ack) => ack,
            Err(StoreError::Conflict) => {
                self.lost = true;
                anyhow::bail!("the lease is no longer ours");
            }
            Err(e) => return Err(anyhow::Error::from(e).context("writing progress")),
        };
        self.heartbeat.beat().await;
        if ack == StepAck::CancelRequested {
            self.cancelled = true;
            anyhow::bail!("the client asked to cancel the task");
        }
        Ok(())
    }

    async fn tool_result(&self, step: &ToolStep) -> Result<(), anyhow::Error> {
        self.store
            .record_tool_step(self.id, step)
            .instrument(tracing::info_span!("store.record_tool_result"))
            .await
            .map_err(|e| anyhow::Error::from(e).context("recording a tool result"))
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
