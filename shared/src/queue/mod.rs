//! The task queue behind a small trait: the submit path sends a [`TaskMessage`]; SQS (or the
//! in-memory fake in handler tests) carries it to the worker.

mod memory;
mod sqs;

use async_trait::async_trait;

pub use memory::MemoryQueue;
pub use sqs::SqsQueue;

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
