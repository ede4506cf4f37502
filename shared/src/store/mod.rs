//! Storage behind small traits, one per kind of access, so a handler's signature says what
//! it may touch: the submit path admits tasks, the status path reads and cancels them, the
//! worker runs them, the front door authenticates and meters tenants.
//!
//! Every state change is a conditional write whose condition states the rule (`status =
//! queued`, `the lease is ours`, `active < max_running`), and every change to a task's
//! terminal state moves the tenant's counters (tasks active, usage per day and month) in the
//! same transaction, so races are decided by the store, not by timing, and counters cannot
//! drift. [`DynamoStore`] is the real adapter; [`MemoryStore`] the in-memory fake for handler
//! tests, with the same rules.

mod dynamodb;
mod memory;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use dynamodb::{DynamoStore, cancelled_error};
pub use memory::MemoryStore;

use crate::steps::{ModelStep, Step, ToolStep};
use crate::task::{TaskError, TaskId, TaskRecord, TaskResult, TaskStatus};
use crate::tenant::{ApiKey, Limits, Tenant};
use crate::usage::Usage;

/// A store call that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's condition did not hold: another writer got there first.
    #[error("the task changed under us (conditional write failed)")]
    Conflict,
    #[error("the task store is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// The right to run a task until `until`, held by the runner named `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: OffsetDateTime,
}

/// What came of trying to claim a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The task is ours to run; the record as it now stands.
    Claimed(Box<TaskRecord>),
    /// No such task.
    NotFound,
    /// Already finished: nothing to do.
    Terminal(TaskStatus),
    /// Another runner holds a live lease on it.
    Leased { until: OffsetDateTime },
}

/// The state written after each step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: u32,
    pub usage: Usage,
    pub usage_by_model: BTreeMap<String, Usage>,
    pub model: Option<String>,
    /// The lease is renewed with every step.
    pub lease_until: OffsetDateTime,
    pub now: OffsetDateTime,
}

/// What the store says after a step is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAck {
    Continue,
    /// A client asked to cancel the task: stop at this step boundary.
    CancelRequested,
}

/// The terminal state a run ends in.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub status: TaskStatus,
    pub result: Option<TaskResult>,
    pub error: Option<TaskError>,
    pub step: u32,
    pub usage: Usage,
    pub usage_by_model: BTreeMap<String, Usage>,
    pub model: Option<String>,
    pub now: OffsetDateTime,
}

/// The tenant limits and idempotency a new task is admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission<'a> {
    /// Tasks the tenant may have queued or running at once.
    pub max_running: u32,
    pub idempotency: Option<Idempotency<'a>>,
}

/// An `Idempotency-Key` and the fingerprint of the request that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What came of admitting a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Created,
    /// The same key and request were seen before: this is the task they created.
    Replayed(TaskId),
    /// The key was used before with a different request.
    KeyReused,
    /// The tenant already has `max` tasks queued or running.
    ConcurrencyLimited {
        max: u32,
    },
}

/// What came of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued: it is `cancelled` now, and no worker will run it.
    Now,
    /// It is running: it will stop at its next step boundary and end `cancelled`.
    Requested,
    /// It had already finished with this status.
    AlreadyFinished(TaskStatus),
    NotFound,
}

/// One page of a tenant's tasks, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    /// Where the next page starts, if there is one.
    pub next: Option<TaskId>,
}

/// A token-bucket answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Until one token is back (when refused).
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// One tenant's usage on one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub date: String,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub usage: Usage,
}

