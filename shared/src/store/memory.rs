//! An in-memory store with the same rules as the DynamoDB adapter, for handler tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Claim, Finish, Lease, Progress, StoreError, StorePing, TaskCreate, TaskRead, TaskRun};
use crate::task::{TaskError, TaskId, TaskRecord, TaskStatus};

#[derive(Debug, Default)]
pub struct MemoryStore {
    tasks: Mutex<HashMap<TaskId, (TaskRecord, Option<Lease>)>>,
    /// When set, every call fails as if the store were down.
    down: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later call fail with [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ids of every stored task.
    pub fn ids(&self) -> Vec<TaskId> {
        self.tasks.lock().expect("poisoned").keys().copied().collect()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable(anyhow::anyhow!("memory store set down")))
        } else {
            Ok(())
        }
    }

    /// Applies `f` to the task if `lease` is its current one and it is running.
    fn with_leased(
        &self,
        id: TaskId,
        lease: &Lease,
        f: impl FnOnce(&mut TaskRecord, &mut Option<Lease>),
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut tasks = self.tasks.lock().expect("poisoned");
        match tasks.get_mut(&id) {
            Some((rec, held))
                if rec.status == TaskStatus::Running && held.as_ref().is_some_and(|l| l.owner == lease.owner) =>
            {
                f(rec, held);
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }
}

#[async_trait]
impl TaskCreate for MemoryStore {
    async fn create(&self, task: &TaskRecord) -> Result<(), StoreError> {
        self.check()?;
        let mut tasks = self.tasks.lock().expect("poisoned");
        if tasks.contains_key(&task.task_id) {
            return Err(StoreError::Conflict);
        }
        tasks.insert(task.task_id, (task.clone(), None));
        Ok(())
    }

    async fn fail_unqueued(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<(), StoreError> {
        self.check()?;
        let mut tasks = self.tasks.lock().expect("poisoned");
        match tasks.get_mut(&id) {
            Some((rec, _)) if rec.status == TaskStatus::Queued => {
                rec.status = TaskStatus::Failed;
                rec.error = Some(error.clone());
                rec.updated_at = now;
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }
}

#[async_trait]
impl TaskRead for MemoryStore {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.check()?;
        Ok(self.tasks.lock().expect("poisoned").get(&id).map(|(r, _)| r.clone()))
    }
}

#[async_trait]
impl TaskRun for MemoryStore {
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError> {
        self.check()?;
        let mut tasks = self.tasks.lock().expect("poisoned");
        let Some((rec, held)) = tasks.get_mut(&id) else { return Ok(Claim::NotFound) };
        if rec.status.is_terminal() {
            return Ok(Claim::Terminal(rec.status));
        }
        let expired = held.as_ref().is_none_or(|l| l.until < now);
        if rec.status == TaskStatus::Queued || (rec.status == TaskStatus::Running && expired) {
            rec.status = TaskStatus::Running;
            rec.attempts += 1;
            rec.updated_at = now;
            *held = Some(lease.clone());
            return Ok(Claim::Claimed(Box::new(rec.clone())));
        }
        Ok(Claim::Leased { until: held.as_ref().map_or(now, |l| l.until) })
    }

    async fn progress(&self, id: TaskId, lease: &Lease, p: &Progress) -> Result<(), StoreError> {
        self.with_leased(id, lease, |rec, held| {
            rec.step = p.step;
            rec.usage = p.usage;
            rec.usage_by_model.clone_from(&p.usage_by_model);
            if p.model.is_some() {
                rec.model.clone_from(&p.model);
            }
            rec.updated_at = p.now;
            if let Some(l) = held {
                l.until = p.lease_until;
            }
        })
    }

    async fn finish(&self, id: TaskId, lease: &Lease, f: &Finish) -> Result<(), StoreError> {
        self.with_leased(id, lease, |rec, held| {
            rec.status = f.status;
            rec.step = f.step;
            rec.usage = f.usage;
            rec.usage_by_model.clone_from(&f.usage_by_model);
            if f.result.is_some() {
                rec.result.clone_from(&f.result);
            }
            if f.error.is_some() {
                rec.error.clone_from(&f.error);
            }
            if f.model.is_some() {
                rec.model.clone_from(&f.model);
            }
            rec.updated_at = f.now;
            *held = None;
        })
    }

    async fn release(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<(), StoreError> {
        self.with_leased(id, lease, |rec, held| {
            rec.status = TaskStatus::Queued;
            rec.updated_at = now;
            *held = None;
        })
    }
}

#[async_trait]
impl StorePing for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}
