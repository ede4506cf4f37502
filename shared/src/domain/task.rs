//! The task: what a client submits, how it is validated, and the record that tracks it from
//! `queued` to a terminal state.
//!
//! A [`TaskRequest`] can only be built by parsing a request body, so a value of that type is
//! always valid; handlers never re-check fields.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use ulid::Ulid;

use crate::domain::approval::{ApprovalPolicy, PendingCall};
use crate::domain::steps::Spend;
use crate::domain::usage::Usage;

/// Longest prompt accepted, in characters: whatever fits the 1 MiB body limit. A prompt too
/// large for a DynamoDB item is kept in S3.
pub const MAX_PROMPT_CHARS: usize = 1024 * 1024;
/// Largest `metadata` object accepted, serialized.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
pub const MAX_ITERATIONS_LIMIT: u32 = 50;
pub const DEFAULT_MAX_ITERATIONS: u32 = 10;

/// A task id: a ULID, so ids sort by creation time and carry 80 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(Ulid);

impl TaskId {
    pub fn new() -> Self {
        Self(Ulid::generate())
    }

    /// The id's random part, to spread tasks evenly (over a tenant's fairness lanes).
    pub fn random_bits(&self) -> u128 {
        self.0.random()
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text is not a task id.
#[derive(Debug, thiserror::Error)]
#[error("not a task id")]
pub struct InvalidTaskId;

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Crockford base32 decoding is case-insensitive, but one task must have one URL.
        if s.len() != 26 || s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(InvalidTaskId);
        }
        Ulid::from_string(s).map(Self).map_err(|_| InvalidTaskId)
    }
}

impl TryFrom<String> for TaskId {
    type Error = InvalidTaskId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.to_string()
    }
}

/// Which queue a task waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Default,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Default, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Default => "default",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// Where a task is in its life. `succeeded`, `failed` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    /// Stopped at a step boundary until a person decides on its pending tool calls.
    #[serde(rename = "waiting_for_input")]
    WaitingForInput,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] =
        [Self::Queued, Self::Running, Self::WaitingForInput, Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::WaitingForInput => "waiting_for_input",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with a request, named by the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Why a request body could not become a [`TaskRequest`].
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
}

/// What a deployment lets a request choose from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Model ids a request may name (the model chain).
    pub models: Vec<String>,
    /// Tool names a request may restrict itself to.
    pub tools: Vec<String>,
    /// MCP servers whose tools (`<server>__<tool>`) a request may name too; their lists are
    /// read by the worker, not here.
    pub mcp_servers: Vec<crate::domain::tooldef::McpServerSpec>,
}

impl Allowed {
    /// Whether a request may name this tool.
    pub fn knows_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t == name) || self.mcp_servers.iter().any(|s| s.claims(name))
    }

    /// The tools a request may name, in words for an error.
    pub fn known_tools(&self) -> String {
        let mut known = self.tools.clone();
        known.extend(self.mcp_servers.iter().map(|s| format!("{}<tool>", s.prefix())));
        known.join(", ")
    }
}

/// Largest per-task budget a request may set, in dollars.
pub const MAX_COST_USD_LIMIT: f64 = 1_000.0;
/// Smallest per-task budget: a micro-dollar (cost is counted in nano-dollars).
pub const MIN_COST_USD: f64 = 0.000_001;

/// A validated task submission.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    prompt: String,
    priority: Priority,
    max_iterations: u32,
    metadata: Option<Map<String, Value>>,
    model: Option<String>,
    tools: Option<Vec<String>>,
    max_cost_nanos: Option<u64>,
    webhook_url: Option<String>,
    output_schema: Option<Map<String, Value>>,
    approval: Option<ApprovalPolicy>,
}

