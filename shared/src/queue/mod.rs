//! The task queue behind a small trait: the submit path sends a [`TaskMessage`]; SQS (or the
//! in-memory fake in handler tests) carries it to the worker.

pub mod dead;
mod memory;
mod sqs;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::{MemoryQueue, MemoryRequeue};
pub use sqs::{QueueUrls, SqsQueue, SqsRequeue};

use crate::task::TaskMessage;

#[derive(Debug, thiserror::Error)]
#[error("the task queue is unavailable")]
pub struct QueueError(#[source] pub anyhow::Error);

#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Sends a task's message; `trace` (`traceparent`…) travels with it as message attributes,
    /// so the worker's spans join the submitter's trace.
    async fn enqueue(
        &self,
        message: &TaskMessage,
        trace: &std::collections::HashMap<String, String>,
    ) -> Result<(), QueueError>;

    /// A cheap call that proves the queue answers, for `/ready`.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// Changes how long a message the worker holds stays out of sight (SQS
/// `ChangeMessageVisibility`): a heartbeat while a task runs, a growing delay when it is given
/// back because its models are down.
#[async_trait]
pub trait Requeue: Send + Sync {
    /// Makes the message visible again `delay` from now. `queue_arn` is the record's
    /// `eventSourceARN`.
    async fn set_visibility(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), QueueError>;
}
