//! The task queue behind small traits: the submit path sends a [`TaskMessage`]; SQS (or the
//! in-memory fake in handler tests) carries it to the worker; the worker changes a held
//! message's visibility; the dead-letter use cases read and remove dead messages. Webhook
//! deliveries wait in a queue of their own ([`DeliveryQueue`]).

mod memory;
mod sqs;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::{MemoryDeadLetters, MemoryDeliveryQueue, MemoryQueue, MemoryRequeue};
pub use sqs::{QueueUrls, SqsDeadLetters, SqsDeliveryQueue, SqsQueue, SqsRequeue};

use crate::domain::task::TaskMessage;
use crate::domain::webhooks::DeliveryJob;

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
    async fn set_visibility(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.set_visibility_all(queue_arn, &[receipt_handle], delay).await
    }

    /// Makes every message of `receipt_handles` (all from `queue_arn`) visible again `delay`
    /// from now, in as few requests as the queue allows (SQS: one per ten messages), so a
    /// batch's heartbeat costs one request rather than one per message.
    async fn set_visibility_all(
        &self,
        queue_arn: &str,
        receipt_handles: &[&str],
        delay: Duration,
    ) -> Result<(), QueueError>;
}

/// A message found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadMessage {
    pub queue_url: String,
    pub message_id: String,
    /// What deletes or releases it.
    pub receipt: String,
    /// `None` when the body is not a task message.
    pub task: Option<TaskMessage>,
    /// The message as sent.
    pub body: String,
    pub receive_count: u32,
    pub sent_at_ms: Option<i64>,
}

/// Reading the dead-letter queues (SQS, or the in-memory fake).
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to ten messages of `queue_url`, each then kept out of sight for `hide`. Empty only
    /// when the queue has no visible message (a long poll, which asks every SQS server).
    async fn receive(&self, queue_url: &str, hide: Duration) -> Result<Vec<DeadMessage>, QueueError>;

    /// Makes received messages visible again at once.
    async fn release(&self, queue_url: &str, receipts: &[String]) -> Result<(), QueueError>;

    async fn delete(&self, queue_url: &str, receipt: &str) -> Result<(), QueueError>;
}

/// The queue webhook deliveries wait in until the notifier sends them (and, after a failed
/// attempt, until their next attempt is due).
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Sends every job (in batches); fails if any could not be sent, so the caller retries
    /// them all (a duplicate job delivers the same `webhook-id` again, which receivers drop).
    async fn send(&self, jobs: &[DeliveryJob]) -> Result<(), QueueError>;
}
