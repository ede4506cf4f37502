//! The local SQS event source: what Lambda's event source mapping does in AWS, for a stack
//! with no Lambda service. It long-polls the queue, invokes the function with an SQS event of
//! up to `batch_size` records, deletes the records the function did not list in
//! `batchItemFailures`, and leaves the rest to come back after their visibility timeout, so
//! the queue's redrive policy moves poison messages to the dead-letter queue.
//!
//! As in AWS, a failed invocation (a function error, an unreadable response, a failure id
//! that is not in the batch) counts as the whole batch failing.
//!
//! One function may be fed by several queues (high, default and low priority). The loop
//! serves them strictly in order: a batch is taken from the first queue that has messages,
//! so a flood of low-priority work never holds up a high-priority task.
//!
//! **Fair queues.** Deployed, the task queues are SQS fair queues: each message carries its
//! tenant as `MessageGroupId`, and SQS delivers a quiet tenant's messages ahead of a noisy
//! tenant's backlog. LocalStack accepts the key but delivers first in, first out, so this
//! event source does the reordering itself: it reads what the queue shows (up to
//! [`STAGE_MAX`] messages, held out of sight meanwhile) and builds each batch round-robin
//! across the fairness keys with messages waiting, one message per key per turn. A batch's
//! messages get the queue's own visibility timeout back as they are delivered, so the worker
//! sees them as if just received; held messages are kept out of sight while they wait and
//! handed back to the queue when the event source stops.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::template::LOCAL_REGION;

/// Something that runs the worker on an SQS event and returns its batch response.
#[async_trait]
pub trait Invoke: Send + Sync {
    async fn invoke(&self, event: Value) -> anyhow::Result<Value>;
}

/// Invokes a function through the Lambda Invoke API (`cargo lambda watch` serves it).
#[derive(Debug, Clone)]
pub struct LambdaInvoker {
    http: reqwest::Client,
    url: String,
}

impl LambdaInvoker {
    pub fn new(http: reqwest::Client, base_url: &str, function: &str) -> Self {
        Self { http, url: format!("{}/2015-03-31/functions/{function}/invocations", base_url.trim_end_matches('/')) }
    }
}

#[async_trait]
impl Invoke for LambdaInvoker {
    async fn invoke(&self, event: Value) -> anyhow::Result<Value> {
        let response = self.http.post(&self.url).json(&event).send().await.context("invoking the function")?;
        let status = response.status();
        let function_error = response.headers().contains_key("x-amz-function-error");
        let body: Value = response.json().await.context("reading the function's response")?;
        if !status.is_success() || function_error || body.get("errorType").is_some() {
            return Err(anyhow!("the function failed ({status}): {body}"));
        }
        Ok(body)
    }
}

/// A queue, by URL and ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRef {
    pub url: String,
    pub arn: String,
}

/// Most messages held per queue for fair ordering.
pub const STAGE_MAX: usize = 10_000;
/// How long a held message stays out of sight, in seconds; renewed while it waits.
const HOLD_SECS: i32 = 120;
/// A held message older than this has its hold renewed.
const RENEW_AFTER: Duration = Duration::from_secs(60);

/// Queues feeding one function, highest priority first.
pub struct Delivery {
    pub sqs: aws_sdk_sqs::Client,
    pub queues: Vec<QueueRef>,
    pub batch_size: u32,
    /// Long-poll wait, in seconds (SQS allows 0–20), when every queue was empty.
    pub wait_seconds: i32,
    /// Messages received and not yet delivered, per queue URL.
    stages: tokio::sync::Mutex<HashMap<String, Stage>>,
    /// Round-robin across fairness keys (false: first in, first out, as before fair queues;
    /// `AGENTQ_LOCAL_FAIR=off`, for measuring the difference).
    fair: bool,
}

/// One queue's held messages, by fairness key, and whose turn is next.
#[derive(Default)]
struct Stage {
    groups: BTreeMap<String, VecDeque<(Message, Instant)>>,
    /// Keys with messages, in the order they are served.
    turn: VecDeque<String>,
    /// The queue's own visibility timeout, given back to a message as it is delivered.
    visibility: Option<i32>,
}

