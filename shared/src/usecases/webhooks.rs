//! Webhook delivery, in two moves, both driven by durable records rather than by the code
//! that changed a task (a worker that dies right after its last write loses nothing):
//!
//! 1. **Fan-out.** Each event appended to a task's log (a DynamoDB stream record, or the local
//!    stand-in's poll of the same stream) becomes one [`DeliveryJob`] per target: the task's
//!    own webhook, and every endpoint of the tenant that wants the event's type. The jobs go
//!    to the webhook queue; a batch that cannot be queued is retried whole.
//! 2. **Delivery.** Each job is sent (signed, Standard Webhooks), and the attempt recorded.
//!    One that fails waits in the queue for its next attempt, on the [`RetrySchedule`]; after
//!    the last, the queue's redrive policy moves it to the dead-letter queue, where
//!    [`redrive`] finds it.
//!
//! Every attempt at one event carries the event's id as `webhook-id`, so a receiver can drop
//! the duplicates at-least-once delivery brings.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::events::TaskEvent;
use crate::domain::task::{TaskId, TaskRecord};
use crate::domain::webhooks::{Attempt, DeliveryJob, Endpoint, RetrySchedule, Target, payload};
use crate::observe::metrics::{self, Unit};
use crate::outbound::webhook::{SendPolicy, Sent, send};
use crate::queue::{DeadLetters, DeliveryQueue, QueueError};
use crate::store::{StoreError, TaskRead, WebhookStore};
use crate::usecases::deadletter::{Decision, visit};

/// What the notifier reads and writes.
pub trait NotifierStore: TaskRead + WebhookStore {}
impl<T: TaskRead + WebhookStore> NotifierStore for T {}

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The jobs `events` make, given each task and its tenant's endpoints.
pub fn jobs_for(
    events: &[TaskEvent],
    tasks: &HashMap<TaskId, TaskRecord>,
    endpoints: &HashMap<String, Vec<Endpoint>>,
) -> Vec<DeliveryJob> {
    let mut jobs = Vec::new();
    for event in events {
        let Some(task) = tasks.get(&event.task_id) else { continue };
        let job =
            |target| DeliveryJob { tenant_id: task.tenant_id.clone(), task_id: task.task_id, seq: event.seq, target };
        if task.webhook.is_some() {
            jobs.push(job(Target::Task));
        }
        for endpoint in endpoints.get(&task.tenant_id).into_iter().flatten().filter(|e| e.wants(event.kind)) {
            jobs.push(job(Target::Endpoint { id: endpoint.id.clone() }));
        }
    }
    jobs
}

/// Queues a delivery job for every target of every event; returns how many. Tasks that no
/// longer exist (expired) are skipped.
pub async fn fan_out(
    store: &dyn NotifierStore,
    queue: &dyn DeliveryQueue,
    events: &[TaskEvent],
) -> Result<usize, FanOutError> {
    let mut tasks = HashMap::new();
    let mut endpoints: HashMap<String, Vec<Endpoint>> = HashMap::new();
    for event in events {
        if tasks.contains_key(&event.task_id) {
            continue;
        }
        let Some(task) = store.get(event.task_id).await? else {
            tracing::info!(task_id = %event.task_id, "an event of a task that no longer exists: nothing to deliver");
            continue;
        };
        if !endpoints.contains_key(&task.tenant_id) {
            endpoints.insert(task.tenant_id.clone(), store.endpoints(&task.tenant_id).await?);
        }
        tasks.insert(task.task_id, task);
    }
    let jobs = jobs_for(events, &tasks, &endpoints);
    if !jobs.is_empty() {
        queue.send(&jobs).await?;
    }
    Ok(jobs.len())
}

/// What came of one attempt at a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// It failed; the next attempt is due after this long.
    Retry(Duration),
    /// It failed for the last time: the queue moves it to the dead-letter queue.
    DeadLettered,
    /// Nothing to send: the event, task or endpoint is gone (expired or removed), or the job
    /// does not belong to the task's tenant.
    Dropped(&'static str),
}

