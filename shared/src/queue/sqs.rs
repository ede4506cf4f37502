//! The SQS adapter.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;

use super::{QueueError, Requeue, TaskQueue};
use crate::task::TaskMessage;

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self { client, url: url.into() }
    }
}

#[async_trait]
impl TaskQueue for SqsQueue {
    async fn enqueue(&self, message: &TaskMessage) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).context("serializing a task message").map_err(QueueError)?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("SendMessage: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("GetQueueAttributes: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }
}

/// `ChangeMessageVisibility` on the queue a record came from. Queue URLs are looked up from
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
    async fn retry_after(
        &self,
        queue_arn: &str,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let url = self.url(queue_arn).await?;
        // SQS caps a message's visibility at 12 hours from its first receipt.
        let secs = delay.as_secs().min(43_200) as i32;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("ChangeMessageVisibility: {}", DisplayErrorContext(&e))))?;
        Ok(())
    }
}