impl Stage {
    fn len(&self) -> usize {
        self.groups.values().map(VecDeque::len).sum()
    }

    /// Holds `m` under its fairness key (or all under one key, when not `fair`).
    fn push(&mut self, m: Message, fair: bool) {
        let key = m.attributes.as_ref().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).cloned();
        let key = key.filter(|_| fair).unwrap_or_default();
        let group = self.groups.entry(key.clone()).or_default();
        if group.is_empty() {
            self.turn.push_back(key);
        }
        group.push_back((m, Instant::now()));
    }

    /// Up to `n` messages, one per key per turn; the next call goes on from the next key.
    fn take(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(key) = self.turn.pop_front() else { break };
            let Some(group) = self.groups.get_mut(&key) else { continue };
            if let Some((m, _)) = group.pop_front() {
                out.push(m);
            }
            if group.is_empty() {
                self.groups.remove(&key);
            } else {
                self.turn.push_back(key);
            }
        }
        out
    }

    /// Held messages whose hold is due for renewal (marked renewed now).
    fn due_for_renewal(&mut self) -> Vec<Message> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (m, since) in self.groups.values_mut().flatten() {
            if since.elapsed() >= RENEW_AFTER {
                *since = now;
                due.push(m.clone());
            }
        }
        due
    }

    fn drain(&mut self) -> Vec<Message> {
        self.turn.clear();
        std::mem::take(&mut self.groups).into_values().flatten().map(|(m, _)| m).collect()
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
}

impl Delivery {
    pub fn new(sqs: aws_sdk_sqs::Client, queues: Vec<QueueRef>, batch_size: u32, wait_seconds: i32) -> Self {
        Self { sqs, queues, batch_size, wait_seconds, stages: Default::default(), fair: true }
    }

    /// Whether batches are built round-robin across fairness keys (the default).
    pub fn with_fairness(mut self, fair: bool) -> Self {
        self.fair = fair;
        self
    }