/// Where a job goes and what signs it, read at the time of the attempt (so a removed endpoint
/// gets nothing more and a rotated secret signs at once).
async fn destination(
    store: &dyn NotifierStore,
    job: &DeliveryJob,
    now: OffsetDateTime,
) -> Result<Result<(String, Vec<String>), &'static str>, StoreError> {
    Ok(match &job.target {
        Target::Endpoint { id } => match store.endpoint(&job.tenant_id, id).await? {
            Some(e) => Ok((e.url.clone(), e.signing_secrets(now).into_iter().map(str::to_owned).collect())),
            None => Err("the endpoint was removed"),
        },
        Target::Task => match store.get(job.task_id).await? {
            Some(t) if t.tenant_id != job.tenant_id => Err("the job does not match the task's tenant"),
            Some(TaskRecord { webhook: Some(w), .. }) => Ok((w.url, vec![w.secret])),
            Some(_) => Err("the task has no webhook"),
            None => Err("the task no longer exists"),
        },
    })
}

/// Makes attempt number `attempt` (from 1) at `job`, and records it.
pub async fn deliver(
    store: &dyn NotifierStore,
    policy: &SendPolicy,
    schedule: &RetrySchedule,
    job: &DeliveryJob,
    attempt: u32,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let page = store.events(job.task_id, job.seq.saturating_sub(1), 1).await?;
    let Some(event) = page.events.into_iter().find(|e| e.seq == job.seq) else {
        return Ok(Outcome::Dropped("the event no longer exists"));
    };
    let (url, secrets) = match destination(store, job, now).await? {
        Ok(d) => d,
        Err(why) => {
            tracing::info!(task_id = %job.task_id, target = job.target.name(), why, "delivery dropped");
            return Ok(Outcome::Dropped(why));
        }
    };
    let body = serde_json::to_vec(&payload(&event)).unwrap_or_default();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let sent = send(policy, &url, &event.id, &secrets, &body, now.unix_timestamp()).await;
    let outcome = match (sent.delivered(), schedule.after(attempt)) {
        (true, _) => Outcome::Delivered,
        (false, Some(delay)) => Outcome::Retry(delay),
        (false, None) => Outcome::DeadLettered,
    };
    record(store, job, &event, url, attempt, &sent, &outcome, now).await;
    Ok(outcome)
}

/// Records the attempt, and counts it. A record that cannot be written is logged, not
/// retried: the delivery itself is what matters, and retrying it would send it again.
#[allow(clippy::too_many_arguments)]
async fn record(
    store: &dyn NotifierStore,
    job: &DeliveryJob,
    event: &TaskEvent,
    url: String,
    attempt: u32,
    sent: &Sent,
    outcome: &Outcome,
    now: OffsetDateTime,
) {
    let latency_ms = sent.latency.as_millis() as u64;
    let record = Attempt {
        id: crate::domain::webhooks::new_id("att"),
        attempt,
        event_id: event.id.clone(),
        seq: event.seq,
        kind: event.kind,
        target: job.target.clone(),
        url,
        time: now,
        status: sent.status,
        error: sent.error.clone(),
        latency_ms,
        delivered: sent.delivered(),
        next_attempt_at: match outcome {
            Outcome::Retry(delay) => Some(now + *delay),
            _ => None,
        },
        dead_lettered: *outcome == Outcome::DeadLettered,
    };
    let result = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Retry(_) => "failed",
        _ => "dead_lettered",
    };
    tracing::info!(
        task_id = %job.task_id,
        seq = event.seq,
        target = job.target.name(),
        attempt,
        status = sent.status,
        latency_ms,
        result,
        "webhook attempt"
    );
    metrics::record()
        .dimension("result", result)
        .value("WebhookAttempts", 1.0, Unit::Count)
        .value("WebhookLatency", latency_ms as f64, Unit::Milliseconds)
        .emit();
    if let Err(e) = store.record_attempt(job.task_id, &record).await {
        tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "could not record a webhook attempt");
    }
}