impl TaskRequest {
    pub fn prompt(&self) -> &str {
        &self.prompt
    }
    pub fn priority(&self) -> Priority {
        self.priority
    }
    pub fn max_iterations(&self) -> u32 {
        self.max_iterations
    }
    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.as_ref()
    }
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    pub fn tools(&self) -> Option<&[String]> {
        self.tools.as_deref()
    }
    pub fn max_cost_nanos(&self) -> Option<u64> {
        self.max_cost_nanos
    }
    /// The JSON Schema the final answer must match (`output_schema`), checked when parsed.
    pub fn output_schema(&self) -> Option<&Map<String, Value>> {
        self.output_schema.as_ref()
    }
    /// The task's own approval rules (`approval`): tools whose calls wait for a person.
    pub fn approval(&self) -> Option<&ApprovalPolicy> {
        self.approval.as_ref()
    }
    /// The URL the task's own webhook goes to (`"webhook": {"url"}`), checked only for its
    /// form here: the deployment's outbound rules are the submit path's to apply.
    pub fn webhook_url(&self) -> Option<&str> {
        self.webhook_url.as_deref()
    }

    /// Parses a JSON body, collecting every field error rather than stopping at the first,
    /// so a client fixes its request in one round trip. `allowed` says which models and tools
    /// a request may name.
    pub fn parse(body: &[u8], allowed: &Allowed) -> Result<Self, RequestError> {
        Self::parse_with(body, allowed, |schema| crate::domain::output::OutputSchema::compile(schema).map(drop))
    }

    /// [`Self::parse`] of a request read back from our own table, checked in full when it was
    /// stored (a schedule's task, at each tick): its `output_schema` is checked for shape and
    /// limits but not compiled again. The worker compiles it before the task runs and fails
    /// the task, saying why, should it no longer compile. The scheduler reads its requests
    /// only this way, which keeps the schema validator and its regex engines out of its
    /// package (BENCHMARKS.md, "Init time and package size").
    pub fn parse_stored(body: &[u8], allowed: &Allowed) -> Result<Self, RequestError> {
        Self::parse_with(body, allowed, crate::domain::output::OutputSchema::check_shape)
    }

    fn parse_with(
        body: &[u8],
        allowed: &Allowed,
        check_schema: impl Fn(&Value) -> Result<(), String>,
    ) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(RequestError::Invalid(vec![FieldError::new("", "the body must be a JSON object")]));
        };
        let mut errors = Vec::new();

        let prompt = match fields.remove("prompt") {
            None => {
                errors.push(FieldError::new("prompt", "is required"));
                None
            }
            Some(Value::String(p)) => {
                let chars = p.chars().count();
                if p.trim().is_empty() {
                    errors.push(FieldError::new("prompt", "must not be empty"));
                } else if chars > MAX_PROMPT_CHARS {
                    errors.push(FieldError::new(
                        "prompt",
                        format!("is {chars} characters long; the limit is {MAX_PROMPT_CHARS}"),
                    ));
                }
                Some(p)
            }
            Some(other) => {
                errors.push(FieldError::new("prompt", format!("must be a string, not {}", kind(&other))));
                None
            }
        };

        let priority = match fields.remove("priority") {
            None => Priority::default(),
            Some(Value::String(s)) => s.parse().unwrap_or_else(|()| {
                errors.push(FieldError::new("priority", "must be one of \"high\", \"default\", \"low\""));
                Priority::default()
            }),
            Some(other) => {
                errors.push(FieldError::new("priority", format!("must be a string, not {}", kind(&other))));
                Priority::default()
            }
        };

        let max_iterations = match fields.remove("max_iterations") {
            None => DEFAULT_MAX_ITERATIONS,
            Some(v) => parse_max_iterations(v, &mut errors).unwrap_or(DEFAULT_MAX_ITERATIONS),
        };

        let metadata = match fields.remove("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                let size = serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_METADATA_BYTES {
                    errors.push(FieldError::new(
                        "metadata",
                        format!("is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}"),
                    ));
                }
                Some(m)
            }
            Some(other) => {
                errors.push(FieldError::new("metadata", format!("must be an object, not {}", kind(&other))));
                None
            }
        };

        let model = match fields.remove("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if allowed.models.contains(&m) => Some(m),
            Some(Value::String(m)) => {
                errors.push(FieldError::new(
                    "model",
                    format!("{m:?} is not an allowed model; choose one of {}", allowed.models.join(", ")),
                ));
                None
            }
            Some(other) => {
                errors.push(FieldError::new("model", format!("must be a string, not {}", kind(&other))));
                None
            }
        };

        let tools = match fields.remove("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for item in items {
                    match item {
                        Value::String(name) if !allowed.knows_tool(&name) => errors.push(FieldError::new(
                            "tools",
                            format!("{name:?} is not a known tool; known: {}", allowed.known_tools()),
                        )),
                        Value::String(name) if names.contains(&name) => {}
                        Value::String(name) => names.push(name),
                        other => {
                            errors.push(FieldError::new("tools", format!("must hold strings, not {}", kind(&other))))
                        }
                    }
                }
                Some(names)
            }
            Some(other) => {
                errors.push(FieldError::new("tools", format!("must be an array of tool names, not {}", kind(&other))));
                None
            }
        };

        let max_cost_nanos = match fields.remove("max_cost_usd") {
            None | Some(Value::Null) => None,
            Some(v) => parse_max_cost(v, &mut errors),
        };

        let webhook_url = match fields.remove("webhook") {
            None | Some(Value::Null) => None,
            Some(Value::Object(mut w)) => {
                let url = match w.remove("url") {
                    Some(Value::String(u)) => Some(u),
                    Some(other) => {
                        errors.push(FieldError::new("webhook.url", format!("must be a string, not {}", kind(&other))));
                        None
                    }
                    None => {
                        errors.push(FieldError::new("webhook.url", "is required"));
                        None
                    }
                };
                let mut extra: Vec<_> = w.keys().cloned().collect();
                extra.sort();
                errors
                    .extend(extra.into_iter().map(|k| FieldError::new(format!("webhook.{k}"), "is not a known field")));
                url
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "webhook",
                    format!("must be an object like {{\"url\": …}}, not {}", kind(&other)),
                ));
                None
            }
        };

        let output_schema = match fields.remove("output_schema") {
            None | Some(Value::Null) => None,
            Some(schema) => match check_schema(&schema) {
                Ok(()) => schema.as_object().cloned(),
                Err(why) => {
                    errors.push(FieldError::new("output_schema", why));
                    None
                }
            },
        };

        let approval = match fields.remove("approval") {
            None | Some(Value::Null) => None,
            Some(value) => ApprovalPolicy::parse(value, allowed, &mut errors),
        };

        let mut unknown: Vec<_> = fields.keys().cloned().collect();
        unknown.sort();
        errors.extend(unknown.into_iter().map(|k| FieldError::new(k, "is not a known field")));

        match (prompt, errors.is_empty()) {
            (Some(prompt), true) => Ok(Self {
                prompt,
                priority,
                max_iterations,
                metadata,
                model,
                tools,
                max_cost_nanos,
                webhook_url,
                output_schema,
                approval,
            }),
            _ => Err(RequestError::Invalid(errors)),
        }
    }
}