    async fn receive(&self, queue: &QueueRef, wait: i32) -> anyhow::Result<Vec<Message>> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(10)
            .visibility_timeout(HOLD_SECS)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| anyhow!("ReceiveMessage: {}", DisplayErrorContext(&e)))?;
        Ok(received.messages.unwrap_or_default())
    }

    async fn visibility_of(&self, queue: &QueueRef) -> anyhow::Result<i32> {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| anyhow!("GetQueueAttributes: {}", DisplayErrorContext(&e)))?;
        Ok(attrs.attributes.and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout)?.parse().ok()).unwrap_or(30))
    }

    /// Sets the visibility timeout of `messages`, ten at a time; a message that cannot be
    /// changed (already gone) is logged and left as it is.
    async fn set_visibility(&self, queue: &QueueRef, messages: &[Message], secs: i32) -> anyhow::Result<()> {
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                        .visibility_timeout(secs)
                        .build()
                        .map_err(Into::into)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let out = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow!("ChangeMessageVisibilityBatch: {}", DisplayErrorContext(&e)))?;
            for failed in out.failed {
                tracing::warn!(code = %failed.code, "a held message's visibility could not be changed");
            }
        }
        Ok(())
    }

    /// The next batch of `queue`, fairly ordered: tops the stage up with what the queue shows
    /// (waiting up to `wait` seconds when nothing is held), then takes round-robin.
    async fn next_batch(&self, queue: &QueueRef, wait: i32) -> anyhow::Result<Vec<Message>> {
        // A long poll of an empty queue happens outside the lock: a poller waiting on one
        // queue must not hold up the others (with many pollers it held every one up for a
        // second at a time, and messages waited in the queue for seconds).
        let empty = self.stages.lock().await.get(&queue.url).is_none_or(|s| s.len() == 0);
        if empty && wait > 0 {
            let received = self.receive(queue, wait).await?;
            let mut stages = self.stages.lock().await;
            let stage = stages.entry(queue.url.clone()).or_default();
            received.into_iter().for_each(|m| stage.push(m, self.fair));
        }
        let mut stages = self.stages.lock().await;
        let stage = stages.entry(queue.url.clone()).or_default();
        let visibility = match stage.visibility {
            Some(v) => v,
            None => *stage.visibility.insert(self.visibility_of(queue).await?),
        };
        while stage.len() < STAGE_MAX {
            let received = self.receive(queue, 0).await?;
            let full = received.len() == 10;
            received.into_iter().for_each(|m| stage.push(m, self.fair));
            if !full {
                break;
            }
        }
        let renew = stage.due_for_renewal();
        let batch = stage.take(self.batch_size.clamp(1, 10_000) as usize);
        drop(stages);
        if !renew.is_empty() {
            self.set_visibility(queue, &renew, HOLD_SECS).await?;
        }
        if !batch.is_empty() {
            self.set_visibility(queue, &batch, visibility).await?;
        }
        Ok(batch)
    }

    /// Renews the holds of messages that have waited long, on every queue.
    async fn renew_holds(&self) -> anyhow::Result<()> {
        for queue in &self.queues {
            let due = self.stages.lock().await.get_mut(&queue.url).map(Stage::due_for_renewal).unwrap_or_default();
            self.set_visibility(queue, &due, HOLD_SECS).await?;
        }
        Ok(())
    }

    /// Hands every held message back to its queue (visible at once).
    pub async fn release(&self) -> anyhow::Result<()> {
        for queue in &self.queues {
            let held = self.stages.lock().await.get_mut(&queue.url).map(Stage::drain).unwrap_or_default();
            self.set_visibility(queue, &held, 0).await?;
        }
        Ok(())
    }

    /// Delivers one batch, from the highest-priority queue that has messages.
    pub async fn poll_once(&self, invoker: &dyn Invoke) -> anyhow::Result<PollReport> {
        for queue in &self.queues {
            let messages = self.next_batch(queue, 0).await?;
            if !messages.is_empty() {
                return self.deliver(queue, messages, invoker).await;
            }
        }
        // Nothing anywhere: wait a little on the first queue rather than spin.
        let Some(first) = self.queues.first() else { return Ok(PollReport::default()) };
        let messages = self.next_batch(first, self.wait_seconds).await?;
        if messages.is_empty() {
            return Ok(PollReport::default());
        }
        self.deliver(first, messages, invoker).await
    }

    async fn deliver(
        &self,
        queue: &QueueRef,
        messages: Vec<Message>,
        invoker: &dyn Invoke,
    ) -> anyhow::Result<PollReport> {
        let event = json!({ "Records": messages.iter().map(|m| record(queue, m)).collect::<Vec<_>>() });
        let ids: HashSet<&str> = messages.iter().filter_map(|m| m.message_id.as_deref()).collect();

        let failed: HashSet<String> = match invoker.invoke(event).await {
            Ok(response) => match failures(&response, &ids) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "unusable batch response; the whole batch will be retried"
                    );
                    ids.iter().map(|s| s.to_string()).collect()
                }
            },
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "invocation failed; the whole batch will be retried");
                ids.iter().map(|s| s.to_string()).collect()
            }
        };
        let done: Vec<&Message> =
            messages.iter().filter(|m| m.message_id.as_deref().is_some_and(|id| !failed.contains(id))).collect();
        if !done.is_empty() {
            let entries = done
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                        .build()
                        .map_err(Into::into)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.sqs
                .delete_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow!("DeleteMessageBatch: {}", DisplayErrorContext(&e)))?;
        }
        Ok(PollReport { received: messages.len(), deleted: done.len(), failed: failed.len() })
    }
}

/// An SQS message as a Lambda event record.
fn record(queue: &QueueRef, m: &Message) -> Value {
    let attributes: serde_json::Map<String, Value> =
        m.attributes.iter().flatten().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect();
    let message_attributes: serde_json::Map<String, Value> = m
            .message_attributes
            .iter()
            .flatten()
            .map(|(k, v)| {
                (k.clone(), json!({"stringValue": v.string_value, "dataType": v.data_type, "stringListValues": [], "binaryListValues": []}))
            })
            .collect();
    json!({
        "messageId": m.message_id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue.arn,
        "awsRegion": LOCAL_REGION,
    })
}

