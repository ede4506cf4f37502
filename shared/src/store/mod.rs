//! Storage behind small traits, one per kind of access, so a handler's signature says what
//! it may touch: the submit path admits tasks, the status path reads and cancels them, the
//! worker runs them, the front door authenticates and meters tenants.
//!
//! Every state change is a conditional write whose condition states the rule (`status =
//! queued`, `the lease is ours`, `active < max_running`), and every change to a task's
//! terminal state moves the tenant's counters (tasks active, usage per day and month) in the
//! same transaction, so races are decided by the store, not by timing, and counters cannot
//! drift. A task remembers how much of its usage the counters have seen (`counted`), so a task
//! that ends more than once (failed, redriven, succeeded) adds each token and nano-dollar once.
//!
//! Every task that has not ended is in the *open* set with a time it is due to be looked at
//! (`due_at`: its creation, its lease's end, its hand-off, plus a grace period). The
//! reconciler reads the tasks that are due: those are the ones whose message may be lost.
//!
//! [`DynamoStore`] is the real adapter; [`MemoryStore`] the in-memory fake for handler tests,
//! with the same rules; [`conformance`] is the one suite both must pass.

pub mod blobs;
pub mod conformance;
mod dynamodb;
mod memory;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use dynamodb::{DynamoStore, inserted_events};
pub use memory::MemoryStore;

use crate::domain::approval::{Decision, PendingCall};
use crate::domain::batch::BatchRecord;
use crate::domain::events::TaskEvent;
use crate::domain::fork::ForkRef;
use crate::domain::schedule::ScheduleRecord;
use crate::domain::steps::{ModelStep, Spend, Step, ToolStep};
use crate::domain::task::{TaskError, TaskId, TaskRecord, TaskResult, TaskStatus};
use crate::domain::tenant::{ApiKey, Limits, Tenant};
use crate::domain::usage::Usage;
use crate::domain::webhooks::{Attempt, Endpoint};

/// A store call that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's condition did not hold: another writer got there first.
    #[error("the task changed under us (conditional write failed)")]
    Conflict,
    /// Other writers kept the same items busy through every retry; the caller may try again.
    #[error("the task store is busy with concurrent writes to the same items")]
    Contended,
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

/// The state written with each step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub spend: Spend,
    pub now: OffsetDateTime,
    /// The `task.step` event the step appends to the task's log.
    pub event: TaskEvent,
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
    pub spend: Spend,
    pub now: OffsetDateTime,
    /// The terminal event (`task.succeeded`, …) the finish appends to the task's log.
    pub event: TaskEvent,
    /// The run's last model answer, not yet recorded, and its `task.step` event (the seq
    /// before `event`'s): recorded with the end, in the same write. An answer that ends the
    /// run is recorded this way, one transaction where a step's and the end's were two.
    /// `spend` counts it.
    pub last_step: Option<(ModelStep, TaskEvent)>,
}

/// How long an open task may go unchanged before the reconciler looks at it: past its
/// creation or hand-off while `queued`, past its lease's end while `running`.
pub const DEFAULT_RECONCILE_AFTER: Duration = Duration::from_secs(15 * 60);

/// The tenant limits and idempotency a new task is admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission<'a> {
    /// Tasks the tenant may have queued or running at once.
    pub max_running: u32,
    pub idempotency: Option<Idempotency<'a>>,
    /// The task's running slot: taken by admission, or looked at already with the caller's
    /// rate limit ([`RateLimiter::take_with_slot`]).
    pub slot: Slot,
}

/// A new task's running slot, as admission finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slot {
    /// Admission takes one, if the tenant has one free.
    #[default]
    Take,
    /// The caller took one for this task: admission keeps it for the task it creates and
    /// gives it back otherwise (a replay, a reused key, a failed write).
    Taken,
    /// The caller found the tenant at its cap a moment ago: admission does not ask again.
    Full,
}

/// A submit's rate-limit answer and, if it was allowed, whether a running slot came with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub rate: RateDecision,
    /// [`Slot::Taken`] or [`Slot::Full`] when allowed; [`Slot::Take`] when refused.
    pub slot: Slot,
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