/// `max_iterations` as a task and a fork take it: an integer from 1 to
/// [`MAX_ITERATIONS_LIMIT`]; anything else is an error (and `None`).
pub(crate) fn parse_max_iterations(value: Value, errors: &mut Vec<FieldError>) -> Option<u32> {
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(n @ 1..) if n <= u64::from(MAX_ITERATIONS_LIMIT) => Some(n as u32),
            _ => {
                errors.push(FieldError::new(
                    "max_iterations",
                    format!("must be an integer from 1 to {MAX_ITERATIONS_LIMIT}"),
                ));
                None
            }
        },
        other => {
            errors.push(FieldError::new("max_iterations", format!("must be an integer, not {}", kind(&other))));
            None
        }
    }
}

/// `max_cost_usd` as a task and a fork take it, in nano-dollars: a number from
/// [`MIN_COST_USD`] to [`MAX_COST_USD_LIMIT`]; anything else is an error (and `None`).
pub(crate) fn parse_max_cost(value: Value, errors: &mut Vec<FieldError>) -> Option<u64> {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(usd) if (MIN_COST_USD..=MAX_COST_USD_LIMIT).contains(&usd) => Some((usd * 1e9).round() as u64),
            _ => {
                errors.push(FieldError::new(
                    "max_cost_usd",
                    format!("must be from {MIN_COST_USD} to {MAX_COST_USD_LIMIT}"),
                ));
                None
            }
        },
        other => {
            errors.push(FieldError::new("max_cost_usd", format!("must be a number, not {}", kind(&other))));
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The stable codes a task ends (or is given back) with. Clients branch on them; the message
/// beside a code is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The task reached its cost budget.
    BudgetExceeded,
    /// A client cancelled it.
    Cancelled,
    /// Its invocation ran out of time (it is handed to the next one).
    Deadline,
    /// Its message could not be sent to the queue at submit.
    EnqueueFailed,
    /// Its message went to the dead-letter queue.
    DeliveryFailed,
    /// A bug in agentq stopped it (a panic); the cause is in the logs.
    InternalError,
    /// The model did not finish within `max_iterations` steps.
    MaxIterationsExceeded,
    /// A model rejected the request.
    ModelError,
    /// Every model of the chain stayed unavailable.
    ModelsUnavailable,
    /// Its tenant's model use reached its per-minute limit: the task paused (as its
    /// `last_error`; it resumes by itself).
    ModelRateLimited,
    /// It waited in the queue longer than the deployment keeps tasks waiting.
    QueueExpired,
    /// The model declined to answer.
    Refused,
    /// The final answer stayed invalid against the task's `output_schema` after corrections.
    OutputInvalid,
    /// It ran longer (wall time, first start to now) than the deployment allows a task.
    RunTooLong,
    /// The task store could not be read or written.
    StoreError,
    /// It was started more times than the deployment allows a task.
    TooManyAttempts,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BudgetExceeded => "budget_exceeded",
            Self::Cancelled => "cancelled",
            Self::Deadline => "deadline",
            Self::EnqueueFailed => "enqueue_failed",
            Self::DeliveryFailed => "delivery_failed",
            Self::InternalError => "internal_error",
            Self::MaxIterationsExceeded => "max_iterations_exceeded",
            Self::ModelError => "model_error",
            Self::ModelsUnavailable => "models_unavailable",
            Self::ModelRateLimited => "model_rate_limited",
            Self::QueueExpired => "queue_expired",
            Self::Refused => "refused",
            Self::OutputInvalid => "output_invalid",
            Self::RunTooLong => "run_too_long",
            Self::StoreError => "store_error",
            Self::TooManyAttempts => "too_many_attempts",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a task failed, in words a client can act on. `code` is stable; `message` is for people
/// and never carries internals (endpoints, SDK errors): those stay in the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
}