/// The submit path's writes.
#[async_trait]
pub trait TaskCreate: Send + Sync {
    /// Stores a new `queued` task if the tenant is under its cap and the idempotency key (if
    /// any) is fresh, all in one transaction.
    async fn admit(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError>;

    /// `queued` → `failed`, for a task whose message could not be sent: without it the record
    /// would wait for a worker that never comes. Frees the idempotency key for a retry.
    async fn fail_unqueued(
        &self,
        task: &TaskRecord,
        error: &TaskError,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
}

/// Reads for the status path.
#[async_trait]
pub trait TaskRead: Send + Sync {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// The task's recorded steps, in order.
    async fn steps(&self, id: TaskId) -> Result<Vec<Step>, StoreError>;

    /// A tenant's tasks, newest first, `limit` at most, optionally of one status, starting
    /// after `after`.
    async fn list(
        &self,
        tenant: &str,
        status: Option<TaskStatus>,
        limit: usize,
        after: Option<TaskId>,
    ) -> Result<Page, StoreError>;
}

/// Cancellation, for the status path.
#[async_trait]
pub trait TaskCancel: Send + Sync {
    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Cancelled, StoreError>;
}

/// The worker's writes. All but `claim` require the caller's lease to be the current one.
#[async_trait]
pub trait TaskRun: Send + Sync {
    /// Takes a `queued` task, or a `running` one whose lease has expired (its runner died).
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError>;

    async fn progress(&self, id: TaskId, lease: &Lease, progress: &Progress) -> Result<StepAck, StoreError>;

    /// Records a model answer, if `lease` is still the task's. `Conflict` if it is not, or if
    /// the step was already recorded (by a runner that lost its lease).
    async fn record_model_step(&self, id: TaskId, lease: &Lease, step: &ModelStep) -> Result<(), StoreError>;

    /// Records a tool result; a result already recorded for that call is kept.
    async fn record_tool_step(&self, id: TaskId, step: &ToolStep) -> Result<(), StoreError>;

    /// Writes the terminal state and moves the tenant's counters, in one transaction.
    async fn finish(&self, task: &TaskRecord, lease: &Lease, finish: &Finish) -> Result<(), StoreError>;

    /// `running` → `queued`, giving the task back for the next delivery to run, noting why.
    /// Fails with `Conflict` if a cancel was requested meanwhile (finish it `cancelled`).
    async fn release(&self, id: TaskId, lease: &Lease, why: &TaskError, now: OffsetDateTime) -> Result<(), StoreError>;
}

/// What the dead-letter sweeper and the redrive command do to tasks.
#[async_trait]
pub trait TaskDeadLetter: Send + Sync {
    /// A task whose message was dead-lettered: if it has not ended, it ends `failed` with
    /// `error`. Returns whether it changed.
    async fn fail_undelivered(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// A redriven task: if it ended `failed`, it is `queued` again. Returns whether it changed.
    async fn requeue(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError>;
}

/// A cheap call that proves the store answers, for `/ready`.
#[async_trait]
pub trait StorePing: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Looking up who is calling.
#[async_trait]
pub trait TenantRead: Send + Sync {
    /// The key with this hash, revoked or not.
    async fn api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError>;
}

/// Administration of tenants and keys (the `agentq keys` commands).
#[async_trait]
pub trait TenantAdmin: TenantRead {
    /// Creates the tenant, or updates its limits.
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// Every key, or one tenant's.
    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>, StoreError>;
    /// Marks the key revoked; `None` if there is no such key.
    async fn revoke_key(&self, key_id: &str, now: OffsetDateTime) -> Result<Option<ApiKey>, StoreError>;
}

/// The per-tenant token bucket, shared by every function instance.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn take(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<RateDecision, StoreError>;
}

/// What tenants have spent.
#[async_trait]
pub trait UsageRead: Send + Sync {
    /// Spend in the UTC calendar month `YYYY-MM`, in nano-dollars.
    async fn month_cost(&self, tenant: &str, month: &str) -> Result<u64, StoreError>;
    /// Usage per day, `from` to `to` inclusive (`YYYY-MM-DD`), days with none left out.
    async fn days(&self, tenant: &str, from: &str, to: &str) -> Result<Vec<DayUsage>, StoreError>;
}

/// `YYYY-MM-DD` of a time, UTC.
pub fn day_of(t: OffsetDateTime) -> String {
    let d = t.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `YYYY-MM` of a time, UTC.
pub fn month_of(t: OffsetDateTime) -> String {
    day_of(t)[..7].to_owned()
}

/// The token bucket's arithmetic, shared by both stores: refill `tokens` (as of `updated_ms`)
/// to `now_ms`, then take one if there is one. Returns the decision and the new level.
pub fn bucket_take(limits: &Limits, tokens: f64, updated_ms: i64, now_ms: i64) -> (RateDecision, f64) {
    let rate = limits.rate_per_sec.max(1e-9);
    let burst = f64::from(limits.burst.max(1));
    let elapsed = (now_ms - updated_ms).max(0) as f64 / 1000.0;
    let level = (tokens + elapsed * rate).min(burst);
    let allowed = level >= 1.0;
    let after = if allowed { level - 1.0 } else { level };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let decision = RateDecision {
        allowed,
        remaining: after.floor() as u32,
        retry_after: if allowed { Duration::ZERO } else { secs((1.0 - level) / rate) },
        reset: secs((burst - after) / rate),
    };
    (decision, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32) -> Limits {
        Limits { rate_per_sec: rate, burst, ..Limits::default() }
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses_until_it_refills() {
        let l = limits(2.0, 3);
        let mut tokens = 3.0;
        for left in [2, 1, 0] {
            let (d, t) = bucket_take(&l, tokens, 0, 0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tokens = t;
        }
        let (d, _) = bucket_take(&l, tokens, 0, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(500));
        let (d, _) = bucket_take(&l, tokens, 0, 500);
        assert!(d.allowed, "half a second refills one token at 2/s");
    }

    #[test]
    fn refills_never_exceed_the_burst() {
        let (d, t) = bucket_take(&limits(1.0, 5), 0.0, 0, 3_600_000);
        assert!(d.allowed);
        assert_eq!(t, 4.0);
    }

    #[test]
    fn days_and_months_are_utc() {
        let t = time::macros::datetime!(2026-11-30 23:30 -02:00);
        assert_eq!(day_of(t), "2026-12-01");
        assert_eq!(month_of(t), "2026-12");
    }
}
