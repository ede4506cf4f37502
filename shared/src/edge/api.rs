//! The JSON shapes of the HTTP API, shared by the handlers and by anything that reads them
//! (tests, the local tools).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::events::EventKind;
use crate::domain::task::{Priority, TaskError, TaskId, TaskRecord, TaskResult, TaskStatus};
use crate::domain::usage::Usage;
use crate::domain::webhooks::{Attempt, Endpoint, TaskWebhook};
use crate::store::DayUsage;

/// The answer to an accepted submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub task_id: TaskId,
    pub status: TaskStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The task's own webhook, with the secret that signs its deliveries (shown here only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<TaskWebhook>,
    /// For a fork: the task and step it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::domain::fork::ForkOrigin>,
    /// Accepted over the tenant's cap and held in line until a slot frees.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// A webhook endpoint as the API shows it. The secret is shown when it is made (create,
/// rotate) and never again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    /// The event types it receives; empty for all.
    pub events: Vec<EventKind>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the secret before the last rotation still signs beside the new one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

impl EndpointView {
    /// The endpoint without its secret.
    pub fn listed(e: &Endpoint) -> Self {
        Self {
            id: e.id.clone(),
            url: e.url.clone(),
            events: e.events.clone(),
            created_at: e.created_at,
            secret: None,
            previous_secret_expires_at: e.previous_until.filter(|until| *until > crate::now()),
        }
    }

    /// The endpoint with its secret: the answer to a create or a rotate.
    pub fn revealed(e: &Endpoint) -> Self {
        Self { secret: Some(e.secret.clone()), ..Self::listed(e) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointList {
    pub webhooks: Vec<EndpointView>,
}

/// A task's delivery attempts, by event, target and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub task_id: TaskId,
    pub deliveries: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What a test delivery (`webhook.test`) came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestDelivery {
    pub delivered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressView {
    pub step: u32,
    pub max_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cost_usd: u.cost_usd(),
        }
    }
}

/// A task in a list: its state and cost, without its result (read the task for that), so a
/// page stays small whatever the tasks produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: TaskId,
    pub status: TaskStatus,
    /// A cancel was requested while the task ran; it stops at its next step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub priority: Priority,
    /// What the client attached at submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub progress: ProgressView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub usage: UsageView,
    /// Model calls made.
    pub iterations: u32,
    /// The model that gave the latest answer, once one has.
    pub model: Option<String>,
    /// Queued in its tenant's line (over the cap, `over_cap: hold`): it starts when a slot frees.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// While `waiting_for_input`: the tool calls waiting for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<PendingView>>,
    /// While `waiting_for_input`: when the pending calls are rejected if nobody decides.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub waiting_until: Option<OffsetDateTime>,
}

/// A tool call waiting for a decision, as `POST /v1/tasks/{id}/input` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingView {
    pub tool_use_id: String,
    pub name: String,
    pub input: serde_json::Value,
    /// The model step that asked for it.
    pub step: u32,
}

impl From<&TaskRecord> for TaskSummary {
    fn from(r: &TaskRecord) -> Self {
        Self {
            task_id: r.task_id,
            status: r.status,
            cancel_requested: r.cancel_requested && !r.status.is_terminal(),
            priority: r.priority,
            metadata: r.metadata.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            progress: ProgressView { step: r.spend.step, max_steps: r.max_iterations },
            error: r.error.clone(),
            usage: r.spend.usage.into(),
            iterations: r.spend.step,
            model: r.spend.model.clone(),
            held: r.held && r.status == TaskStatus::Queued,
            pending: r.pending.as_ref().filter(|_| r.status == TaskStatus::WaitingForInput).map(|calls| {
                calls
                    .iter()
                    .map(|c| PendingView {
                        tool_use_id: c.tool_use_id.clone(),
                        name: c.name.clone(),
                        input: c.input.clone(),
                        step: c.step,
                    })
                    .collect()
            }),
            waiting_until: r.waiting_until.filter(|_| r.status == TaskStatus::WaitingForInput),
        }
    }
}

/// A task's result: its text, and for a task with an `output_schema` the JSON it parsed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultView {
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

impl From<&TaskResult> for ResultView {
    fn from(r: &TaskResult) -> Self {
        Self {
            text: r.text.clone(),
            truncated: r.truncated,
            // Stored as its text (once, whatever its size); valid JSON when structured.
            json: if r.structured { serde_json::from_str(&r.text).ok() } else { None },
        }
    }
}

/// A task as a client sees it: everything but the prompt (its summary, and its result, its
/// cost per model and its trace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub summary: TaskSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    /// Usage and cost per model that answered (more than one after a fallback).
    pub usage_by_model: BTreeMap<String, UsageView>,
    /// The trace of the task's work, to find it in X-Ray or another tracing backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Where the task's own webhook goes (its secret is shown only by the submit answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// The task's own approval rules, as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::domain::approval::ApprovalPolicy>,
    /// The JSON Schema the final answer must match, as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// For a fork: the task and step it starts from, and how its next turn was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::domain::fork::ForkOrigin>,
    /// The forks made from this task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<crate::domain::fork::ForkRef>,
    /// The schedule whose tick created the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        Self {
            summary: TaskSummary::from(r),
            result: r.result.as_ref().map(ResultView::from),
            usage_by_model: r.spend.usage_by_model.iter().map(|(m, u)| (m.clone(), (*u).into())).collect(),
            trace_id: r.trace_id.clone(),
            webhook_url: r.webhook.as_ref().map(|w| w.url.clone()),
            approval: r.approval.clone(),
            output_schema: r.output_schema.clone(),
            parent: r.fork.clone(),
            forks: r.forks.clone(),
            schedule_id: r.schedule_id.clone(),
        }
    }
}

