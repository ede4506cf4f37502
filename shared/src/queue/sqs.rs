//! The SQS adapter.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;

use super::{DeliveryQueue, QueueError, Requeue, TaskQueue};
use crate::domain::task::{Priority, TaskMessage};
use crate::domain::webhooks::DeliveryJob;

/// The queue URL of each priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub high: String,
    pub default: String,
    pub low: String,
}

impl QueueUrls {
    /// One queue for every priority.
    pub fn single(url: impl Into<String>) -> Self {
        let url = url.into();
        Self { high: url.clone(), default: url.clone(), low: url }
    }

    pub fn for_priority(&self, p: Priority) -> &str {
        match p {
            Priority::High => &self.high,
            Priority::Default => &self.default,
            Priority::Low => &self.low,
        }
    }
}

/// Sends each task to its priority's queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    urls: QueueUrls,
}

impl SqsQueue {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self { client, urls }
    }
}

#[async_trait]
impl TaskQueue for SqsQueue {
    async fn enqueue(
        &self,
        message: &TaskMessage,
        trace: &std::collections::HashMap<String, String>,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).context("serializing a task message").map_err(QueueError)?;
        // The tenant is the fairness key of SQS fair queues: a tenant with a backlog does not
        // hold up the others' messages (docs/fairness.md).
        let send = self.client.send_message().queue_url(self.urls.for_priority(message.priority)).message_body(body);
        let delay = message.delay.map(|d| d.as_secs().min(900) as i32);
        let mut send = send.set_message_group_id(message.fairness_key.clone()).set_delay_seconds(delay);
        // SQS refuses empty attribute values (an empty `tracestate` is common).
        for (k, v) in trace.iter().filter(|(_, v)| !v.is_empty()) {
            let attr = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .context("building a message attribute")
                .map_err(QueueError)?;
            send = send.message_attributes(k, attr);
        }
        send.send().await.map_err(|e| QueueError(anyhow::anyhow!("SendMessage: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        for url in [&self.urls.high, &self.urls.default, &self.urls.low] {
            self.client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|e| QueueError(anyhow::anyhow!("GetQueueAttributes: {}", DisplayErrorContext(&e))))?;
        }
        Ok(())
    }
}

/// `ChangeMessageVisibilityBatch` on the queue a record came from (one message or a whole
/// batch, one request per ten). Queue URLs are looked up from
/// the record's ARN once and remembered.
#[derive(Debug)]
pub struct SqsRequeue {
    client: Client,
    urls: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl SqsRequeue {
    pub fn new(client: Client) -> Self {
        Self { client, urls: Default::default() }
    }

    async fn url(&self, arn: &str) -> Result<String, QueueError> {
        if let Some(url) = self.urls.lock().expect("poisoned").get(arn) {
            return Ok(url.clone());
        }
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = arn.split(':').collect();
        let [_, _, _, _, account, name] = parts[..] else {
            return Err(QueueError(anyhow::anyhow!("not an SQS queue ARN: {arn}")));
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("GetQueueUrl: {}", DisplayErrorContext(&e))))?;
        let url = out.queue_url.ok_or_else(|| QueueError(anyhow::anyhow!("GetQueueUrl returned no URL")))?;
        self.urls.lock().expect("poisoned").insert(arn.to_owned(), url.clone());
        Ok(url)
    }
}

#[async_trait]
impl Requeue for SqsRequeue {
    async fn set_visibility_all(
        &self,
        queue_arn: &str,
        receipt_handles: &[&str],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        if receipt_handles.is_empty() {
            return Ok(());
        }
        let url = self.url(queue_arn).await?;
        match change_visibility(&self.client, &url, receipt_handles, delay).await?.as_slice() {
            [] => Ok(()),
            refused => Err(QueueError(anyhow::anyhow!(
                "ChangeMessageVisibilityBatch refused {} of {} messages ({})",
                refused.len(),
                receipt_handles.len(),
                refused.join(", ")
            ))),
        }
    }
}

