//! The reconciler: the net under "every accepted task finishes". Every minute it reads the
//! open tasks that are *due* (`queued` or `running` and unchanged past their grace period:
//! longer than `AGENTQ_RECONCILE_AFTER_SECS` since they were accepted or handed off, or since
//! their lease ran out) and, for each:
//!
//! - over the deployment's task limits (started too often, running too long, waiting too
//!   long): ends it `failed` with the limit's code;
//! - waiting for decisions past its timeout (`waiting_for_input`): rejects its pending tool
//!   calls on the client's behalf and queues it again, so the model reads why and goes on;
//! - `running` under a live lease: at work, looked at again a grace period past its lease;
//! - otherwise sends its message again (its first one may never have been sent, if the
//!   submit died between its two writes, or may have been lost) and looks again one grace
//!   period later. A duplicate is harmless: the worker's claim runs a task once.
//!
//! Then it starts held tasks where their tenants have free slots (the net under the worker's
//! own start at each task's end), and compares each tenant's running count with its open tasks
//! and repairs a count that drifted, once it has been still for a while (the index it counts
//! from may lag).

use std::sync::Arc;
use std::time::Duration;

use agentq::domain::approval::Decision;
use agentq::domain::task::TaskStatus;
use agentq::domain::task::{TaskLimits, TaskMessage};
use agentq::observe::metrics::{self, Unit};
use agentq::queue::TaskQueue;
use agentq::runtime::config::Config;
use agentq::store::{StoreError, TaskCreate, TaskDeadLetter, TaskInput, TaskRead, TaskReconcile};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// What the reconciler reads and writes.
pub trait ReconcileStore: TaskReconcile + TaskRead + TaskDeadLetter + TaskInput + TaskCreate {}
impl<T: TaskReconcile + TaskRead + TaskDeadLetter + TaskInput + TaskCreate> ReconcileStore for T {}

/// The reconciler's settings, read once from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The grace period: how long before a task that has not moved is looked at again.
    pub reconcile_after: Duration,
    pub limits: TaskLimits,
    /// How long a tenant's running count must have been still before it is repaired.
    pub quiet: Duration,
    /// Due tasks handled per run; the rest wait for the next.
    pub batch: usize,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Self { reconcile_after: c.reconcile_after, limits: c.task_limits, quiet: Duration::from_secs(30), batch: 500 }
    }
}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Reconciler {
    pub store: Arc<dyn ReconcileStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub settings: Settings,
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Due tasks read.
    pub due: usize,
    /// Messages sent again.
    pub resent: usize,
    /// Running tasks under a live lease, looked at again past it.
    pub deferred: usize,
    /// Tasks ended over a limit.
    pub ended: usize,
    /// Waits for a decision that timed out: their calls rejected, the tasks queued again.
    pub timed_out: usize,
    /// Running counts set to the truth.
    pub repaired: usize,
    /// Held tasks started (their tenants had free slots).
    pub started_held: usize,
}

/// One pass: the due tasks, then the running counts.
pub async fn reconcile(r: &Reconciler, now: OffsetDateTime) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let due = r.store.due(now, r.settings.batch).await?;
    report.due = due.len();
    for id in due {
        let Some(task) = r.store.get(id).await? else { continue };
        if task.status.is_terminal() {
            continue;
        }
        if task.status == TaskStatus::WaitingForInput {
            if time_out(r, &task, now).await? {
                report.timed_out += 1;
            }
            continue;
        }
        // A run under a live lease is at work, not stranded: looked at again a grace period
        // past its lease. (The claim leaves the due time alone, sparing the index a write a
        // task; only a run still going when its task falls due costs this one.)
        if task.status == TaskStatus::Running && r.store.put_off_while_leased(id, now).await? {
            report.deferred += 1;
            continue;
        }
        if let Some(error) = r.settings.limits.exceeded_by(&task, now) {
            if r.store.fail_abandoned(id, &error, now).await? {
                tracing::warn!(task_id = %id, code = %error.code, "ended a task over the deployment's limits");
                report.ended += 1;
            }
            continue;
        }
        let message = TaskMessage::of(&task);
        if let Err(e) = r.queue.enqueue(&message, &Default::default()).await {
            // Looked at again next run.
            tracing::error!(task_id = %id, error = format!("{:#}", e.0), "could not send a stranded task's message");
            continue;
        }
        // Only now, so a task whose send failed stays due.
        r.store.reschedule(&task, now + r.settings.reconcile_after, true, now).await?;
        tracing::warn!(
            task_id = %id,
            tenant_id = %task.tenant_id,
            status = %task.status,
            resends = task.resends + 1,
            idle_s = (now - task.updated_at).whole_seconds(),
            "sent a stranded task's message again"
        );
        report.resent += 1;
    }
    // The net under held tasks: a slot freed by a cancel, or by a runner that died before it
    // started the next in line.
    for tenant in r.store.tenants().await? {
        report.started_held +=
            agentq::usecases::held::start_held(r.store.as_ref(), r.queue.as_ref(), &tenant, false, now).await;
    }
    for repair in r.store.repair_counts(r.settings.quiet, now).await? {
        if repair.repaired {
            report.repaired += 1;
        }
        tracing::warn!(
            tenant_id = %repair.tenant,
            counted = repair.counted,
            open = repair.open,
            repaired = repair.repaired,
            "a tenant's running count differs from its open tasks"
        );
    }
    Ok(report)
}

/// A task whose wait for decisions is over: every pending call is rejected on the client's
/// behalf and the task goes on (the model reads why). Returns whether this run did it.
async fn time_out(
    r: &Reconciler,
    task: &agentq::domain::task::TaskRecord,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let (Some(pending), Some(until)) = (task.pending.as_deref(), task.waiting_until) else { return Ok(false) };
    if until > now {
        return Ok(false);
    }
    let waited = (until - task.updated_at).whole_seconds().max(0) as u64;
    let decisions = Decision::timed_out(pending, waited, now);
    let resumed = agentq::usecases::approvals::resume(
        r.store.as_ref(),
        r.queue.as_ref(),
        task,
        &decisions,
        &Default::default(),
        now,
    )
    .await;
    match resumed {
        Ok(()) => {
            tracing::warn!(task_id = %task.task_id, tenant_id = %task.tenant_id, calls = pending.len(), "nobody decided in time: rejected the pending tool calls");
            Ok(true)
        }
        // Decided or cancelled meanwhile.
        Err(StoreError::Conflict) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Handles the scheduled event.
pub async fn handle(r: &Reconciler, _event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let report = reconcile(r, agentq::now()).await?;
    metrics::record()
        .value("ReconcileDue", report.due as f64, Unit::Count)
        .value("ReconcileResent", report.resent as f64, Unit::Count)
        .value("ReconcileEnded", report.ended as f64, Unit::Count)
        .value("ApprovalsTimedOut", report.timed_out as f64, Unit::Count)
        .value("ReconcileRepairedCounts", report.repaired as f64, Unit::Count)
        .emit();
    Ok(json!({
        "due": report.due,
        "resent": report.resent,
        "deferred": report.deferred,
        "ended": report.ended,
        "timed_out": report.timed_out,
        "started_held": report.started_held,
        "repaired": report.repaired,
    }))
}
