//! The dead-letter use cases, over the queues' [`DeadLetters`] and the task store: the
//! sweeper marks the task of every dead message `failed` (`delivery_failed`), `agentq dlq
//! list` shows them, and `agentq dlq redrive` puts them back on their queues.
//!
//! A visit keeps every message it has received out of sight until it ends, so each receive
//! returns messages it has not seen yet, and a queue of any size is read to the end (within
//! the time budget); the messages it keeps are then made visible again, for the next sweep,
//! for inspection and for redrive.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::anyhow;

use crate::domain::task::{ErrorCode, TaskError, TaskId};
use crate::queue::{DeadLetters, DeadMessage, QueueError, TaskQueue};
use crate::store::{TaskDeadLetter, TaskRead};

/// What to do with a message once seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it in the queue.
    Keep,
    /// Delete it (it was sent back to its queue).
    Remove,
}

/// Applies `decide` to every message of `queue_url` (as far as `budget` allows); returns how
/// many were seen.
pub async fn visit<F, Fut>(
    dead: &dyn DeadLetters,
    queue_url: &str,
    budget: Duration,
    mut decide: F,
) -> Result<usize, QueueError>
where
    F: FnMut(DeadMessage) -> Fut,
    Fut: Future<Output = Decision>,
{
    let started = tokio::time::Instant::now();
    // Hidden for longer than the visit lasts, so nothing comes round twice; released at the
    // end, or by SQS soon after if this process dies.
    let hide = budget + Duration::from_secs(30);
    let (mut seen, mut keep) = (HashSet::new(), Vec::new());
    let result = async {
        while started.elapsed() < budget {
            let batch = dead.receive(queue_url, hide).await?;
            if batch.is_empty() {
                break;
            }
            // The messages of one receive are decided concurrently: each decision is a few
            // store round trips, and a queue of hundreds must be read within the budget.
            let mut pending = Vec::new();
            for m in batch {
                // SQS delivers at least once: a message may be received twice in one visit.
                if !seen.insert(m.message_id.clone()) {
                    keep.push(m.receipt);
                    continue;
                }
                let receipt = m.receipt.clone();
                let decision = decide(m);
                pending.push(async move { (receipt, decision.await) });
            }
            for (receipt, decision) in futures::future::join_all(pending).await {
                match decision {
                    Decision::Keep => keep.push(receipt),
                    Decision::Remove => dead.delete(queue_url, &receipt).await?,
                }
            }
        }
        Ok(())
    }
    .await;
    let released = dead.release(queue_url, &keep).await;
    result.and(released).map(|()| seen.len())
}

/// The error a task gets when its message is found dead-lettered. It names the last failure
/// by its code only: the words behind it may carry internals and stay in the logs.
pub fn delivery_failed(last: Option<&TaskError>) -> TaskError {
    let detail = last.map_or_else(|| "no worker could record why".to_owned(), |e| format!("last error: {}", e.code));
    TaskError::new(
        ErrorCode::DeliveryFailed,
        format!("the task could not be run after repeated deliveries and was set aside ({detail})"),
    )
}

