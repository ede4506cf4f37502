//! The dead-letter queues: finding their messages, marking their tasks, and moving them back.
//!
//! Messages are read and left in place (made visible again at once) unless they are moved:
//! the dead-letter queue keeps them for inspection and redrive until its retention ends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName};

use crate::queue::QueueUrls;
use crate::store::TaskDeadLetter;
use crate::task::{TaskError, TaskId, TaskMessage};

/// A message found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadMessage {
    pub queue_url: String,
    pub message_id: String,
    /// `None` when the body is not a task message.
    pub task: Option<TaskMessage>,
    pub receive_count: u32,
    pub sent_at_ms: Option<i64>,
}

/// What to do with a message once seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it in the queue, visible.
    Keep,
    /// Delete it (it was sent back to its queue).
    Remove,
}

/// Reads every message of `queue_url` once (as far as SQS's sampling allows within `budget`)
/// and applies `decide` to each, releasing the ones it keeps at once.
pub async fn visit<F, Fut>(sqs: &Client, queue_url: &str, budget: Duration, mut decide: F) -> anyhow::Result<usize>
where
    F: FnMut(DeadMessage) -> Fut,
    Fut: std::future::Future<Output = Decision>,
{
    let started = tokio::time::Instant::now();
    let mut seen = HashSet::new();
    while started.elapsed() < budget {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| anyhow!("ReceiveMessage: {}", DisplayErrorContext(&e)))?;
        let messages = out.messages.unwrap_or_default();
        let fresh: Vec<&Message> =
            messages.iter().filter(|m| m.message_id.as_ref().is_some_and(|id| seen.insert(id.clone()))).collect();
        let mut keep = Vec::new();
        for m in fresh.iter().copied() {
            let dead = parse(queue_url, m);
            let receipt = m.receipt_handle.clone().unwrap_or_default();
            match decide(dead).await {
                Decision::Keep => keep.push(receipt),
                Decision::Remove => {
                    sqs.delete_message()
                        .queue_url(queue_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map_err(|e| anyhow!("DeleteMessage: {}", DisplayErrorContext(&e)))?;
                }
            }
        }
        // Messages seen before, received again, are released too.
        keep.extend(
            messages
                .iter()
                .filter(|m| !fresh.iter().any(|f| f.message_id == m.message_id))
                .filter_map(|m| m.receipt_handle.clone()),
        );
        release(sqs, queue_url, keep).await?;
        if fresh.is_empty() {
            break;
        }
    }
    Ok(seen.len())
}

fn parse(queue_url: &str, m: &Message) -> DeadMessage {
    let attr = |name: MessageSystemAttributeName| m.attributes.as_ref().and_then(|a| a.get(&name)).cloned();
    DeadMessage {
        queue_url: queue_url.to_owned(),
        message_id: m.message_id.clone().unwrap_or_default(),
        task: m.body.as_deref().and_then(|b| serde_json::from_str(b).ok()),
        receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        sent_at_ms: attr(MessageSystemAttributeName::SentTimestamp).and_then(|c| c.parse().ok()),
    }
}

async fn release(sqs: &Client, queue_url: &str, receipts: Vec<String>) -> anyhow::Result<()> {
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .build()
                    .map_err(|e| anyhow!("{e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        sqs.change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| anyhow!("ChangeMessageVisibilityBatch: {}", DisplayErrorContext(&e)))?;
    }
    Ok(())
}

/// The error a task gets when its message is found dead-lettered.
pub fn delivery_failed(last: Option<&TaskError>) -> TaskError {
    let detail = last.map_or_else(|| "no worker could record why".to_owned(), |e| format!("{}: {}", e.code, e.message));
    TaskError::new(
        "delivery_failed",
        format!("the task could not be run after repeated deliveries and was set aside; last error: {detail}"),
    )
}

/// Marks the task of every message in `dlqs` failed (`delivery_failed`), leaving the
/// messages where they are. Returns (messages seen, tasks marked).
pub async fn sweep(
    sqs: &Client,
    store: &(impl TaskDeadLetter + crate::store::TaskRead + ?Sized),
    dlqs: &[String],
    budget: Duration,
) -> anyhow::Result<(usize, usize)> {
    let marked = AtomicUsize::new(0);
    let mut seen = 0;
    for url in dlqs {
        seen += visit(sqs, url, budget, |dead| {
            let marked = &marked;
            async move {
                let Some(message) = dead.task else {
                    tracing::error!(message_id = %dead.message_id, "a dead-lettered message is not a task message");
                    return Decision::Keep;
                };
                match mark(store, message.task_id).await {
                    Ok(true) => {
                        marked.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(task_id = %message.task_id, receive_count = dead.receive_count, "dead-lettered task marked failed");
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

async fn mark(store: &(impl TaskDeadLetter + crate::store::TaskRead + ?Sized), id: TaskId) -> anyhow::Result<bool> {
    let Some(task) = store.get(id).await? else { return Ok(false) };
    if task.status.is_terminal() {
        return Ok(false);
    }
    Ok(store.fail_undelivered(id, &delivery_failed(task.last_error.as_ref()), crate::now()).await?)
}

/// Moves dead-lettered messages back to the queue of their priority, setting their tasks
/// `queued` again first; only `task`'s when given. Returns how many were moved.
pub async fn redrive(
    sqs: &Client,
    store: &(impl TaskDeadLetter + ?Sized),
    dlqs: &[String],
    queues: &QueueUrls,
    task: Option<TaskId>,
    budget: Duration,
) -> anyhow::Result<usize> {
    let moved = AtomicUsize::new(0);
    for url in dlqs {
        let errors = std::sync::Mutex::new(Vec::new());
        visit(sqs, url, budget, |dead| {
            let (moved, errors) = (&moved, &errors);
            async move {
                let Some(message) = dead.task else { return Decision::Keep };
                if task.is_some_and(|t| t != message.task_id) {
                    return Decision::Keep;
                }
                let result: anyhow::Result<()> = async {
                    store.requeue(message.task_id, crate::now()).await?;
                    sqs.send_message()
                        .queue_url(queues.for_priority(message.priority))
                        .message_body(serde_json::to_string(&message)?)
                        .send()
                        .await
                        .map_err(|e| anyhow!("SendMessage: {}", DisplayErrorContext(&e)))?;
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
