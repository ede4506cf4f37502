//! The task queue behind a small trait: the submit path sends a [`TaskMessage`]; SQS (or the
//! in-memory fake in handler tests) carries it to the worker.

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
    async fn enqueue(&self, message: &TaskMessage) -> Result<(), QueueError>;

    /// A cheap call that proves the queue answers, for `/ready`.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// Puts a message the worker is giving back out of sight for a while, so a task whose
/// models are down is not retried at once (SQS `ChangeMessageVisibility`).
#[async_trait]
pub trait Requeue: Send + Sync {
    /// `queue_arn` is the record's `eventSourceARN`.
    async fn retry_after(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), QueueError>;
}