/// One page of `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Tasks finished on a day, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// One day of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayView {
    pub date: String,
    pub tasks: TaskCounts,
    pub usage: UsageView,
    /// The day's cost in USD by the model that answered.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cost_by_model: std::collections::BTreeMap<String, f64>,
}

impl From<&DayUsage> for DayView {
    fn from(d: &DayUsage) -> Self {
        Self {
            date: d.date.clone(),
            tasks: TaskCounts { succeeded: d.succeeded, failed: d.failed, cancelled: d.cancelled },
            usage: d.usage.into(),
            cost_by_model: d.cost_by_model.iter().map(|(m, c)| (m.clone(), *c as f64 / 1e9)).collect(),
        }
    }
}

/// `GET /v1/usage`: days with activity, and their total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub days: Vec<DayView>,
    pub total: DayTotal,
    /// The tenant's spend limit per calendar month (UTC), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
}

/// The sum over a report's days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayTotal {
    pub tasks: TaskCounts,
    pub usage: UsageView,
}

impl UsageReport {
    pub fn new(from: String, to: String, days: &[DayUsage]) -> Self {
        let mut counts = TaskCounts::default();
        let mut usage = Usage::default();
        for d in days {
            counts.succeeded += d.succeeded;
            counts.failed += d.failed;
            counts.cancelled += d.cancelled;
            usage += d.usage;
        }
        Self {
            from,
            to,
            days: days.iter().map(DayView::from).collect(),
            total: DayTotal { tasks: counts, usage: usage.into() },
            monthly_budget_usd: None,
        }
    }
}

/// One recorded step, as `GET /v1/tasks/{id}/steps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepView {
    Model {
        step: u32,
        model: String,
        content: Vec<crate::llm::ContentBlock>,
        stop_reason: crate::llm::StopReason,
        usage: UsageView,
        /// From the first request to the answer, retries and fallbacks included.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<u64>,
        /// Requests the call sent, failed ones included.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
        /// Models of the chain passed over before the one that answered.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        passed_over: Vec<String>,
    },
    Tool {
        step: u32,
        tool_use_id: String,
        name: String,
        content: String,
        is_error: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// A person's decision on a call that needed approval.
    Decision(crate::domain::approval::Decision),
}

impl From<&crate::domain::steps::Step> for StepView {
    fn from(s: &crate::domain::steps::Step) -> Self {
        match s {
            crate::domain::steps::Step::Model(m) => Self::Model {
                step: m.step,
                model: m.model.clone(),
                content: m.content.clone(),
                stop_reason: m.stop_reason.clone(),
                usage: m.usage.into(),
                latency_ms: m.call.as_ref().map(|c| c.latency_ms),
                attempts: m.call.as_ref().map(|c| c.attempts),
                passed_over: m.call.as_ref().map(|c| c.passed_over.clone()).unwrap_or_default(),
            },
            crate::domain::steps::Step::Tool(t) => Self::Tool {
                step: t.step,
                tool_use_id: t.tool_use_id.clone(),
                name: t.name.clone(),
                content: t.content.clone(),
                is_error: t.is_error,
                duration_ms: t.duration_ms,
            },
            crate::domain::steps::Step::Decision(d) => Self::Decision(d.clone()),
        }
    }
}

/// A step in a list: the step, and whether a fork inherited it from its parent (copied,
/// not billed again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    #[serde(flatten)]
    pub step: StepView,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inherited: bool,
}

/// `GET /v1/tasks/{id}/steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepList {
    pub task_id: TaskId,
    pub steps: Vec<StepEntry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One page of `GET /v1/tasks/{id}/events`: the task's events after `after`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub task_id: TaskId,
    pub events: Vec<crate::domain::events::TaskEvent>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u32>,
}

/// A schedule as the API shows it (`/v1/schedules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub id: String,
    pub schedule: String,
    pub timezone: String,
    pub overlap: crate::domain::schedule::Overlap,
    pub state: crate::domain::schedule::ScheduleState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The body each tick submits.
    pub task: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The next ticks (none while paused).
    #[serde(with = "rfc3339_list")]
    pub next_runs: Vec<OffsetDateTime>,
    /// The latest ticks, newest first: each one's task (and its status, on a single
    /// schedule's read), or why it created none.
    pub runs: Vec<ScheduleRunView>,
}

/// One tick of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRunView {
    #[serde(flatten)]
    pub run: crate::domain::schedule::ScheduleRun,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

impl From<&crate::domain::schedule::ScheduleRecord> for ScheduleView {
    fn from(s: &crate::domain::schedule::ScheduleRecord) -> Self {
        Self {
            id: s.schedule_id.clone(),
            schedule: s.schedule.clone(),
            timezone: s.timezone.clone(),
            overlap: s.overlap,
            state: s.state,
            description: s.description.clone(),
            task: s.task.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            next_runs: s.upcoming(),
            runs: s.runs.iter().map(|r| ScheduleRunView { run: r.clone(), status: None }).collect(),
        }
    }
}

/// A list of instants as RFC 3339 strings.
mod rfc3339_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(v: &[OffsetDateTime], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|t| t.format(&Rfc3339).unwrap_or_default()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OffsetDateTime>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| OffsetDateTime::parse(t, &Rfc3339).map_err(serde::de::Error::custom))
            .collect()
    }
}