/// One page of a tenant's tasks, newest first. The records are summaries: a result kept in
/// S3 is not fetched (its text is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    /// Where the next page starts, if there is one: the last task examined, which with a
    /// status filter may be one the page does not show.
    pub next: Option<TaskId>,
}

/// Most index entries one list call examines, whatever its filter: a page of a rare status
/// comes back short (or empty) with a cursor rather than reading a tenant's whole history.
pub const LIST_EXAMINE_LIMIT: usize = 300;

/// One page of a task's events, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<TaskEvent>,
    /// The `seq` to read after for the next page, when more follow.
    pub next: Option<u32>,
}

/// One page of a task's recorded steps, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPage {
    pub steps: Vec<Step>,
    /// The sort key of the last step returned, when more follow.
    pub next: Option<String>,
}

/// The most a page of steps holds, serialized: well under Lambda's 6 MB response, with room
/// for the envelope. A single larger step is returned alone.
pub const STEP_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A rate-limit answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Whole requests left in the burst after this one.
    pub remaining: u32,
    /// Until one request is allowed again (when refused).
    pub retry_after: Duration,
    /// Until the whole burst is available again.
    pub reset: Duration,
}

/// A tenant's running count, compared with the truth (its open tasks), and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRepair {
    pub tenant: String,
    /// What the counter said.
    pub counted: i64,
    /// Tasks of the tenant queued or running.
    pub open: i64,
    /// The counter was set to `open`. It is left alone while the tenant's tasks are changing.
    pub repaired: bool,
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
    /// The day's cost by the model that answered, nano-dollars.
    #[serde(default)]
    pub cost_by_model: std::collections::BTreeMap<String, u64>,
}

