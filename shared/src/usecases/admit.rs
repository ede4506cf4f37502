//! Admitting one new task: stored `queued` under its tenant's running cap and idempotency key,
//! then its message sent. Shared by every path that creates a task from a request (a submit, a
//! fork) and by the schedule dispatcher.
//!
//! The record is written before the message is sent, so a worker never receives a task it
//! cannot find; a task whose message cannot be sent is marked `failed`, so nobody waits on a
//! task no worker will pick up. A repeated key answers the task the first request made, and
//! sends its message again if it is still `queued` (the first request may have died between
//! its two writes; a duplicate is harmless, the worker's claim runs a task once).

use std::collections::HashMap;

use tracing::Instrument as _;

use crate::domain::task::{ErrorCode, TaskError, TaskMessage, TaskRecord, TaskStatus};
use crate::domain::tenant::{Limits, OverCap};
use crate::observe::telemetry::traces;
use crate::queue::{QueueError, TaskQueue};
use crate::store::{Admission, Admitted, Slot, StoreError, TaskCreate, TaskRead};

/// What admission reads and writes.
pub trait AdmitStore: TaskCreate + TaskRead {}
impl<T: TaskCreate + TaskRead + ?Sized> AdmitStore for T {}

/// A task that was accepted.
#[derive(Debug)]
pub enum Accepted {
    /// Stored and its message sent.
    Sent(TaskRecord),
    /// Over its tenant's cap with `over_cap: hold`: stored in the tenant's line, no message yet.
    Held(TaskRecord),
    /// The idempotency key made this task before.
    Replayed(TaskRecord),
}

/// Why a task was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    #[error("the tenant already has {max} tasks queued or running")]
    ConcurrencyLimited { max: u32 },
    /// Stored, but its message could not be sent: the task is marked `failed`.
    #[error("the task could not be queued")]
    NotQueued(#[source] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Admits `task` and sends its message, under its tenant's `limits` (its choice at its cap,
/// its weight).
pub async fn admit_and_send(
    store: &dyn AdmitStore,
    queue: &dyn TaskQueue,
    task: TaskRecord,
    admission: Admission<'_>,
    limits: &Limits,
) -> Result<Accepted, Refused> {
    let mut task = task.in_lane_of(limits.weight);
    let over_cap = limits.over_cap;
    // Two requests racing on one fresh key: the loser's transaction conflicts, and a second
    // look finds the winner's task.
    let mut admitted = store.admit(&task, admission).instrument(tracing::info_span!("store.admit")).await;
    if matches!(admitted, Err(StoreError::Conflict)) {
        // The first try gave back a slot the caller took: this one takes its own.
        let again =
            Admission { slot: if admission.slot == Slot::Taken { Slot::Take } else { admission.slot }, ..admission };
        admitted = store.admit(&task, again).instrument(tracing::info_span!("store.admit")).await;
    }
    match admitted? {
        Admitted::Created => {}
        Admitted::Replayed(original) => return replayed(store, queue, original).await,
        Admitted::KeyReused => return Err(Refused::KeyReused),
        Admitted::ConcurrencyLimited { max } if over_cap != OverCap::Hold => {
            return Err(Refused::ConcurrencyLimited { max });
        }
        Admitted::ConcurrencyLimited { .. } => {
            match store.hold(&task, admission).instrument(tracing::info_span!("store.hold")).await? {
                Admitted::Replayed(original) => return replayed(store, queue, original).await,
                Admitted::KeyReused => return Err(Refused::KeyReused),
                _ => {}
            }
            task.held = true;
            // A slot may have freed meanwhile: the line moves now rather than at the next end.
            super::held::start_held(store, queue, &task.tenant_id, true, crate::now()).await;
            return Ok(Accepted::Held(task));
        }
    }
    if let Err(e) = send(queue, &task).await {
        let error = TaskError::new(ErrorCode::EnqueueFailed, "the task could not be queued; submit it again");
        let key = admission.idempotency.map(|i| i.key);
        if let Err(store_err) = store.fail_unqueued(&task, &error, key, crate::now()).await {
            // Both AWS services failing at once leaves the record `queued` (the reconciler's
            // to find); say so loudly.
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(store_err)),
                "could not mark an unqueued task failed"
            );
        }
        return Err(Refused::NotQueued(e));
    }
    Ok(Accepted::Sent(task))
}

/// Sends a task's message in a span the worker's spans hang off, as a consumer's hang off
/// its producer's.
async fn send(queue: &dyn TaskQueue, task: &TaskRecord) -> Result<(), QueueError> {
    let message = TaskMessage::of(task);
    let span = tracing::info_span!("sqs.send");
    let context = if task.trace_id.is_some() { traces::headers_for(&span) } else { HashMap::new() };
    queue.enqueue(&message, &context).instrument(span).await
}

async fn replayed(
    store: &dyn AdmitStore,
    queue: &dyn TaskQueue,
    original: crate::domain::task::TaskId,
) -> Result<Accepted, Refused> {
    let task = store.get(original).await?.ok_or_else(|| {
        StoreError::Unavailable(anyhow::anyhow!("an idempotency key points at a missing task {original}"))
    })?;
    tracing::info!(task_id = %original, status = %task.status, "idempotent replay");
    if task.status == TaskStatus::Queued && !task.held {
        // If this send fails too, the reconciler is the net: the replay still answers.
        if let Err(e) = send(queue, &task).await {
            tracing::warn!(error = format!("{:#}", e.0), "could not send a replayed task's message again");
        }
    }
    Ok(Accepted::Replayed(task))
}