/// `ChangeMessageVisibilityBatch` of `receipts` in `queue_url`, ten to a request: the codes of
/// the entries the queue refused (a receipt already deleted, say), if any.
async fn change_visibility(
    client: &Client,
    queue_url: &str,
    receipts: &[impl AsRef<str>],
    delay: std::time::Duration,
) -> Result<Vec<String>, QueueError> {
    use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
    // SQS caps a message's visibility at 12 hours from its first receipt.
    let secs = delay.as_secs().min(43_200) as i32;
    let mut refused = Vec::new();
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Entry::builder().id(i.to_string()).receipt_handle(r.as_ref()).visibility_timeout(secs).build()
            })
            .collect::<Result<Vec<_>, _>>()
            .context("building a visibility change")
            .map_err(QueueError)?;
        let out = client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("ChangeMessageVisibilityBatch: {}", DisplayErrorContext(&e))))?;
        refused.extend(out.failed.into_iter().map(|f| f.code));
    }
    Ok(refused)
}

/// The dead-letter queues on SQS.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    client: Client,
}

impl SqsDeadLetters {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn dead_message(queue_url: &str, m: aws_sdk_sqs::types::Message) -> super::DeadMessage {
    use aws_sdk_sqs::types::MessageSystemAttributeName as Attr;
    let attr = |name: Attr| m.attributes.as_ref().and_then(|a| a.get(&name)).cloned();
    super::DeadMessage {
        queue_url: queue_url.to_owned(),
        task: m.body.as_deref().and_then(|b| serde_json::from_str(b).ok()),
        body: m.body.clone().unwrap_or_default(),
        receive_count: attr(Attr::ApproximateReceiveCount).and_then(|c| c.parse().ok()).unwrap_or(0),
        sent_at_ms: attr(Attr::SentTimestamp).and_then(|c| c.parse().ok()),
        message_id: m.message_id.unwrap_or_default(),
        receipt: m.receipt_handle.unwrap_or_default(),
    }
}

#[async_trait]
impl super::DeadLetters for SqsDeadLetters {
    async fn receive(&self, queue_url: &str, hide: std::time::Duration) -> Result<Vec<super::DeadMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(hide.as_secs().clamp(1, 43_200) as i32)
            // A long poll asks every server, so an empty answer means an empty queue (a short
            // one samples a few and may miss messages).
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("ReceiveMessage: {}", DisplayErrorContext(&e))))?;
        Ok(out.messages.unwrap_or_default().into_iter().map(|m| dead_message(queue_url, m)).collect())
    }

    async fn release(&self, queue_url: &str, receipts: &[String]) -> Result<(), QueueError> {
        let refused = change_visibility(&self.client, queue_url, receipts, std::time::Duration::ZERO).await?;
        if !refused.is_empty() {
            // Such a message reappears when its hide runs out anyway: worth a line, not a failure.
            tracing::warn!(refused = refused.len(), codes = refused.join(", "), "some dead letters were not released");
        }
        Ok(())
    }

    async fn delete(&self, queue_url: &str, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("DeleteMessage: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }
}

/// Sends delivery jobs to the webhook queue, ten to a `SendMessageBatch`.
#[derive(Debug, Clone)]
pub struct SqsDeliveryQueue {
    client: Client,
    url: String,
}

impl SqsDeliveryQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self { client, url: url.into() }
    }
}

#[async_trait]
impl DeliveryQueue for SqsDeliveryQueue {
    async fn send(&self, jobs: &[DeliveryJob]) -> Result<(), QueueError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry as Entry;
        for chunk in jobs.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, job)| {
                    let body = serde_json::to_string(job).context("serializing a delivery job")?;
                    Entry::builder().id(i.to_string()).message_body(body).build().context("building a batch entry")
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(QueueError)?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError(anyhow::anyhow!("SendMessageBatch: {}", DisplayErrorContext(&e))))?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError(anyhow::anyhow!(
                    "SendMessageBatch refused {} of {} jobs: {}",
                    out.failed.len(),
                    chunk.len(),
                    failed.message.as_deref().unwrap_or(&failed.code)
                )));
            }
        }
        Ok(())
    }
}
