//! An in-memory queue for handler tests: it records what was sent, and can be set down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{QueueError, TaskQueue};
use crate::task::TaskMessage;

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
    async fn set_visibility(
        &self,
        _: &str,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        self.delays.lock().expect("poisoned").push((receipt_handle.to_owned(), delay));
        Ok(())
    }
}
