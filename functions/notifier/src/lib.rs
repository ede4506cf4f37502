//! The notifier: webhooks from the durable record. Two event sources feed it:
//!
//! - **The task table's stream** (DynamoDB Streams, new images, filtered to inserted `EVT#`
//!   items and inserted tasks): each event appended to a task's log (two from an end written
//!   with the answer before it) is fanned out to
//!   delivery jobs on the webhook queue, and a new task's first event (`task.queued`, which
//!   is derived from the task's item, not stored) with it. Because the stream is fed by the
//!   write itself, a worker that dies just after writing a task's end still has its webhook
//!   sent. A batch whose jobs cannot be queued is reported failed from its first record, and
//!   the stream gives it again.
//! - **The webhook queue**: each job is one signed attempt. A failed attempt stays in the
//!   queue, hidden until its next attempt is due (the retry schedule, by
//!   `ApproximateReceiveCount`); after the last, the queue's redrive policy moves it to the
//!   dead-letter queue, for `agentq webhooks redrive`.

use std::sync::Arc;

use agentq::domain::events::TaskEvent;
use agentq::domain::webhooks::{DeliveryJob, RetrySchedule};
use agentq::outbound::webhook::SendPolicy;
use agentq::queue::{DeliveryQueue, Requeue};
use agentq::store::inserted_events;
use agentq::usecases::webhooks::{self, NotifierStore, Outcome};
use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Notifier {
    pub store: Arc<dyn NotifierStore>,
    pub queue: Arc<dyn DeliveryQueue>,
    pub requeue: Arc<dyn Requeue>,
    pub policy: SendPolicy,
    pub schedule: RetrySchedule,
}

/// Handles a batch from either source, and answers which records failed
/// (`ReportBatchItemFailures`).
pub async fn handle(n: &Notifier, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let source = event.payload["Records"][0]["eventSource"].as_str().unwrap_or_default().to_owned();
    let failures = match source.as_str() {
        "aws:dynamodb" => on_stream(n, serde_json::from_value(event.payload)?).await,
        "aws:sqs" => on_queue(n, serde_json::from_value(event.payload)?).await,
        "" => Vec::new(),
        other => return Err(format!("the notifier does not handle events from {other}").into()),
    };
    let failures: Vec<Value> = failures.into_iter().map(|id| json!({"itemIdentifier": id})).collect();
    Ok(json!({"batchItemFailures": failures}))
}

/// The task events among the stream's records: inserted `EVT#` items and inserted tasks
/// (the event source's filter passes only those; anything else is ignored here too).
pub fn task_events(event: StreamEvent) -> Vec<TaskEvent> {
    event
        .records
        .into_iter()
        .filter(|r| r.event_name == "INSERT")
        .flat_map(|r| match inserted_events(r.change.new_image) {
            Ok(events) => events,
            Err(e) => {
                // Retrying cannot mend it: say so, and let the rest through.
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "a stored event does not read; it is not delivered"
                );
                Vec::new()
            }
        })
        .collect()
}

/// Fans the batch's events out; on failure, reports the batch's first record so the stream
/// gives the whole batch again.
async fn on_stream(n: &Notifier, event: StreamEvent) -> Vec<String> {
    let first = event.records.first().and_then(|r| r.change.sequence_number.clone());
    let events = task_events(event);
    match webhooks::fan_out(n.store.as_ref(), n.queue.as_ref(), &events).await {
        Ok(jobs) => {
            tracing::debug!(events = events.len(), jobs, "fanned out");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "fan-out failed; the stream retries");
            first.into_iter().collect()
        }
    }
}

/// One attempt per job, all at once; the failed ones are reported so they stay queued.
async fn on_queue(n: &Notifier, event: SqsEvent) -> Vec<String> {
    let runs = event.records.iter().map(|record| async move { (record, attempt(n, record).await) });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .filter(|(_, ok)| !ok)
        .filter_map(|(record, _)| record.message_id.clone())
        .collect()
}

/// Makes the attempt a message holds; whether it is done with (delivered or dropped).
async fn attempt(n: &Notifier, record: &SqsMessage) -> bool {
    let Some(job) = record.body.as_deref().and_then(|b| serde_json::from_str::<DeliveryJob>(b).ok()) else {
        // Not ours to understand: it goes to the dead-letter queue for a person to look at.
        tracing::error!(
            message_id = record.message_id.as_deref().unwrap_or(""),
            "a webhook message is not a delivery job"
        );
        return false;
    };
    let attempt: u32 = record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
    match webhooks::deliver(n.store.as_ref(), &n.policy, &n.schedule, &job, attempt, agentq::now()).await {
        Ok(Outcome::Delivered | Outcome::Dropped(_)) => true,
        Ok(Outcome::Retry(delay)) => {
            if let (Some(arn), Some(receipt)) = (record.event_source_arn.as_deref(), record.receipt_handle.as_deref())
                && let Err(e) = n.requeue.set_visibility(arn, receipt, delay).await
            {
                // It comes back after the queue's visibility timeout instead.
                tracing::warn!(error = format!("{:#}", e.0), "could not schedule the next attempt");
            }
            false
        }
        // Left to come back once more, when the queue moves it to the dead-letter queue.
        Ok(Outcome::DeadLettered) => false,
        Err(e) => {
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "a delivery could not be read or recorded");
            false
        }
    }
}
