//! The scheduler: every minute (EventBridge Scheduler, `cron(* * * * ? *)`; locally the
//! stand-in's clock) it reads the active schedules whose next tick has come and, for each,
//! creates the tick's task as a submit would (docs/schedules.md):
//!
//! - `overlap: skip` and the task of the schedule's last tick still open: the tick is skipped;
//! - the tenant's monthly budget spent, or its running cap reached (with `over_cap: reject`),
//!   or the task no longer valid (the deployment's models or tools changed): skipped, with why;
//! - otherwise the task is admitted under the idempotency key `schedule:<id>:<tick>`, so a
//!   run that dies after creating it and runs again finds the same task, never a second.
//!
//! Then the tick is recorded on the schedule and the schedule moves to its first tick after
//! now, in one conditional write: ticks missed while nothing ran are not run one by one. A
//! schedule that cannot be handled now (the store failing) stays due and is tried next minute.

use std::sync::Arc;

use agentq::domain::schedule::{Overlap, ScheduleRecord, ScheduleRun, ScheduleState, Skipped, check_stored_task};
use agentq::domain::task::{Allowed, TaskRecord};
use agentq::observe::metrics::{self, Unit};
use agentq::queue::TaskQueue;
use agentq::store::{Admission, Idempotency, ScheduleStore, Slot, StoreError, TenantRead, UsageRead, month_of};
use agentq::usecases::admit::{self, Accepted, AdmitStore, Refused};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// What the scheduler reads and writes.
pub trait SchedulerStore: AdmitStore + ScheduleStore + TenantRead + UsageRead {}
impl<T: AdmitStore + ScheduleStore + TenantRead + UsageRead> SchedulerStore for T {}

/// Due schedules handled per run; the rest wait for the next.
const BATCH: usize = 200;
/// Writes of one tick's record that lose to a pause or resume before giving up.
const WRITE_ATTEMPTS: usize = 5;

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Scheduler {
    pub store: Arc<dyn SchedulerStore>,
    pub queue: Arc<dyn TaskQueue>,
    /// The models and tools a task may name (checked again at every tick).
    pub allowed: Allowed,
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Due schedules read.
    pub due: usize,
    /// Tasks created.
    pub created: usize,
    /// Ticks whose task an earlier or concurrent run had created (found by its key).
    pub found: usize,
    /// Ticks skipped, each with its reason recorded on the schedule.
    pub skipped: usize,
    /// Schedules left due after an error, for the next run.
    pub failed: usize,
}

/// One pass over the due schedules.
pub async fn dispatch(s: &Scheduler, now: OffsetDateTime) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let due = s.store.due_schedules(now, BATCH).await?;
    report.due = due.len();
    for (tenant, id) in due {
        let Some(schedule) = s.store.schedule(&tenant, &id).await? else { continue };
        let Some(tick) = schedule.next_run_at.filter(|t| *t <= now && schedule.state == ScheduleState::Active) else {
            continue;
        };
        let (run, new) = match tick_once(s, &schedule, tick, now).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(schedule_id = %id, tenant_id = %tenant, error = format!("{e:#}"), "could not run a schedule's tick; it stays due");
                report.failed += 1;
                continue;
            }
        };
        match &run.skipped {
            Some(why) => {
                tracing::info!(schedule_id = %id, tenant_id = %tenant, code = %why.code, "schedule tick skipped");
                report.skipped += 1;
            }
            None if new => {
                tracing::info!(schedule_id = %id, tenant_id = %tenant, task_id = ?run.task_id, "schedule tick created its task");
                report.created += 1;
            }
            None => report.found += 1,
        }
        if let Err(e) = record(s, schedule, run, now).await {
            tracing::error!(schedule_id = %id, error = format!("{e:#}"), "could not record a schedule's tick; the next run finds its task again");
            report.failed += 1;
        }
    }
    Ok(report)
}

