//! Task storage behind small traits, one per kind of access, so a handler's signature says
//! what it may touch: the submit path creates, the status path reads, the worker runs.
//!
//! Every state change is a conditional write whose condition states the rule (`status =
//! queued`, `the lease is ours`), so races between deliveries are decided by the store, not by
//! timing. [`DynamoStore`] is the real adapter; [`MemoryStore`] the in-memory fake for
//! handler tests, with the same rules.

mod dynamodb;
mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use dynamodb::DynamoStore;
pub use memory::MemoryStore;

use crate::task::{TaskError, TaskId, TaskRecord, TaskResult, TaskStatus};
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

/// The submit path's writes.
#[async_trait]
pub trait TaskCreate: Send + Sync {
    /// Stores a new `queued` task. Fails with `Conflict` if the id exists.
    async fn create(&self, task: &TaskRecord) -> Result<(), StoreError>;

    /// `queued` → `failed`, for a task whose message could not be sent: without it the record
    /// would wait for a worker that never comes.
    async fn fail_unqueued(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<(), StoreError>;
}

/// Reads for the status path.
#[async_trait]
pub trait TaskRead: Send + Sync {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;
}

/// The worker's writes. All but `claim` require the caller's lease to be the current one.
#[async_trait]
pub trait TaskRun: Send + Sync {
    /// Takes a `queued` task, or a `running` one whose lease has expired (its runner died).
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError>;

    async fn progress(&self, id: TaskId, lease: &Lease, progress: &Progress) -> Result<(), StoreError>;

    async fn finish(&self, id: TaskId, lease: &Lease, finish: &Finish) -> Result<(), StoreError>;

    /// `running` → `queued`, giving the task back for the next delivery to run.
    async fn release(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<(), StoreError>;
}

/// A cheap call that proves the store answers, for `/ready`.
#[async_trait]
pub trait StorePing: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;
}