/// Sends every dead-lettered delivery back to the webhook queue (for a fresh round of
/// attempts); returns how many. Messages that are not delivery jobs are left where they are.
pub async fn redrive(
    dead: &dyn DeadLetters,
    dead_letter_url: &str,
    queue: &dyn DeliveryQueue,
    task: Option<TaskId>,
    budget: Duration,
) -> Result<usize, QueueError> {
    let moved = std::sync::atomic::AtomicUsize::new(0);
    let moved_ref = &moved;
    visit(dead, dead_letter_url, budget, |m| {
        let job = serde_json::from_str::<DeliveryJob>(&m.body).ok();
        async move {
            let Some(job) = job.filter(|j| task.is_none_or(|t| t == j.task_id)) else { return Decision::Keep };
            match queue.send(std::slice::from_ref(&job)).await {
                Ok(()) => {
                    moved_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Decision::Remove
                }
                Err(e) => {
                    tracing::warn!(error = format!("{:#}", e.0), "could not send a delivery back");
                    Decision::Keep
                }
            }
        }
    })
    .await?;
    Ok(moved.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::EventKind;
    use crate::domain::task::{Allowed, TaskRequest};
    use crate::domain::webhooks::TaskWebhook;
    use crate::queue::MemoryDeliveryQueue;
    use crate::store::{Admission, MemoryStore, Slot, TaskCreate as _};

    async fn task(store: &MemoryStore, tenant: &str, webhook: bool) -> TaskRecord {
        let request = TaskRequest::parse(br#"{"prompt":"hi"}"#, &Allowed::default()).unwrap();
        let mut t = TaskRecord::new(request, tenant, crate::now());
        if webhook {
            t.webhook = Some(TaskWebhook {
                url: "http://127.0.0.1:1/hook".into(),
                secret: crate::domain::webhooks::new_secret().expose().to_owned(),
            });
        }
        store.admit(&t, Admission { max_running: 100, idempotency: None, slot: Slot::Take }).await.unwrap();
        t
    }

    fn event(t: &TaskRecord, seq: u32, kind: EventKind) -> TaskEvent {
        TaskEvent::new(t.task_id, seq, kind, crate::now(), serde_json::json!({}))
    }

    #[tokio::test]
    async fn each_event_goes_to_the_tasks_webhook_and_the_endpoints_that_want_it() {
        let store = MemoryStore::new();
        let queue = MemoryDeliveryQueue::new();
        let now = crate::now();
        let all = Endpoint::new("acme", "https://a.example/".into(), vec![], now);
        let ends = Endpoint::new("acme", "https://b.example/".into(), vec![EventKind::Succeeded], now);
        let elsewhere = Endpoint::new("globex", "https://c.example/".into(), vec![], now);
        for e in [&all, &ends, &elsewhere] {
            store.put_endpoint(e).await.unwrap();
        }
        let (hooked, plain) = (task(&store, "acme", true).await, task(&store, "acme", false).await);
        let events = [event(&hooked, 2, EventKind::Step), event(&plain, 2, EventKind::Succeeded)];
        assert_eq!(fan_out(&store, &queue, &events).await.unwrap(), 4);
        let targets: Vec<(TaskId, String)> =
            queue.sent().iter().map(|j| (j.task_id, j.target.name().to_owned())).collect();
        assert_eq!(
            targets,
            [
                (hooked.task_id, "task".to_owned()),
                (hooked.task_id, all.id.clone()),
                (plain.task_id, all.id.clone()),
                (plain.task_id, ends.id.clone())
            ],
            "never another tenant's endpoint"
        );
        queue.set_down(true);
        assert!(fan_out(&store, &queue, &events).await.is_err(), "a batch that cannot be queued fails whole");
    }

    #[tokio::test]
    async fn a_failed_attempt_waits_on_the_schedule_then_dead_letters() {
        let store = MemoryStore::new();
        let t = task(&store, "acme", true).await;
        let job = DeliveryJob { tenant_id: "acme".into(), task_id: t.task_id, seq: 1, target: Target::Task };
        let policy = SendPolicy::new(true, Duration::from_millis(500));
        let schedule = RetrySchedule { max_attempts: 2, scale_percent: 100 };
        let now = crate::now();
        // Nothing listens on port 1.
        assert_eq!(
            deliver(&store, &policy, &schedule, &job, 1, now).await.unwrap(),
            Outcome::Retry(Duration::from_secs(30))
        );
        assert_eq!(deliver(&store, &policy, &schedule, &job, 2, now).await.unwrap(), Outcome::DeadLettered);
        let page = store.attempts(t.task_id, None, 10).await.unwrap();
        let flags: Vec<(u32, bool, bool)> =
            page.attempts.iter().map(|a| (a.attempt, a.next_attempt_at.is_some(), a.dead_lettered)).collect();
        assert_eq!(flags, [(1, true, false), (2, false, true)]);
        assert!(
            page.attempts.iter().all(|a| a.error.as_deref() == Some("the receiver could not be reached")),
            "{page:?}"
        );

        let stranger = DeliveryJob { tenant_id: "globex".into(), ..job };
        assert_eq!(
            deliver(&store, &policy, &schedule, &stranger, 1, now).await.unwrap(),
            Outcome::Dropped("the job does not match the task's tenant")
        );
    }
}