/// Records `run` on the schedule and moves it on, reading it again if a pause, resume or
/// another dispatcher wrote it meanwhile.
async fn record(
    s: &Scheduler,
    mut schedule: ScheduleRecord,
    run: ScheduleRun,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    for _ in 0..WRITE_ATTEMPTS {
        if schedule.runs.iter().any(|r| r.at == run.at) {
            return Ok(());
        }
        schedule.record(run.clone(), now);
        match s.store.update_schedule(&schedule).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict) => {
                let Some(fresh) = s.store.schedule(&schedule.tenant_id, &schedule.schedule_id).await? else {
                    return Ok(()); // Deleted meanwhile.
                };
                schedule = fresh;
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the schedule kept changing under the write")
}

/// A tick that created no task, and why.
fn skipped(at: OffsetDateTime, code: &str, message: impl Into<String>) -> anyhow::Result<(ScheduleRun, bool)> {
    let skipped = Some(Skipped { code: code.to_owned(), message: message.into() });
    Ok((ScheduleRun { at, task_id: None, skipped }, false))
}

/// Runs one tick: its task (and whether this run created it), or why it has none. An error
/// leaves the schedule due.
async fn tick_once(
    s: &Scheduler,
    schedule: &ScheduleRecord,
    tick: OffsetDateTime,
    now: OffsetDateTime,
) -> anyhow::Result<(ScheduleRun, bool)> {
    if schedule.overlap == Overlap::Skip
        && let Some(last) = schedule.last_task()
        && let Some(task) = s.store.get(last).await?
        && !task.status.is_terminal()
    {
        return skipped(tick, "overlap", format!("the task of an earlier tick, {last}, is still {}", task.status));
    }
    let Some(tenant) = s.store.tenant(&schedule.tenant_id).await? else {
        return skipped(tick, "tenant_missing", "the schedule's tenant no longer exists");
    };
    if let Some(budget) = tenant.limits.monthly_budget_nanos
        && s.store.month_cost(&tenant.tenant_id, &month_of(now)).await? >= budget
    {
        return skipped(
            tick,
            "budget_exhausted",
            format!("the tenant's monthly budget of ${} is spent", budget as f64 / 1e9),
        );
    }
    let request = match check_stored_task(&schedule.task, &s.allowed) {
        Ok(request) => request,
        Err(errors) => {
            let why: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
            return skipped(tick, "invalid_task", why.join("; "));
        }
    };
    let mut task = TaskRecord::new(request, &tenant.tenant_id, now);
    task.schedule_id = Some(schedule.schedule_id.clone());
    let key = schedule.tick_key(tick);
    // The key names the schedule and the tick, and a schedule's task never changes: the
    // schedule's id is as good a fingerprint of the request as any.
    let admission = Admission {
        max_running: tenant.limits.max_running,
        idempotency: Some(Idempotency { key: &key, request_hash: &schedule.schedule_id }),
        slot: Slot::Take,
    };
    let run = |task: &TaskRecord| ScheduleRun { at: tick, task_id: Some(task.task_id), skipped: None };
    match admit::admit_and_send(s.store.as_ref(), s.queue.as_ref(), task, admission, &tenant.limits).await {
        Ok(Accepted::Sent(task) | Accepted::Held(task)) => Ok((run(&task), true)),
        Ok(Accepted::Replayed(task)) => Ok((run(&task), false)),
        Err(Refused::ConcurrencyLimited { max }) => {
            skipped(tick, "concurrency_limited", format!("the tenant already has {max} tasks queued or running"))
        }
        Err(Refused::NotQueued(_)) => skipped(tick, "enqueue_failed", "the task could not be queued"),
        Err(e @ (Refused::KeyReused | Refused::Store(_))) => Err(e.into()),
    }
}

/// Handles the scheduled event.
pub async fn handle(s: &Scheduler, _event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let report = dispatch(s, agentq::now()).await?;
    metrics::record()
        .value("SchedulesDue", report.due as f64, Unit::Count)
        .value("ScheduledTasksCreated", report.created as f64, Unit::Count)
        .value("ScheduleTicksSkipped", report.skipped as f64, Unit::Count)
        .value("ScheduleTicksFailed", report.failed as f64, Unit::Count)
        .emit();
    Ok(json!({
        "due": report.due,
        "created": report.created,
        "found": report.found,
        "skipped": report.skipped,
        "failed": report.failed,
    }))
}
