//! The SQS adapter.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;

use super::{QueueError, TaskQueue};
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