/// The submit path's writes.
#[async_trait]
pub trait TaskCreate: Send + Sync {
    /// Stores a new `queued` task if the tenant is under its cap and the idempotency key (if
    /// any) is fresh, all in one transaction.
    async fn admit(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError>;

    /// Stores a new `queued` task *held* in its tenant's line rather than counted against its
    /// cap (a tenant over its cap with `over_cap: hold`): no message is sent until
    /// [`release_held`](Self::release_held) starts it, in submission order.
    async fn hold(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError>;

    /// Starts the tenant's oldest held tasks while it has free slots: each leaves the line and
    /// counts against the cap, atomically. Returns them: their messages are the caller's to
    /// send (a message that fails to send is resent by the reconciler). `holding_only` skips a
    /// tenant that does not hold work now (one read, not three, at every task's end); the
    /// reconciler looks at every line, so a tenant switched back to `reject` still empties it.
    async fn release_held(
        &self,
        tenant: &str,
        holding_only: bool,
        now: OffsetDateTime,
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// Lists `fork` on its parent's record (the first [`MAX_LISTED_FORKS`]; later ones are
    /// not listed).
    ///
    /// [`MAX_LISTED_FORKS`]: crate::domain::fork::MAX_LISTED_FORKS
    async fn note_fork(&self, parent: TaskId, fork: &ForkRef) -> Result<(), StoreError>;

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
    /// The task, without a prompt kept in S3 (its text is empty): what every view needs.
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// The task with its prompt, wherever it is kept (a fork copies it).
    async fn get_with_prompt(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// The task's recorded steps, in order: all of them (the worker's history).
    async fn steps(&self, id: TaskId) -> Result<Vec<Step>, StoreError>;

    /// A page of the task's steps after the sort key `after`: at most `limit` steps and
    /// [`STEP_PAGE_BYTES`] of them (at least one).
    async fn step_page(&self, id: TaskId, after: Option<&str>, limit: usize) -> Result<StepPage, StoreError>;

    /// The task's events after `after` (a `seq`), at most `limit`.
    async fn events(&self, id: TaskId, after: u32, limit: usize) -> Result<EventPage, StoreError>;

    /// A tenant's tasks, newest first, `limit` at most, optionally of one status, starting
    /// after `after`, examining at most [`LIST_EXAMINE_LIMIT`] entries.
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
    /// A claim reserves the seq of its run's `task.started` event: the claimed record's
    /// `events` (see [`record_started`](Self::record_started)). It leaves the task's due time
    /// where its queueing put it: a run that outlasts it is put off by the reconciler
    /// ([`TaskReconcile::put_off_while_leased`]).
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError>;

    /// Records a model answer and the run's progress with it (what it has spent), if `lease`
    /// is still the task's: the progress first, under the lease, then the answer. `Conflict`
    /// if the lease is not the caller's, or if the step was already recorded (by a runner that
    /// lost its lease). The answer is recorded even when a cancel was requested meanwhile (it
    /// is paid for); the ack says to stop. A runner that dies between the two leaves progress
    /// without its answer, which the next run asks for again (its spend is rebuilt from the
    /// recorded steps); readers of the steps keep the first answer of a step number.
    async fn record_model_step(
        &self,
        id: TaskId,
        lease: &Lease,
        step: &ModelStep,
        progress: &Progress,
    ) -> Result<StepAck, StoreError>;

    /// Writes a run's `task.started` event at the seq its claim reserved. Only that claim's
    /// runner holds the seq, so this is one plain write, never over an event already there
    /// (`Conflict`); a runner that dies before it leaves that seq unused, which readers of the
    /// log (they page by seq) pass over.
    async fn record_started(&self, id: TaskId, event: &TaskEvent) -> Result<(), StoreError>;

    /// Records a tool result; a result already recorded for that call is kept.
    async fn record_tool_step(&self, id: TaskId, step: &ToolStep) -> Result<(), StoreError>;

    /// Records the steps a fork inherits from its parent under the fork's id; a step already
    /// recorded is kept (a fork's first run may have died while copying).
    async fn inherit(&self, id: TaskId, steps: &[Step]) -> Result<(), StoreError>;

    /// Writes the terminal state and moves the tenant's counters, in one transaction, with
    /// the run's last answer if `finish` carries one (`Conflict` if it was recorded already).
    async fn finish(&self, task: &TaskRecord, lease: &Lease, finish: &Finish) -> Result<(), StoreError>;

    /// `running` → `queued`, giving the task back for the next delivery to run, noting why.
    /// Fails with `Conflict` if a cancel was requested meanwhile (finish it `cancelled`).
    async fn release(&self, id: TaskId, lease: &Lease, why: &TaskError, now: OffsetDateTime) -> Result<(), StoreError>;

    /// `running` → `queued` until `until`, like [`release`](Self::release), for a task paused by
    /// its tenant's model rate limit: the pause is not counted as one of its attempts, and the
    /// reconciler looks at it only after `until`.
    async fn pause(
        &self,
        id: TaskId,
        lease: &Lease,
        why: &TaskError,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// `running` → `waiting_for_input`: the lease is let go and the task no longer counts
    /// against its tenant's running cap, in one transaction with its event. Fails with
    /// `Conflict` if a cancel was requested meanwhile (finish it `cancelled`) or the lease is
    /// gone.
    async fn wait(&self, task: &TaskRecord, lease: &Lease, wait: &Wait) -> Result<(), StoreError>;
}

/// A run that stops for a person's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub pending: Vec<PendingCall>,
    /// When the pending calls are rejected if nobody has decided.
    pub until: OffsetDateTime,
    /// The `task.waiting_for_input` event.
    pub event: TaskEvent,
    pub now: OffsetDateTime,
}

/// Decisions on a waiting task's calls: the input route and the reconciler's timeout.
#[async_trait]
pub trait TaskInput: Send + Sync {
    /// `waiting_for_input` → `queued`, with `decisions` recorded as steps, `event` appended
    /// and the task counted as running again, atomically, if the task is still as `task`
    /// shows it; `Conflict` if it moved meanwhile (decided by someone else, cancelled).
    async fn resume(
        &self,
        task: &TaskRecord,
        decisions: &[Decision],
        event: &TaskEvent,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
}

/// Ending tasks nobody is running, and giving failed ones another chance: the dead-letter
/// sweeper, the redrive command and the reconciler.
#[async_trait]
pub trait TaskDeadLetter: Send + Sync {
    /// Ends a task that has not ended and that no live lease holds `failed` with `error`, its
    /// usage counted once. Returns whether it changed.
    async fn fail_abandoned(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// A redriven task: if it ended `failed`, it is `queued` again. Returns whether it changed.
    async fn requeue(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError>;
}

/// What the reconciler reads and writes.
#[async_trait]
pub trait TaskReconcile: Send + Sync {
    /// Open tasks due to be looked at by `now` (at most `limit`).
    async fn due(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<TaskId>, StoreError>;

    /// Looks at `task` again at `due` rather than now; `resent` counts a message sent again.
    /// Applies only if the task is still as `task` shows it (status, update time).
    async fn reschedule(
        &self,
        task: &TaskRecord,
        due: OffsetDateTime,
        resent: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// A `running` task whose lease is live by `now` is looked at again a grace period past its
    /// lease's end (a claim leaves the due time alone). `false` if it is not running under a
    /// live lease.
    async fn put_off_while_leased(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError>;

    /// Every tenant's id (the reconciler starts their held tasks).
    async fn tenants(&self) -> Result<Vec<String>, StoreError>;

    /// Compares each tenant's running count with its open tasks, and sets the count to the
    /// truth where they differ and the tenant's count has not moved for `quiet`.
    async fn repair_counts(&self, quiet: Duration, now: OffsetDateTime) -> Result<Vec<CountRepair>, StoreError>;
}

/// One page of a task's delivery attempts, by event, target and time.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptPage {
    pub attempts: Vec<Attempt>,
    /// The sort key of the last attempt returned, when more follow.
    pub next: Option<String>,
}

/// The most endpoints a tenant may register.
pub const MAX_ENDPOINTS: usize = 20;

/// Webhook endpoints, and the record of every delivery attempt.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores the endpoint, or replaces it (a rotated secret).
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError>;
    /// The tenant's endpoints, oldest first.
    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError>;
    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, StoreError>;
    /// Removes the endpoint; whether there was one.
    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Records an attempt to deliver one of `task`'s events (kept as long as the task).
    async fn record_attempt(&self, task: TaskId, attempt: &Attempt) -> Result<(), StoreError>;
    /// A page of the task's attempts after the sort key `after`, at most `limit`.
    async fn attempts(&self, task: TaskId, after: Option<&str>, limit: usize) -> Result<AttemptPage, StoreError>;
}

/// `DLV#000004#wh_…#<ulid>`: an attempt's sort key: by event, then target, then time, so
/// the attempts at one delivery are together and in order.
pub fn attempt_key(attempt: &Attempt) -> String {
    format!("DLV#{:06}#{}#{}", attempt.seq, attempt.target.name(), attempt.id)
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

/// What a tenant's per-minute model limits say of its next model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metered {
    /// Under its limits: the call goes ahead, counted.
    Go,
    /// Over a limit this minute: the call waits until the next minute starts.
    WaitUntil(OffsetDateTime),
}

/// Per-tenant model use in fixed one-minute windows (UTC minutes): calls counted as they
/// start, tokens as they are answered, shared by every worker instance.
#[async_trait]
pub trait ModelMeter: Send + Sync {
    /// Counts a model call of `tenant` at `now` if its minute is under `limits`' requests and
    /// tokens per minute. Tokens are known only after a call, so a call starts while the
    /// minute's tokens are under the limit and may end over it; the next waits.
    async fn take_model_call(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<Metered, StoreError>;

    /// Adds the tokens of a call that started at `at` to its minute.
    async fn count_model_tokens(&self, tenant: &str, tokens: u64, at: OffsetDateTime) -> Result<(), StoreError>;
}

/// The minute (since the epoch, UTC) `t` falls in.
pub fn minute_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60)
}

/// When the minute after `minute` starts.
pub fn minute_start(minute: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(minute * 60).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Whether a minute that has seen `requests` calls and `tokens` tokens has room for one more
/// call under `limits`.
pub fn meter_allows(limits: &Limits, requests: u64, tokens: u64) -> bool {
    limits.requests_per_minute.is_none_or(|max| requests < u64::from(max))
        && limits.tokens_per_minute.is_none_or(|max| tokens < max)
}

/// The per-tenant submit rate limit, shared by every function instance.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn take(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<RateDecision, StoreError>;

    /// A submit's way in: one request of the rate limit and, with it, one of the tenant's
    /// running slots under `limits.max_running`, in one write where the store can (the two
    /// counters share an item). A refused request takes neither; an allowed one at the cap
    /// takes the request only ([`Slot::Full`]). A slot taken here belongs to the task the
    /// caller admits next with [`Slot::Taken`], or is given back with
    /// [`give_slot_back`](Self::give_slot_back) if the request goes no further.
    async fn take_with_slot(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<Entry, StoreError>;

    /// Gives back a slot [`take_with_slot`](Self::take_with_slot) took for a request refused
    /// before admission. Failing that, the count is one too high until the reconciler's
    /// repair: logged, not the caller's error.
    async fn give_slot_back(&self, tenant: &str);

    /// Takes up to `want` requests' worth at once (a batch's items); returns how many the
    /// limit allows now.
    async fn take_up_to(
        &self,
        tenant: &str,
        limits: &Limits,
        want: u32,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError>;
}

/// What came of reserving a batch's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchKey {
    /// The key is this batch's now.
    Reserved,
    /// The same key and request made this batch before.
    Replayed(String),
    /// The key was used with a different request.
    KeyReused,
}

/// Batches: many tasks admitted at once, and the record that lists them.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Stores `tasks` (all of one tenant) `queued`, each with its `task.queued` event, in
    /// order, while the tenant stays under `max_running`; says how many were stored (the
    /// first ones), in a few transactions rather than one per task. A failure before any was
    /// stored is an error; after some, it ends the admission there ([`AdmittedMany::interrupted`]),
    /// so the tasks stored are still answered.
    async fn admit_many(&self, tasks: &[TaskRecord], max_running: u32) -> Result<AdmittedMany, StoreError>;
    /// Reserves `key` for `batch_id` (24 h), or says which batch it made before.
    async fn reserve_batch_key(
        &self,
        tenant: &str,
        key: Idempotency<'_>,
        batch_id: &str,
        now: OffsetDateTime,
    ) -> Result<BatchKey, StoreError>;
    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;
    /// The tenant's batch with this id.
    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError>;
    /// The tasks with these ids (those that exist), without prompts or S3-kept results.
    async fn tasks(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>, StoreError>;
    /// Just the status of each task with these ids (those that exist): a batch's counts.
    async fn statuses(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskStatus)>, StoreError>;
}

/// How far [`BatchStore::admit_many`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmittedMany {
    /// The first this many tasks are stored.
    pub admitted: usize,
    /// The store failed after them: the rest were not stored, whatever their slots.
    pub interrupted: bool,
}

/// Schedules (docs/schedules.md).
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule; `false` if its tenant already has `max` (counted, not locked:
    /// two creates racing at the limit may both pass).
    async fn create_schedule(&self, schedule: &ScheduleRecord, max: usize) -> Result<bool, StoreError>;
    /// The tenant's schedule with this id.
    async fn schedule(&self, tenant: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError>;
    /// The tenant's schedules, by id (so by creation, to the millisecond).
    async fn schedules(&self, tenant: &str) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Writes `schedule` over the version it was read at (`schedule.version`), as version + 1;
    /// [`StoreError::Conflict`] if another write came first or it was deleted.
    async fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StoreError>;
    async fn delete_schedule(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Active schedules whose next tick is at or before `now` (tenant, id), earliest first.
    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<(String, String)>, StoreError>;
}

/// What tenants have spent.
#[async_trait]
pub trait UsageRead: Send + Sync {
    /// Spend in the UTC calendar month `YYYY-MM`, in nano-dollars.
    async fn month_cost(&self, tenant: &str, month: &str) -> Result<u64, StoreError>;
    /// Usage per day, `from` to `to` inclusive (`YYYY-MM-DD`), days with none left out.
    async fn days(&self, tenant: &str, from: &str, to: &str) -> Result<Vec<DayUsage>, StoreError>;
}

/// The error a cancelled task shows.
pub fn cancelled_error() -> TaskError {
    TaskError::new(crate::domain::task::ErrorCode::Cancelled, "the task was cancelled at the client's request")
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

/// The rate limit's arithmetic, shared by both stores: the generic cell rate algorithm, a
/// token bucket kept as one number, the *theoretical arrival time* (TAT, microseconds). A
/// request at `now` is allowed if `max(tat, now) + interval <= now + burst × interval`; the new
/// TAT is then `max(tat, now) + interval`. One number means one atomic conditional update
/// decides each request, with nothing read first: concurrent submits never retry each
/// other's writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Microseconds between two requests at the steady rate.
    pub interval_us: i64,
    /// How far ahead of `now` the TAT may run: the burst, in microseconds.
    pub tolerance_us: i64,
}

impl Gcra {
    pub fn new(limits: &Limits) -> Self {
        let interval_us = (1e6 / limits.rate_per_sec.max(1e-6)).round().max(1.0) as i64;
        Self { interval_us, tolerance_us: interval_us.saturating_mul(i64::from(limits.burst.max(1))) }
    }

    /// How many of `want` requests at `now_us` are allowed, and the TAT after them.
    pub fn decide_many(&self, tat_us: Option<i64>, now_us: i64, want: u32) -> (u32, i64) {
        let from = tat_us.unwrap_or(now_us).max(now_us);
        let room = (now_us.saturating_add(self.tolerance_us) - from).max(0) / self.interval_us;
        let granted = room.min(i64::from(want));
        (granted as u32, from + granted * self.interval_us)
    }

    /// The new TAT if a request at `now_us` is allowed, and the answer to give.
    pub fn decide(&self, tat_us: Option<i64>, now_us: i64) -> (Option<i64>, RateDecision) {
        let from = tat_us.unwrap_or(now_us).max(now_us);
        let next = from.saturating_add(self.interval_us);
        let limit = now_us.saturating_add(self.tolerance_us);
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        if next <= limit {
            let decision = RateDecision {
                allowed: true,
                remaining: ((limit - next) / self.interval_us) as u32,
                retry_after: Duration::ZERO,
                reset: us(next - now_us),
            };
            (Some(next), decision)
        } else {
            let decision =
                RateDecision { allowed: false, remaining: 0, retry_after: us(next - limit), reset: us(from - now_us) };
            (None, decision)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32) -> Limits {
        Limits { rate_per_sec: rate, burst, ..Limits::default() }
    }

    #[test]
    fn a_fresh_limit_allows_its_burst_then_refuses_until_time_passes() {
        let g = Gcra::new(&limits(2.0, 3));
        let mut tat = None;
        for left in [2, 1, 0] {
            let (next, d) = g.decide(tat, 0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tat = next;
        }
        let (next, d) = g.decide(tat, 0);
        assert!(!d.allowed && next.is_none());
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert!(g.decide(tat, 500_000).1.allowed, "half a second frees one request at 2/s");
    }

    #[test]
    fn a_batch_takes_what_is_left_of_the_burst_at_once() {
        let g = Gcra::new(&limits(2.0, 3));
        let (granted, tat) = g.decide_many(None, 0, 10);
        assert_eq!((granted, tat), (3, 1_500_000));
        assert_eq!(g.decide_many(Some(tat), 0, 10).0, 0);
        assert_eq!(g.decide_many(Some(tat), 500_000, 10).0, 1, "half a second frees one");
    }

    #[test]
    fn an_idle_limit_never_saves_more_than_its_burst() {
        let g = Gcra::new(&limits(1.0, 5));
        let (tat, d) = g.decide(Some(0), 3_600_000_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(tat, Some(3_601_000_000));
    }

    #[test]
    fn days_and_months_are_utc() {
        let t = time::macros::datetime!(2026-11-30 23:30 -02:00);
        assert_eq!(day_of(t), "2026-12-01");
        assert_eq!(month_of(t), "2026-12");
    }
}
