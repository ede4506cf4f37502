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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
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

/// Queues feeding one function, highest priority first.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sqs: aws_sdk_sqs::Client,
    pub queues: Vec<QueueRef>,
    pub batch_size: u32,
    /// Long-poll wait, in seconds (SQS allows 0–20), when every queue was empty.
    pub wait_seconds: i32,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
}

impl Delivery {
    async fn receive(&self, queue: &QueueRef, wait: i32) -> anyhow::Result<Vec<Message>> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(self.batch_size.clamp(1, 10) as i32)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| anyhow!("ReceiveMessage: {}", DisplayErrorContext(&e)))?;
        Ok(received.messages.unwrap_or_default())
    }

    /// Receives one batch, from the highest-priority queue that has messages, and delivers it.
    pub async fn poll_once(&self, invoker: &dyn Invoke) -> anyhow::Result<PollReport> {
        for queue in &self.queues {
            let messages = self.receive(queue, 0).await?;
            if !messages.is_empty() {
                return self.deliver(queue, messages, invoker).await;
            }
        }
        // Nothing anywhere: wait a little on the first queue rather than spin.
        let Some(first) = self.queues.first() else { return Ok(PollReport::default()) };
        let messages = self.receive(first, self.wait_seconds).await?;
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
        futures::future::join_all(loops).await;
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
