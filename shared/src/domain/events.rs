//! A task's event log: what happened to it, in order. Events are numbered per task from 1
//! (`seq`) and carry a globally unique id (`evt_<ULID>`), the id a webhook delivery of the
//! event carries too, so a receiver can drop a duplicate.
//!
//! The first event, `task.queued` at seq 1, says only what the task's own record says and
//! never changes (its id is `evt_` and the task's id): a store may derive it from the task
//! instead of writing it ([`TaskEvent::accepted`]), so the log can never lack it or hold it
//! for a task that does not exist.
//!
//! Content (prompts, answers, tool results) is never in an event, only referred to: a client
//! reads it from `GET /v1/tasks/{id}/steps`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::domain::approval::{Decision, PendingCall};
use crate::domain::steps::{ModelStep, Spend};
use crate::domain::task::{TaskError, TaskId, TaskRecord, TaskStatus};

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "task.queued")]
    Queued,
    #[serde(rename = "task.started")]
    Started,
    #[serde(rename = "task.step")]
    Step,
    #[serde(rename = "task.waiting_for_input")]
    WaitingForInput,
    #[serde(rename = "task.resumed")]
    Resumed,
    #[serde(rename = "task.succeeded")]
    Succeeded,
    #[serde(rename = "task.failed")]
    Failed,
    #[serde(rename = "task.cancelled")]
    Cancelled,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        Self::Queued,
        Self::Started,
        Self::Step,
        Self::WaitingForInput,
        Self::Resumed,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "task.queued",
            Self::Started => "task.started",
            Self::Step => "task.step",
            Self::WaitingForInput => "task.waiting_for_input",
            Self::Resumed => "task.resumed",
            Self::Succeeded => "task.succeeded",
            Self::Failed => "task.failed",
            Self::Cancelled => "task.cancelled",
        }
    }

    /// The event a task's terminal `status` is reported by.
    pub fn ending(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Succeeded => Self::Succeeded,
            TaskStatus::Cancelled => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One event of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Unique across all tasks: `evt_<ULID>` (a task's first event: `evt_<task id>`).
    pub id: String,
    pub task_id: TaskId,
    /// 1 for the task's first event, then in order; a seq a claim reserved for a worker that
    /// died before writing its `task.started` stays unused.
    pub seq: u32,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What the event says: the task's status and spending, and what the kind adds.
    pub data: Value,
}

/// Where a task's steps are read (an event points to content, never holds it).
fn steps_url(task: TaskId) -> String {
    format!("/v1/tasks/{task}/steps")
}

/// Where a task is read.
fn task_url(task: TaskId) -> String {
    format!("/v1/tasks/{task}")
}

/// A task's spending as events show it: model calls, tokens and dollars so far.
fn spent(spend: &Spend) -> Value {
    json!({
        "steps": spend.step,
        "input_tokens": spend.usage.input_tokens,
        "output_tokens": spend.usage.output_tokens,
        "cost_usd": spend.usage.cost_usd(),
    })
}

impl TaskEvent {
    pub fn new(task: TaskId, seq: u32, kind: EventKind, time: OffsetDateTime, data: Value) -> Self {
        Self { id: format!("evt_{}", ulid::Ulid::generate()), task_id: task, seq, kind, time, data }
    }

    /// The task was accepted (or queued again by a redrive).
    pub fn queued(task: &TaskRecord, seq: u32, now: OffsetDateTime) -> Self {
        let data = json!({"task_id": task.task_id, "status": "queued", "priority": task.priority});
        Self::new(task.task_id, seq, EventKind::Queued, now, data)
    }

    /// A task's first event: it was accepted. All of it comes from the task's record as the
    /// submit wrote it (id, priority, creation time), so it reads the same whenever it is
    /// derived from the task, the id included.
    pub fn accepted(task: &TaskRecord) -> Self {
        Self { id: format!("evt_{}", task.task_id), ..Self::queued(task, 1, task.created_at) }
    }

    /// A worker started (or resumed) the task.
    pub fn started(task: &TaskRecord, seq: u32, now: OffsetDateTime) -> Self {
        let data = json!({"task_id": task.task_id, "status": "running", "attempt": task.attempts, "spent": spent(&task.spend)});
        Self::new(task.task_id, seq, EventKind::Started, now, data)
    }

    /// The model answered: which step, which model, why it stopped, what it cost.
    pub fn step(task: TaskId, seq: u32, step: &ModelStep, spend: &Spend, now: OffsetDateTime) -> Self {
        let tools = step
            .content
            .iter()
            .filter(|b| matches!(b, crate::domain::conversation::ContentBlock::ToolUse { .. }))
            .count();
        let data = json!({
            "task_id": task,
            "status": "running",
            "step": step.step,
            "model": step.model,
            "stop_reason": step.stop_reason,
            "tool_calls": tools,
            "usage": {"input_tokens": step.usage.input_tokens, "output_tokens": step.usage.output_tokens, "cost_usd": step.usage.cost_usd()},
            "spent": spent(spend),
            "steps_url": steps_url(task),
        });
        Self::new(task, seq, EventKind::Step, now, data)
    }

    /// The run stopped for a person's decision on `pending` (names only: inputs are content).
    pub fn waiting(
        task: TaskId,
        seq: u32,
        pending: &[PendingCall],
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Self {
        let calls: Vec<Value> =
            pending.iter().map(|p| json!({"tool_use_id": p.tool_use_id, "name": p.name, "step": p.step})).collect();
        let data = json!({
            "task_id": task,
            "status": "waiting_for_input",
            "pending": calls,
            "waiting_until": until.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "task_url": task_url(task),
        });
        Self::new(task, seq, EventKind::WaitingForInput, now, data)
    }

    /// Its pending calls were decided: it is queued to go on.
    pub fn resumed(task: TaskId, seq: u32, decisions: &[Decision], now: OffsetDateTime) -> Self {
        let decided: Vec<Value> = decisions
            .iter()
            .map(|d| json!({"tool_use_id": d.tool_use_id, "name": d.name, "action": d.action, "by": d.by}))
            .collect();
        let data = json!({"task_id": task, "status": "queued", "decisions": decided});
        Self::new(task, seq, EventKind::Resumed, now, data)
    }

    /// The task ended with `status`.
    pub fn ended(
        task: TaskId,
        seq: u32,
        status: TaskStatus,
        spend: &Spend,
        error: Option<&TaskError>,
        now: OffsetDateTime,
    ) -> Self {
        let mut data = json!({"task_id": task, "status": status, "spent": spent(spend), "task_url": task_url(task)});
        if let Some(error) = error {
            data["error"] = json!(error);
        }
        Self::new(task, seq, EventKind::ending(status), now, data)
    }
}

/// What a stored event leaves out, for the store to put back: the task's id (in the event and
/// in its data) and the links built from it, all given by the key the event is stored under.
/// An item is billed by the kilobyte, and they were a quarter of a `task.step` event.
impl TaskEvent {
    /// The event as stored under its task's key (see [`TaskEvent::from_stored`]).
    pub fn to_stored(&self) -> Value {
        let mut stored = json!(self);
        if let Some(fields) = stored.as_object_mut() {
            fields.remove("task_id");
        }
        if let Some(data) = stored.get_mut("data").and_then(Value::as_object_mut) {
            for (field, derived) in Self::derived(self.task_id, self.kind) {
                if data.get(field).and_then(Value::as_str) == Some(derived.as_str()) {
                    data.remove(field);
                }
            }
        }
        stored
    }

    /// The event `task` stored as [`TaskEvent::to_stored`] left it, or whole (events stored
    /// before it left anything out read as they were).
    pub fn from_stored(task: TaskId, mut stored: Value) -> Result<Self, serde_json::Error> {
        let kind: Option<EventKind> = stored.get("type").cloned().and_then(|k| serde_json::from_value(k).ok());
        if let Some(fields) = stored.as_object_mut() {
            fields.entry("task_id").or_insert_with(|| json!(task));
        }
        if let (Some(kind), Some(data)) = (kind, stored.get_mut("data").and_then(Value::as_object_mut)) {
            for (field, derived) in Self::derived(task, kind) {
                data.entry(field).or_insert(Value::String(derived));
            }
        }
        serde_json::from_value(stored)
    }

    /// What the data of an event of `kind` holds that is built from its task's id: the id
    /// itself (every kind) and the link the kind carries.
    fn derived(task: TaskId, kind: EventKind) -> Vec<(&'static str, String)> {
        let mut fields = vec![("task_id", task.to_string())];
        match kind {
            EventKind::Step => fields.push(("steps_url", steps_url(task))),
            EventKind::WaitingForInput | EventKind::Succeeded | EventKind::Failed | EventKind::Cancelled => {
                fields.push(("task_url", task_url(task)));
            }
            EventKind::Queued | EventKind::Started | EventKind::Resumed => {}
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_event_reads_back_whole_from_what_is_stored_of_it() {
        let request = crate::domain::task::TaskRequest::parse(br#"{"prompt":"hi"}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(request, "acme", crate::now());
        let (id, now) = (task.task_id, crate::now());
        let step = ModelStep {
            step: 1,
            model: "m".into(),
            content: vec![],
            stop_reason: crate::domain::conversation::StopReason::ToolUse,
            usage: Default::default(),
            call: None,
        };
        let pending = [PendingCall { tool_use_id: "t".into(), name: "n".into(), input: json!({}), step: 1 }];
        let error = TaskError::new(crate::domain::task::ErrorCode::Refused, "no");
        let events = [
            TaskEvent::accepted(&task),
            TaskEvent::started(&task, 2, now),
            TaskEvent::step(id, 3, &step, &Spend::default(), now),
            TaskEvent::waiting(id, 4, &pending, now, now),
            TaskEvent::resumed(id, 5, &[], now),
            TaskEvent::ended(id, 6, TaskStatus::Failed, &Spend::default(), Some(&error), now),
            TaskEvent::ended(id, 7, TaskStatus::Succeeded, &Spend::default(), None, now),
        ];
        for event in events {
            let stored = event.to_stored();
            // The first event's own id is made of the task's: the only place left.
            let text = stored.to_string().replace(&event.id, "");
            assert!(!text.contains(&id.to_string()), "{} keeps no task id: {stored}", event.kind.as_str());
            assert_eq!(TaskEvent::from_stored(id, stored).unwrap(), event);
            assert_eq!(TaskEvent::from_stored(id, json!(event)).unwrap(), event, "stored whole, as before");
        }
    }

    #[test]
    fn events_are_named_as_the_api_documents_them() {
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(EventKind::ending(TaskStatus::Failed), EventKind::Failed);
    }

    #[test]
    fn a_tasks_first_event_is_the_same_every_time_it_is_derived_from_the_task() {
        let request = crate::domain::task::TaskRequest::parse(br#"{"prompt":"hi"}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(request, "acme", crate::now());
        let first = TaskEvent::accepted(&task);
        assert_eq!((first.seq, first.kind, first.time), (1, EventKind::Queued, task.created_at));
        assert_eq!(first.id, format!("evt_{}", task.task_id));
        assert_eq!(first.data["status"], "queued");
        assert_eq!(TaskEvent::accepted(&task), first);
    }

    #[test]
    fn an_ending_event_carries_the_status_spending_and_error_but_no_content() {
        let id = TaskId::new();
        let error = TaskError::new(crate::domain::task::ErrorCode::Refused, "no");
        let e = TaskEvent::ended(id, 4, TaskStatus::Failed, &Spend::default(), Some(&error), crate::now());
        assert_eq!((e.seq, e.kind), (4, EventKind::Failed));
        assert!(e.id.starts_with("evt_"));
        assert_eq!(e.data["error"]["code"], "refused");
        assert_eq!(e.data["status"], "failed");
        assert_ne!(TaskEvent::ended(id, 4, TaskStatus::Failed, &Spend::default(), None, crate::now()).id, e.id);
    }
}