impl TaskError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The final answer of a task that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub text: String,
    /// The model stopped because it hit its output token limit: the text may be cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The text is JSON valid against the task's `output_schema` (shown as `result.json`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub structured: bool,
}

impl TaskResult {
    /// A final answer in prose.
    pub fn text(text: impl Into<String>) -> Self {
        Self { text: text.into(), truncated: false, structured: false }
    }
}

/// The stored state of a task: the one record every function reads and the worker updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    /// Who owns the task; nobody else can see it.
    pub tenant_id: String,
    pub status: TaskStatus,
    /// A client asked to cancel the running task; it stops at its next step boundary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub priority: Priority,
    pub prompt: String,
    pub max_iterations: u32,
    /// Stored as JSON text: it is the client's data, and DynamoDB's numbers cannot hold every
    /// JSON number (5e-324, 1e300).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// What it has spent: model calls, tokens and cost.
    #[serde(flatten)]
    pub spend: Spend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// How many times a worker has claimed the task.
    #[serde(default)]
    pub attempts: u32,
    /// The model the request asked for (the head of its chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    /// The tools the request restricted itself to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// The request's cost budget, in nano-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_nanos: Option<u64>,
    /// Why the last delivery could not finish it (it was given back to the queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<TaskError>,
    /// The trace the task's work belongs to (W3C trace id, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The part of `usage` already added to the tenant's counters (day, month, budget). A
    /// terminal transition adds only `usage` beyond it, so a task that ends twice (failed,
    /// redriven, then succeeded) is counted once.
    #[serde(default)]
    pub counted: Usage,
    /// The part of each model's cost (nano-dollars) already added to the tenant's per-day
    /// cost by model, as `counted` is for the totals.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counted_by_model: std::collections::BTreeMap<String, u64>,
    /// When a worker first started it: the run's wall time is measured from here.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// How many times the reconciler sent its message again.
    #[serde(default)]
    pub resends: u32,
    /// The sequence number of the task's last event (its log is numbered from 1).
    #[serde(default)]
    pub events: u32,
    /// The task's own webhook, named on submit: every event of the task is delivered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::domain::webhooks::TaskWebhook>,
    /// The JSON Schema the final answer must match (stored as JSON text, as `metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub output_schema: Option<Map<String, Value>>,
    /// The task's own approval rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
    /// While `waiting_for_input`: the tool calls waiting for a decision (stored as JSON text:
    /// their input is the model's JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub pending: Option<Vec<PendingCall>>,
    /// While `waiting_for_input`: when its calls are rejected if nobody has decided.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub waiting_until: Option<OffsetDateTime>,
    /// For a fork: the task and step it starts from, and how its next turn is edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<crate::domain::fork::ForkOrigin>,
    /// Accepted over its tenant's cap (`over_cap: hold`): it waits in its tenant's line, with
    /// no message and no slot, until one frees.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// The forks made from this task (the first [`MAX_LISTED_FORKS`] of them).
    ///
    /// [`MAX_LISTED_FORKS`]: crate::domain::fork::MAX_LISTED_FORKS
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<crate::domain::fork::ForkRef>,
    /// The schedule whose tick created the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// Which of its tenant's fairness keys its messages go out under (a tenant of weight `w`
    /// has `w`); chosen at admission.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lane: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskRecord {
    /// A new task of `tenant_id`, as stored before it is enqueued.
    pub fn new(request: TaskRequest, tenant_id: &str, now: OffsetDateTime) -> Self {
        Self {
            task_id: TaskId::new(),
            tenant_id: tenant_id.to_owned(),
            status: TaskStatus::Queued,
            cancel_requested: false,
            priority: request.priority,
            prompt: request.prompt,
            max_iterations: request.max_iterations,
            metadata: request.metadata,
            created_at: now,
            updated_at: now,
            spend: Spend::default(),
            result: None,
            error: None,
            attempts: 0,
            requested_model: request.model,
            tools: request.tools,
            max_cost_nanos: request.max_cost_nanos,
            last_error: None,
            trace_id: None,
            counted: Usage::default(),
            counted_by_model: Default::default(),
            started_at: None,
            resends: 0,
            // The `task.queued` event its admission writes.
            events: 1,
            webhook: None,
            output_schema: request.output_schema,
            approval: request.approval,
            pending: None,
            waiting_until: None,
            fork: None,
            forks: Vec::new(),
            held: false,
            schedule_id: None,
            lane: 0,
        }
    }

    /// The task placed in one of the `weight` fairness lanes of its tenant.
    pub fn in_lane_of(mut self, weight: u32) -> Self {
        self.lane = crate::domain::tenant::lane_for(self.task_id.random_bits(), weight);
        self
    }
}