impl Delivery {
    /// Polls until `stop` turns true, with `pollers` receive loops at once (Lambda scales the
    /// same way, up to the event source's `MaximumConcurrency`).
    pub async fn run(self: Arc<Self>, invoker: Arc<dyn Invoke>, pollers: usize, stop: watch::Receiver<bool>) {
        let loops = (0..pollers.max(1)).map(|_| {
            let (me, invoker, mut stop) = (self.clone(), invoker.clone(), stop.clone());
            async move {
                while !*stop.borrow() {
                    tokio::select! {
                        _ = stop.changed() => break,
                        r = me.poll_once(invoker.as_ref()) => if let Err(e) = r {
                            tracing::warn!(error = format!("{e:#}"), "poll failed; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        },
                    }
                }
            }
        });
        // Held messages wait while every poller is busy invoking: keep them out of sight.
        let renewals = {
            let (me, mut stop) = (self.clone(), stop.clone());
            async move {
                while !*stop.borrow() {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tokio::time::sleep(RENEW_AFTER / 3) => if let Err(e) = me.renew_holds().await {
                            tracing::warn!(error = format!("{e:#}"), "renewing held messages failed");
                        },
                    }
                }
            }
        };
        futures::future::join(futures::future::join_all(loops), renewals).await;
        if let Err(e) = self.release().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "held messages could not be handed back; they return within {HOLD_SECS} s"
            );
        }
    }
}

/// The message ids a batch response lists as failed; an id not in the batch makes the whole
/// response unusable, as Lambda treats it.
fn failures(response: &Value, batch: &HashSet<&str>) -> anyhow::Result<HashSet<String>> {
    let list = match response.get("batchItemFailures") {
        None | Some(Value::Null) => return Ok(HashSet::new()),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(anyhow!("batchItemFailures is not a list: {other}")),
    };
    list.iter()
        .map(|f| {
            let id = f["itemIdentifier"].as_str().unwrap_or_default();
            if batch.contains(id) { Ok(id.to_owned()) } else { Err(anyhow!("failure id {id:?} is not in the batch")) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(tenant: &str, n: usize) -> Message {
        Message::builder()
            .message_id(format!("{tenant}-{n}"))
            .attributes(MessageSystemAttributeName::MessageGroupId, tenant)
            .build()
    }

    #[test]
    fn held_messages_are_taken_round_robin_across_fairness_keys_and_the_turn_carries_on() {
        let mut stage = Stage::default();
        (0..5).for_each(|n| stage.push(from("noisy", n), true));
        stage.push(from("quiet", 0), true);
        stage.push(from("other", 0), true);
        stage.push(from("quiet", 1), true);
        let ids = |ms: Vec<Message>| ms.into_iter().map(|m| m.message_id.unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(stage.take(4)), ["noisy-0", "quiet-0", "other-0", "noisy-1"]);
        assert_eq!(ids(stage.take(2)), ["quiet-1", "noisy-2"], "the next batch goes on from the next key");
        assert_eq!(ids(stage.take(10)), ["noisy-3", "noisy-4"]);
        assert_eq!(stage.len(), 0);
    }

    #[test]
    fn failures_are_read_from_the_response() {
        let batch = HashSet::from(["a", "b"]);
        assert_eq!(
            failures(&json!({"batchItemFailures": [{"itemIdentifier": "b"}]}), &batch).unwrap(),
            HashSet::from(["b".to_owned()])
        );
        assert!(failures(&json!({"batchItemFailures": []}), &batch).unwrap().is_empty());
        assert!(failures(&json!(null), &batch).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_failure_id_fails_the_whole_response() {
        let batch = HashSet::from(["a"]);
        assert!(failures(&json!({"batchItemFailures": [{"itemIdentifier": ""}]}), &batch).is_err());
        assert!(failures(&json!({"batchItemFailures": "a"}), &batch).is_err());
    }
}