/// Marks the task of every message in `dlqs` failed (`delivery_failed`), leaving the
/// messages where they are. Returns (messages seen, tasks marked).
pub async fn sweep(
    dead: &dyn DeadLetters,
    store: &(impl TaskDeadLetter + TaskRead + ?Sized),
    dlqs: &[String],
    budget: Duration,
) -> Result<(usize, usize), QueueError> {
    let marked = AtomicUsize::new(0);
    let mut seen = 0;
    for url in dlqs {
        seen += visit(dead, url, budget, |m| {
            let marked = &marked;
            async move {
                let Some(message) = m.task else {
                    tracing::error!(message_id = %m.message_id, "a dead-lettered message is not a task message");
                    return Decision::Keep;
                };
                match mark(store, message.task_id).await {
                    Ok(true) => {
                        marked.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(task_id = %message.task_id, receive_count = m.receive_count, "dead-lettered task marked failed");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(task_id = %message.task_id, error = format!("{e:#}"), "could not mark a dead-lettered task"),
                }
                Decision::Keep
            }
        })
        .await?;
    }
    Ok((seen, marked.into_inner()))
}

async fn mark(store: &(impl TaskDeadLetter + TaskRead + ?Sized), id: TaskId) -> anyhow::Result<bool> {
    let Some(task) = store.get(id).await? else { return Ok(false) };
    if task.status.is_terminal() {
        return Ok(false);
    }
    Ok(store.fail_abandoned(id, &delivery_failed(task.last_error.as_ref()), crate::now()).await?)
}

/// Moves dead-lettered messages back to the queue of their priority, setting their tasks
/// `queued` again first; only `task`'s when given. Returns how many were moved.
pub async fn redrive(
    dead: &dyn DeadLetters,
    store: &(impl TaskDeadLetter + ?Sized),
    queue: &dyn TaskQueue,
    dlqs: &[String],
    task: Option<TaskId>,
    budget: Duration,
) -> anyhow::Result<usize> {
    let moved = AtomicUsize::new(0);
    for url in dlqs {
        let errors = std::sync::Mutex::new(Vec::new());
        visit(dead, url, budget, |m| {
            let (moved, errors) = (&moved, &errors);
            async move {
                let Some(message) = m.task else { return Decision::Keep };
                if task.is_some_and(|t| t != message.task_id) {
                    return Decision::Keep;
                }
                let result: anyhow::Result<()> = async {
                    store.requeue(message.task_id, crate::now()).await?;
                    queue.enqueue(&message, &Default::default()).await?;
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        moved.fetch_add(1, Ordering::SeqCst);
                        Decision::Remove
                    }
                    Err(e) => {
                        errors.lock().expect("poisoned").push(format!("{}: {e:#}", message.task_id));
                        Decision::Keep
                    }
                }
            }
        })
        .await?;
        let errors = errors.into_inner().expect("poisoned");
        if !errors.is_empty() {
            return Err(anyhow!("could not redrive: {}", errors.join("; ")));
        }
    }
    Ok(moved.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::task::{Priority, TaskMessage, TaskRecord, TaskRequest, TaskStatus};
    use crate::queue::{MemoryDeadLetters, MemoryQueue};
    use crate::store::{Lease, MemoryStore, TaskRun as _};

    async fn running_task(store: &MemoryStore) -> TaskId {
        let request = TaskRequest::parse(br#"{"prompt":"x"}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(request, "acme", crate::now());
        store.insert(&task).await;
        // Its runner died: the lease has run out.
        let lease = Lease { owner: "dead".into(), until: crate::now() - time::Duration::seconds(1) };
        store.claim(task.task_id, &lease, crate::now()).await.unwrap();
        task.task_id
    }

    #[tokio::test]
    async fn a_sweep_marks_every_dead_task_however_many_and_leaves_the_messages() {
        let (store, dead) = (MemoryStore::new(), MemoryDeadLetters::new());
        let mut ids = Vec::new();
        for _ in 0..250 {
            let id = running_task(&store).await;
            dead.push(
                "dlq",
                Some(TaskMessage { task_id: id, priority: Priority::Default, fairness_key: None, delay: None }),
            );
            ids.push(id);
        }
        dead.push("dlq", None);
        let (seen, marked) = sweep(&dead, &store, &["dlq".to_owned()], Duration::from_secs(30)).await.unwrap();
        assert_eq!((seen, marked), (251, 250));
        for id in ids {
            let task = store.get(id).await.unwrap().unwrap();
            assert_eq!(task.status, TaskStatus::Failed);
            assert_eq!(task.error.unwrap().code, ErrorCode::DeliveryFailed);
        }
        assert_eq!(dead.visible("dlq"), 251, "every message is visible again for redrive");
        assert_eq!(store.active("acme"), 0);
    }

    #[tokio::test]
    async fn a_redrive_queues_the_task_again_and_moves_its_message() {
        let (store, dead, queue) = (MemoryStore::new(), MemoryDeadLetters::new(), MemoryQueue::new());
        let id = running_task(&store).await;
        let other = running_task(&store).await;
        for t in [id, other] {
            dead.push(
                "dlq",
                Some(TaskMessage { task_id: t, priority: Priority::High, fairness_key: None, delay: None }),
            );
        }
        sweep(&dead, &store, &["dlq".to_owned()], Duration::from_secs(5)).await.unwrap();
        let moved = redrive(&dead, &store, &queue, &["dlq".to_owned()], Some(id), Duration::from_secs(5)).await;
        assert_eq!(moved.unwrap(), 1);
        assert_eq!(store.get(id).await.unwrap().unwrap().status, TaskStatus::Queued);
        assert_eq!(
            queue.sent(),
            [TaskMessage { task_id: id, priority: Priority::High, fairness_key: None, delay: None }]
        );
        assert_eq!(dead.len("dlq"), 1, "only that task's message moved");
    }

    #[test]
    fn a_delivery_failure_names_the_last_error_by_its_code_only() {
        let last = TaskError::new(ErrorCode::StoreError, "GetItem: dispatch failure at https://internal:8000");
        let e = delivery_failed(Some(&last));
        assert!(e.message.contains("store_error") && !e.message.contains("internal"), "{}", e.message);
    }
}