/// (De)serializes an optional JSON value as JSON text.
mod json_text {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.serialize_str(&serde_json::to_string(m).map_err(serde::ser::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// What the deployment allows one task, whatever its own settings: checked by the worker at
/// every claim and by the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Times a worker may start it (a claim: a first run, a hand-off, a retry).
    pub max_attempts: u32,
    /// Wall time from its first start to its end.
    pub max_run: Duration,
    /// Time it may wait `queued` before it is failed `queue_expired`.
    pub max_queued: Duration,
    /// Tool calls run per model answer.
    pub max_tool_calls_per_step: usize,
    /// Tool output bytes one task may accumulate.
    pub max_tool_output_bytes: usize,
}

impl TaskLimits {
    /// The limit `task` is over at `now`, if any, as the error it ends with.
    pub fn exceeded_by(&self, task: &TaskRecord, now: OffsetDateTime) -> Option<TaskError> {
        if task.attempts > self.max_attempts {
            return Some(TaskError::new(
                ErrorCode::TooManyAttempts,
                format!("the task was started {} times; the limit is {}", task.attempts, self.max_attempts),
            ));
        }
        // A task waiting for a person is not running: its wait is bounded by its own timeout.
        if let Some(started) = task.started_at
            && task.status != TaskStatus::WaitingForInput
            && now - started > self.max_run
        {
            return Some(TaskError::new(
                ErrorCode::RunTooLong,
                format!("the task ran longer than the limit of {} seconds", self.max_run.as_secs()),
            ));
        }
        if task.status == TaskStatus::Queued && task.started_at.is_none() && now - task.created_at > self.max_queued {
            return Some(TaskError::new(
                ErrorCode::QueueExpired,
                format!("the task waited longer than the limit of {} seconds to start", self.max_queued.as_secs()),
            ));
        }
        None
    }
}

/// The SQS message body for a task. It names the task and nothing else: the prompt stays in
/// the store, and no secret ever travels through the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub task_id: TaskId,
    pub priority: Priority,
    /// The task's tenant (and lane): sent as the message's fairness key (SQS
    /// `MessageGroupId`, so a tenant's backlog does not hold up the others'), never in the body.
    #[serde(skip)]
    pub fairness_key: Option<String>,
    /// How long the message stays out of sight after it is sent (SQS `DelaySeconds`, at most
    /// 15 minutes): a task paused by its tenant's model rate limit.
    #[serde(skip)]
    pub delay: Option<std::time::Duration>,
}

impl TaskMessage {
    /// The message of a stored task.
    pub fn of(task: &TaskRecord) -> Self {
        Self {
            task_id: task.task_id,
            priority: task.priority,
            fairness_key: Some(crate::domain::tenant::fairness_key(&task.tenant_id, task.lane)),
            delay: None,
        }
    }

