//! An in-memory queue for handler tests: it records what was sent, and can be set down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{DeliveryQueue, QueueError, TaskQueue};
use crate::domain::task::TaskMessage;
use crate::domain::webhooks::DeliveryJob;

#[derive(Debug, Default)]
pub struct MemoryQueue {
    sent: Mutex<Vec<TaskMessage>>,
    down: AtomicBool,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later call fail.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The messages sent so far.
    pub fn sent(&self) -> Vec<TaskMessage> {
        self.sent.lock().expect("poisoned").clone()
    }

    fn check(&self) -> Result<(), QueueError> {
        if self.down.load(Ordering::SeqCst) {
            Err(QueueError(anyhow::anyhow!("memory queue set down")))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn enqueue(
        &self,
        message: &TaskMessage,
        _: &std::collections::HashMap<String, String>,
    ) -> Result<(), QueueError> {
        self.check()?;
        self.sent.lock().expect("poisoned").push(message.clone());
        Ok(())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.check()
    }
}

/// Records the visibility changes asked for, for handler tests.
#[derive(Debug, Default)]
pub struct MemoryRequeue {
    delays: Mutex<Vec<(String, std::time::Duration)>>,
}

impl MemoryRequeue {
    pub fn new() -> Self {
        Self::default()
    }

    /// (receipt handle, delay) pairs, in order.
    pub fn delays(&self) -> Vec<(String, std::time::Duration)> {
        self.delays.lock().expect("poisoned").clone()
    }
}

#[async_trait]
impl super::Requeue for MemoryRequeue {
    async fn set_visibility_all(
        &self,
        _: &str,
        receipt_handles: &[&str],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let mut delays = self.delays.lock().expect("poisoned");
        delays.extend(receipt_handles.iter().map(|r| ((*r).to_owned(), delay)));
        Ok(())
    }
}

/// Dead-letter queues in memory, for the dead-letter use cases' unit tests. A received
/// message stays hidden until it is released or deleted (time does not pass here).
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    /// Per queue: (message, hidden).
    queues: Mutex<std::collections::HashMap<String, Vec<(super::DeadMessage, bool)>>>,
}

impl MemoryDeadLetters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a task's message in `queue_url`.
    pub fn push(&self, queue_url: &str, task: Option<TaskMessage>) {
        let mut queues = self.queues.lock().expect("poisoned");
        let queue = queues.entry(queue_url.to_owned()).or_default();
        let id = format!("m{}", queue.len());
        let message = super::DeadMessage {
            queue_url: queue_url.to_owned(),
            message_id: id.clone(),
            receipt: id,
            body: task.as_ref().and_then(|t| serde_json::to_string(t).ok()).unwrap_or_default(),
            task,
            receive_count: 3,
            sent_at_ms: None,
        };
        queue.push((message, false));
    }

    /// Messages in `queue_url`, hidden or not.
    pub fn len(&self, queue_url: &str) -> usize {
        self.queues.lock().expect("poisoned").get(queue_url).map_or(0, Vec::len)
    }

    /// Messages in `queue_url` that a receive would return now.
    pub fn visible(&self, queue_url: &str) -> usize {
        self.queues.lock().expect("poisoned").get(queue_url).map_or(0, |q| q.iter().filter(|(_, h)| !h).count())
    }
}

#[async_trait]
impl super::DeadLetters for MemoryDeadLetters {
    async fn receive(&self, queue_url: &str, _: std::time::Duration) -> Result<Vec<super::DeadMessage>, QueueError> {
        let mut queues = self.queues.lock().expect("poisoned");
        let Some(queue) = queues.get_mut(queue_url) else { return Ok(Vec::new()) };
        Ok(queue
            .iter_mut()
            .filter(|(_, hidden)| !hidden)
            .take(10)
            .map(|(m, hidden)| {
                *hidden = true;
                m.clone()
            })
            .collect())
    }

    async fn release(&self, queue_url: &str, receipts: &[String]) -> Result<(), QueueError> {
        let mut queues = self.queues.lock().expect("poisoned");
        for (m, hidden) in queues.get_mut(queue_url).into_iter().flatten() {
            if receipts.contains(&m.receipt) {
                *hidden = false;
            }
        }
        Ok(())
    }

    async fn delete(&self, queue_url: &str, receipt: &str) -> Result<(), QueueError> {
        if let Some(q) = self.queues.lock().expect("poisoned").get_mut(queue_url) {
            q.retain(|(m, _)| m.receipt != receipt);
        }
        Ok(())
    }
}

/// Records the delivery jobs sent, for handler tests.
#[derive(Debug, Default)]
pub struct MemoryDeliveryQueue {
    sent: Mutex<Vec<DeliveryJob>>,
    down: AtomicBool,
}

impl MemoryDeliveryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The jobs sent so far.
    pub fn sent(&self) -> Vec<DeliveryJob> {
        self.sent.lock().expect("poisoned").clone()
    }
}

#[async_trait]
impl DeliveryQueue for MemoryDeliveryQueue {
    async fn send(&self, jobs: &[DeliveryJob]) -> Result<(), QueueError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(QueueError(anyhow::anyhow!("memory delivery queue set down")));
        }
        self.sent.lock().expect("poisoned").extend_from_slice(jobs);
        Ok(())
    }
}
