//! Answering a task that waits for a person: its pending calls decided (by a client through
//! `POST /v1/tasks/{id}/input`, or rejected by the reconciler when the wait times out),
//! recorded as steps, and the task queued to go on. Shared by the submit function and the
//! reconciler so both resume a task the same way.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::domain::approval::Decision;
use crate::domain::events::TaskEvent;
use crate::domain::task::{TaskMessage, TaskRecord};
use crate::queue::TaskQueue;
use crate::store::{StoreError, TaskInput};

/// Records `decisions` on `task` (as read, `waiting_for_input`) and sends its message.
/// `Conflict` if the task moved meanwhile: decided by someone else, cancelled, timed out.
///
/// The decisions are durable before the message is sent; if the send fails, the task is
/// `queued` with no message, which the reconciler finds and sends again after its grace
/// period, so the caller's answer does not depend on the queue.
pub async fn resume(
    store: &dyn TaskInput,
    queue: &dyn TaskQueue,
    task: &TaskRecord,
    decisions: &[Decision],
    trace: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let event = TaskEvent::resumed(task.task_id, task.events + 1, decisions, now);
    store.resume(task, decisions, &event, now).await?;
    let message = TaskMessage::of(task);
    if let Err(e) = queue.enqueue(&message, trace).await {
        tracing::warn!(
            task_id = %task.task_id,
            error = format!("{:#}", e.0),
            "could not send a resumed task's message; the reconciler will"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::approval::{Action, PendingCall};
    use crate::domain::task::{TaskRequest, TaskStatus};
    use crate::queue::MemoryQueue;
    use crate::store::{Admission, Claim, Lease, MemoryStore, Slot, TaskCreate, TaskRead, TaskRun, Wait};

    #[tokio::test]
    async fn a_decided_task_is_queued_again_with_a_message_and_cannot_be_decided_twice() {
        let (store, queue) = (MemoryStore::new(), MemoryQueue::new());
        let now = crate::now();
        let request = TaskRequest::parse(br#"{"prompt":"x"}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(request, "acme", now);
        store.admit(&task, Admission { max_running: 5, idempotency: None, slot: Slot::Take }).await.unwrap();
        let lease = Lease { owner: "w".into(), until: now + std::time::Duration::from_secs(60) };
        let Claim::Claimed(claimed) = store.claim(task.task_id, &lease, now).await.unwrap() else { panic!() };
        let call =
            PendingCall { step: 1, tool_use_id: "tu".into(), name: "calculator".into(), input: serde_json::json!({}) };
        let event = TaskEvent::waiting(task.task_id, 2, std::slice::from_ref(&call), now, now);
        store.wait(&claimed, &lease, &Wait { pending: vec![call], until: now, event, now }).await.unwrap();
        let waiting = store.get(task.task_id).await.unwrap().unwrap();
        let decision = Decision {
            step: 1,
            tool_use_id: "tu".into(),
            name: "calculator".into(),
            action: Action::Approve,
            message: None,
            input: None,
            by: "key".into(),
            at: now,
        };
        resume(&store, &queue, &waiting, std::slice::from_ref(&decision), &HashMap::new(), now).await.unwrap();
        assert_eq!(store.get(task.task_id).await.unwrap().unwrap().status, TaskStatus::Queued);
        assert_eq!(queue.sent().len(), 1);
        let again = resume(&store, &queue, &waiting, &[decision], &HashMap::new(), now).await;
        assert!(matches!(again, Err(StoreError::Conflict)));
        assert_eq!(queue.sent().len(), 1, "no second message");
    }
}