    /// The same message, out of sight for `delay` after it is sent.
    pub fn delayed(self, delay: std::time::Duration) -> Self {
        Self { delay: Some(delay), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Allowed {
        Allowed {
            models: vec!["claude-sonnet-4-5".into(), "claude-haiku-4-5".into()],
            tools: vec!["calculator".into(), "current_time".into()],
            ..Default::default()
        }
    }

    fn parse(body: &[u8]) -> Result<TaskRequest, RequestError> {
        TaskRequest::parse(body, &allowed())
    }

    /// The fields a parse refused.
    fn refused(parsed: Result<TaskRequest, RequestError>) -> Vec<String> {
        match parsed {
            Err(RequestError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn a_stored_request_keeps_its_output_schema_uncompiled_but_still_shaped_and_within_limits() {
        let not_a_schema = br#"{"prompt": "p", "output_schema": {"type": 12}}"#;
        assert_eq!(refused(parse(not_a_schema)), ["output_schema"], "a submit compiles it");
        let stored = TaskRequest::parse_stored(not_a_schema, &allowed()).unwrap();
        assert_eq!(stored.output_schema().map(|s| s["type"].clone()), Some(serde_json::json!(12)));

        let deep = (0..40).fold(serde_json::json!({}), |inner, _| serde_json::json!({ "items": inner }));
        for schema in [serde_json::json!("object"), deep] {
            let body = serde_json::json!({"prompt": "p", "output_schema": schema}).to_string();
            assert_eq!(refused(TaskRequest::parse_stored(body.as_bytes(), &allowed())), ["output_schema"]);
        }
        let unknown_model = br#"{"prompt": "p", "model": "gpt-2"}"#;
        assert_eq!(refused(TaskRequest::parse_stored(unknown_model, &allowed())), ["model"], "the rest is checked");
    }

    fn errors_of(body: &str) -> Vec<FieldError> {
        match parse(body.as_bytes()) {
            Err(RequestError::Invalid(e)) => e,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    fn fields_of(body: &str) -> Vec<String> {
        errors_of(body).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let r = parse(br#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(r.prompt(), "hi");
        assert_eq!(r.priority(), Priority::Default);
        assert_eq!(r.max_iterations(), 10);
        assert!(r.metadata().is_none());
    }

    #[test]
    fn a_full_request_keeps_every_field() {
        let r = parse(br#"{"prompt":"hi","priority":"high","max_iterations":50,"metadata":{"a":1}}"#).unwrap();
        assert_eq!(r.priority(), Priority::High);
        assert_eq!(r.max_iterations(), 50);
        assert_eq!(r.metadata().unwrap()["a"], 1);
    }

    #[test]
    fn a_body_that_is_not_json_is_rejected_as_such() {
        assert!(matches!(parse(b"{prompt"), Err(RequestError::NotJson(_))));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_rejected() {
        assert_eq!(fields_of("[1]"), [""]);
    }

    #[test]
    fn every_bad_field_is_named_in_one_answer() {
        let mut f = fields_of(r#"{"prompt":"","priority":"urgent","max_iterations":0,"colour":1}"#);
        f.sort();
        assert_eq!(f, ["colour", "max_iterations", "priority", "prompt"]);
    }

    #[test]
    fn a_missing_prompt_is_required() {
        assert_eq!(errors_of("{}")[0], FieldError::new("prompt", "is required"));
    }

    #[test]
    fn wrong_types_name_their_field() {
        assert_eq!(fields_of(r#"{"prompt":5}"#), ["prompt"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_iterations":"5"}"#), ["max_iterations"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_iterations":2.5}"#), ["max_iterations"]);
        assert_eq!(fields_of(r#"{"prompt":"x","metadata":[1]}"#), ["metadata"]);
        assert_eq!(fields_of(r#"{"prompt":"x","priority":1}"#), ["priority"]);
    }

    #[test]
    fn out_of_range_iterations_are_rejected() {
        assert_eq!(fields_of(r#"{"prompt":"x","max_iterations":51}"#), ["max_iterations"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_iterations":-1}"#), ["max_iterations"]);
    }

    #[test]
    fn a_whitespace_prompt_counts_as_empty() {
        assert_eq!(fields_of(r#"{"prompt":"  \n"}"#), ["prompt"]);
    }

    #[test]
    fn prompt_length_is_counted_in_characters() {
        let ok = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(MAX_PROMPT_CHARS));
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(MAX_PROMPT_CHARS + 1));
        assert_eq!(fields_of(&long), ["prompt"]);
    }

    #[test]
    fn metadata_over_4_kb_is_rejected() {
        let big = format!(r#"{{"prompt":"x","metadata":{{"k":"{}"}}}}"#, "v".repeat(4096));
        assert_eq!(fields_of(&big), ["metadata"]);
    }

    #[test]
    fn a_request_may_choose_an_allowed_model_tools_and_a_budget() {
        let r = parse(
            br#"{"prompt":"x","model":"claude-haiku-4-5","tools":["calculator","calculator"],"max_cost_usd":0.25}"#,
        )
        .unwrap();
        assert_eq!(r.model(), Some("claude-haiku-4-5"));
        assert_eq!(r.tools(), Some(&["calculator".to_owned()][..]));
        assert_eq!(r.max_cost_nanos(), Some(250_000_000));
    }

    #[test]
    fn unknown_models_and_tools_and_bad_budgets_are_rejected() {
        assert_eq!(fields_of(r#"{"prompt":"x","model":"gpt-5"}"#), ["model"]);
        assert_eq!(fields_of(r#"{"prompt":"x","tools":["rm"]}"#), ["tools"]);
        assert_eq!(fields_of(r#"{"prompt":"x","tools":"calculator"}"#), ["tools"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_cost_usd":0}"#), ["max_cost_usd"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_cost_usd":2.2e-309}"#), ["max_cost_usd"]);
        assert_eq!(fields_of(r#"{"prompt":"x","max_cost_usd":"1"}"#), ["max_cost_usd"]);
    }

    fn task_limits() -> TaskLimits {
        TaskLimits {
            max_attempts: 3,
            max_run: Duration::from_secs(60),
            max_queued: Duration::from_secs(600),
            max_tool_calls_per_step: 4,
            max_tool_output_bytes: 1024,
        }
    }

    #[test]
    fn a_task_is_over_its_limits_when_started_too_often_running_too_long_or_waiting_too_long() {
        let now = time::OffsetDateTime::now_utc();
        let mut task = TaskRecord::new(parse(br#"{"prompt":"x"}"#).unwrap(), "acme", now);
        let limits = task_limits();
        assert_eq!(limits.exceeded_by(&task, now + Duration::from_secs(599)), None);
        let code = |t: &TaskRecord, at| limits.exceeded_by(t, at).map(|e| e.code);
        assert_eq!(code(&task, now + Duration::from_secs(601)), Some(ErrorCode::QueueExpired));
        task.status = TaskStatus::Running;
        task.attempts = 3;
        task.started_at = Some(now);
        assert_eq!(code(&task, now + Duration::from_secs(59)), None);
        assert_eq!(code(&task, now + Duration::from_secs(61)), Some(ErrorCode::RunTooLong));
        task.attempts = 4;
        assert_eq!(code(&task, now), Some(ErrorCode::TooManyAttempts));
    }

    #[test]
    fn error_codes_are_written_as_their_names() {
        for code in [ErrorCode::DeliveryFailed, ErrorCode::MaxIterationsExceeded, ErrorCode::RunTooLong] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn task_ids_round_trip_and_reject_garbage() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("not-an-id".parse::<TaskId>().is_err());
        assert!(id.to_string().to_lowercase().parse::<TaskId>().is_err());
    }

    #[test]
    fn task_ids_sort_by_creation() {
        let a = TaskId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TaskId::new();
        assert!(a.to_string() < b.to_string());
    }
}
