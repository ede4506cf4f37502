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

    /// Every priority's queue (the same URL more than once where priorities share one).
    pub fn all(&self) -> [&str; 3] {
        [&self.high, &self.default, &self.low]
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
/// batch, one request per ten). A record names its queue by ARN; the URL is the one the
/// function was configured with for that account and name ([`SqsRequeue::knowing`]), else
/// looked up with `GetQueueUrl` once and remembered.
#[derive(Debug)]
pub struct SqsRequeue {
    client: Client,
    /// By `<account>/<name>`, the two parts a queue's ARN and its URL share.
    urls: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl SqsRequeue {
    pub fn new(client: Client) -> Self {
        Self { client, urls: Default::default() }
    }

    /// Remembers the URLs the function already has (`https://<host>/<account>/<name>`), so
    /// records from those queues need no `GetQueueUrl`: one request fewer for each instance,
    /// on the path of its first requeue. A URL of another shape is left to the lookup.
    pub fn knowing<'a>(self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        let known = urls.into_iter().filter_map(|url| {
            let mut path = url.trim_end_matches('/').rsplit('/');
            let (name, account) = (path.next()?, path.next()?);
            let plausible = !name.is_empty() && !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
            plausible.then(|| (format!("{account}/{name}"), url.to_owned()))
        });
        self.urls.lock().expect("poisoned").extend(known);
        self
    }

    async fn url(&self, arn: &str) -> Result<String, QueueError> {
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = arn.split(':').collect();
        let [_, _, _, _, account, name] = parts[..] else {
            return Err(QueueError(anyhow::anyhow!("not an SQS queue ARN: {arn}")));
        };
        let key = format!("{account}/{name}");
        if let Some(url) = self.urls.lock().expect("poisoned").get(&key) {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| QueueError(anyhow::anyhow!("GetQueueUrl: {}", DisplayErrorContext(&e))))?;
        let url = out.queue_url.ok_or_else(|| QueueError(anyhow::anyhow!("GetQueueUrl returned no URL")))?;
        self.urls.lock().expect("poisoned").insert(key, url.clone());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::{Client, Requeue, SqsRequeue};

    fn client(server: &MockServer) -> Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"))
            .endpoint_url(server.uri())
            .http_client(crate::net::sdk_client())
            .build();
        Client::from_conf(config)
    }

    async fn answer(server: &MockServer, action: &str, body: &str) {
        Mock::given(method("POST"))
            .and(path("/"))
            .and(header("x-amz-target", format!("AmazonSQS.{action}").as_str()))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/x-amz-json-1.0")
                    .set_body_string(body),
            )
            .mount(server)
            .await;
    }

    /// The actions `server` was asked for, in order.
    async fn actions(server: &MockServer) -> Vec<String> {
        let requests = server.received_requests().await.unwrap();
        requests.iter().filter_map(|r| r.headers.get("x-amz-target")?.to_str().ok().map(str::to_owned)).collect()
    }

    const ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:agentq-tasks";

    #[tokio::test]
    async fn a_requeue_on_a_queue_the_function_knows_asks_for_no_url() {
        let server = MockServer::start().await;
        answer(&server, "ChangeMessageVisibilityBatch", r#"{"Successful":[{"Id":"0"}],"Failed":[]}"#).await;
        let known = format!("{}/123456789012/agentq-tasks", server.uri());
        let requeue = SqsRequeue::new(client(&server)).knowing(["not a url", known.as_str()]);
        requeue.set_visibility_all(ARN, &["receipt"], Duration::from_secs(30)).await.unwrap();
        assert_eq!(actions(&server).await, ["AmazonSQS.ChangeMessageVisibilityBatch"]);
        let sent = server.received_requests().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
        assert_eq!(body["QueueUrl"], known.as_str(), "sent to the configured URL");
    }

    #[tokio::test]
    async fn a_requeue_on_a_queue_it_does_not_know_looks_its_url_up_once() {
        let server = MockServer::start().await;
        let url = format!("{}/123456789012/agentq-tasks", server.uri());
        answer(&server, "GetQueueUrl", &serde_json::json!({ "QueueUrl": url }).to_string()).await;
        answer(&server, "ChangeMessageVisibilityBatch", r#"{"Successful":[{"Id":"0"}],"Failed":[]}"#).await;
        let other = format!("{}/123456789012/agentq-tasks-high", server.uri());
        let requeue = SqsRequeue::new(client(&server)).knowing([other.as_str()]);
        for _ in 0..2 {
            requeue.set_visibility_all(ARN, &["receipt"], Duration::from_secs(30)).await.unwrap();
        }
        let expected = ["GetQueueUrl", "ChangeMessageVisibilityBatch", "ChangeMessageVisibilityBatch"];
        assert_eq!(actions(&server).await, expected.map(|a| format!("AmazonSQS.{a}")));
    }
}
