//! The agent loop: call the model, run the tools it asks for, send their results back, until
//! it answers or a budget (steps, cost, time) runs out. It knows nothing of AWS: the worker
//! hands it a model chain, tools, the steps a previous run already recorded, and a
//! [`Checkpoint`] that persists each new step the moment it exists.
//!
//! A resumed run replays the recorded steps: their model answers are not asked for again and
//! their cost is counted once; recorded tool results are reused; a tool call whose result was
//! not recorded runs again, with the same idempotency key.
//!
//! Stop reasons: `end_turn` and `stop_sequence` end the task with the answer; `tool_use` runs
//! the tools; `pause_turn` sends the turn back so the model can go on; `max_tokens` ends the
//! task with the text so far, flagged `truncated` (continuing would spend more on an answer
//! the caller sized with `AGENTQ_MAX_TOKENS`); `refusal` fails it with code `refused`.
//!
//! One task must not hurt the others sharing its worker: the tool calls of one step and the
//! tool output of a whole task are capped ([`ToolCaps`]). A call beyond the first cap is not
//! run, and output beyond the second is cut; either way the model is told why in the tool's
//! result, so it can change course.

pub mod replay;
pub mod tools;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::time::Instant;
use tracing::Instrument as _;

use std::collections::BTreeMap;

pub use tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};

use crate::domain::approval::{Action, Decision, PendingCall};
use crate::domain::output::{MAX_CORRECTIONS, OutputSchema};
use crate::domain::steps::{CallStats, ModelStep, Spend, Step, ToolStep};
use crate::domain::task::{ErrorCode, TaskError, TaskResult};
use crate::domain::usage::{PriceTable, Usage};
pub use crate::llm::RetryPolicy;
use crate::llm::{ChainError, ContentBlock, Message, ModelChain, ModelRequest, Role, StopReason};
use crate::observe::metrics::{self, Unit};

/// Tool calls of one turn run at most this many at a time.
const TOOL_CONCURRENCY: usize = 8;

/// Limits on the tools of one task, so it stays within its share of a worker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolCaps {
    /// Tool calls run from one model answer; the rest are answered "not run".
    pub max_calls_per_step: usize,
    /// Bytes of tool output the task may accumulate (recorded results included).
    pub max_output_bytes: usize,
}

impl Default for ToolCaps {
    fn default() -> Self {
        Self { max_calls_per_step: 16, max_output_bytes: 4 * 1024 * 1024 }
    }
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AgentTask<'a> {
    /// Passed to tools (idempotency keys).
    pub task_id: &'a str,
    /// Passed to tools (HTTP tools name the tenant).
    pub tenant_id: &'a str,
    pub prompt: &'a str,
    pub max_iterations: u32,
    /// Stop once the task has cost this much (nano-dollars), recorded steps included.
    pub max_cost_nanos: Option<u64>,
    /// What earlier runs recorded, in order (see [`Step::sort_key`]).
    pub history: &'a [Step],
    /// The JSON Schema the final answer must match, when the task set one.
    pub output: Option<&'a OutputSchema>,
    /// Tools whose calls wait for a person's decision before they run.
    pub approval: &'a [String],
    /// For a fork: the model steps of `history` it inherited from its parent (replayed, but
    /// their cost is the parent's), and the message it adds to the turn after them.
    pub inherited: u32,
    pub fork_message: Option<&'a str>,
}

/// When to stop trying.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retry: RetryPolicy,
    /// No model call or backoff is started that could not finish before this.
    pub deadline: Option<Instant>,
    pub tools: ToolCaps,
}

/// Why a checkpoint stopped the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// Another runner holds the task now.
    #[error("the lease is no longer ours")]
    LeaseLost,
    /// A client asked to cancel it.
    #[error("the client asked to cancel the task")]
    CancelRequested,
    /// The step could not be recorded; the cause is in the message (for logs only).
    #[error("could not record progress: {0}")]
    Store(String),
    /// The tenant's model use is over its per-minute limit: the run stops before its next
    /// model call and resumes at `until`.
    #[error("the tenant's model rate limit is reached until {until}")]
    ModelRateLimited { until: time::OffsetDateTime },
}

/// Persists each step as it happens; the worker's implementation writes it to the store,
/// records progress and renews its lease.
#[async_trait]
pub trait Checkpoint: Send + Sync {
    /// Called after every new model answer, with the run so far. An error stops the run: the
    /// task is no longer ours to run, or was cancelled.
    async fn model_step(&mut self, step: &ModelStep, report: &Report) -> Result<(), Halt>;

    /// Called after every new tool result. Tools of one turn run concurrently, hence `&self`.
    async fn tool_result(&self, step: &ToolStep) -> Result<(), Halt>;

    /// Called before every model call: an error stops the run at this step boundary (the
    /// tenant's model budget for the minute is spent).
    async fn before_model_call(&mut self) -> Result<(), Halt> {
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(TaskResult),
    /// The task itself cannot succeed (a refusal, too many steps, a request the model rejects).
    Failed(TaskError),
    /// The run could not finish now but may later: the model is unavailable, or the deadline
    /// is near. The task should go back to the queue.
    Interrupted(TaskError),
    /// The checkpoint refused a step: someone else owns the task now, it was cancelled, or
    /// the store could not record it.
    Halted(Halt),
    /// The model asked for tools that need a person's decision, and none is recorded: the run
    /// stops at this step boundary, nothing of the step run, until the decisions arrive.
    WaitingForInput(Vec<PendingCall>),
}

/// A run's outcome and what the task has spent, recorded steps included.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub outcome: Outcome,
    pub spend: Spend,
    /// Model calls this run made (not replayed).
    pub new_calls: u32,
}

/// What a model answer means for the run: go on, or stop with an outcome.
enum Next {
    Continue,
    /// Run these tool calls, then go on.
    Tools,
    /// The final answer does not match the output schema: tell the model this, then go on.
    Correct(String),
    Done(Outcome),
}

/// What `step` means for the run. `corrections` counts the invalid final answers sent back so
/// far (replayed steps included, so a resumed run decides as the first one did).
fn next_after(step: &ModelStep, output: Option<&OutputSchema>, corrections: &mut u32) -> Next {
    let text = || crate::llm::text_of(&step.content);
    match (&step.stop_reason, output) {
        (StopReason::EndTurn | StopReason::StopSequence | StopReason::MaxTokens, Some(schema)) => {
            match schema.check(&text()) {
                Ok(json) => Next::Done(Outcome::Succeeded(TaskResult {
                    text: json.to_string(),
                    truncated: false,
                    structured: true,
                })),
                Err(errors) if *corrections < MAX_CORRECTIONS => {
                    *corrections += 1;
                    Next::Correct(OutputSchema::correction(&errors))
                }
                Err(errors) => {
                    let mut detail = errors.join("; ");
                    if detail.chars().count() > 1000 {
                        detail = detail.chars().take(1000).chain(std::iter::once('…')).collect();
                    }
                    Next::Done(Outcome::Failed(TaskError::new(
                        ErrorCode::OutputInvalid,
                        format!(
                            "the final answer did not match output_schema after {MAX_CORRECTIONS} corrections: {detail}"
                        ),
                    )))
                }
            }
        }
        (StopReason::EndTurn | StopReason::StopSequence, None) => {
            Next::Done(Outcome::Succeeded(TaskResult::text(text())))
        }
        (StopReason::MaxTokens, None) => {
            Next::Done(Outcome::Succeeded(TaskResult { text: text(), truncated: true, structured: false }))
        }
        _ => next_after_other(step),
    }
}

/// The stop reasons that mean the same with or without an output schema.
fn next_after_other(step: &ModelStep) -> Next {
    match &step.stop_reason {
        StopReason::EndTurn | StopReason::StopSequence | StopReason::MaxTokens => {
            unreachable!("final answers are decided by next_after")
        }
        StopReason::Refusal => {
            Next::Done(Outcome::Failed(TaskError::new(ErrorCode::Refused, "the model declined to answer this prompt")))
        }
        StopReason::PauseTurn => Next::Continue,
        StopReason::ToolUse if step.content.iter().any(|b| matches!(b, ContentBlock::ToolUse { .. })) => Next::Tools,
        StopReason::ToolUse => Next::Done(Outcome::Failed(TaskError::new(
            ErrorCode::ModelError,
            "the model stopped for tool use but asked for no tool",
        ))),
        StopReason::Other(reason) => Next::Done(Outcome::Failed(TaskError::new(
            ErrorCode::ModelError,
            format!("the model stopped for a reason this version does not handle: {reason}"),
        ))),
    }
}

/// Runs one task to an [`Outcome`], resuming after the steps in `task.history`.
pub async fn run_agent(
    models: &ModelChain,
    tools: &ToolRegistry,
    prices: &PriceTable,
    task: AgentTask<'_>,
    limits: Limits,
    checkpoint: &mut dyn Checkpoint,
) -> Report {
    let mut request = ModelRequest {
        system: task.output.map(OutputSchema::instruction),
        messages: vec![Message::user_text(task.prompt)],
        tools: tools.specs(),
    };
    let mut corrections = 0;
    let mut report =
        Report { outcome: Outcome::Halted(Halt::Store(String::new())), spend: Spend::default(), new_calls: 0 };
    let over_budget = |usage: &Usage| task.max_cost_nanos.is_some_and(|max| usage.cost_nanos >= max);

    // Tool output already recorded counts against the task's cap.
    let recorded_output: usize = task
        .history
        .iter()
        .map(|s| match s {
            Step::Tool(t) => t.content.len(),
            Step::Model(_) | Step::Decision(_) => 0,
        })
        .sum();
    let tool_budget = ToolBudget {
        caps: limits.tools,
        left: std::sync::atomic::AtomicUsize::new(limits.tools.max_output_bytes.saturating_sub(recorded_output)),
    };
    let run = ToolRun { tools, task_id: task.task_id, tenant_id: task.tenant_id, budget: &tool_budget };

    // Replay what earlier runs recorded.
    let recorded_tools: BTreeMap<(u32, &str), &ToolStep> = task
        .history
        .iter()
        .filter_map(|s| match s {
            Step::Tool(t) => Some(((t.step, t.tool_use_id.as_str()), t)),
            Step::Model(_) | Step::Decision(_) => None,
        })
        .collect();
    let decided: BTreeMap<(u32, &str), &Decision> = task
        .history
        .iter()
        .filter_map(|s| match s {
            Step::Decision(d) => Some(((d.step, d.tool_use_id.as_str()), d)),
            Step::Model(_) | Step::Tool(_) => None,
        })
        .collect();
    if let (0, Some(message)) = (task.inherited, task.fork_message) {
        request.messages[0].content.push(ContentBlock::Text { text: message.to_owned() });
    }
    for step in task.history.iter().filter_map(|s| match s {
        Step::Model(m) => Some(m),
        Step::Tool(_) | Step::Decision(_) => None,
    }) {
        if step.step <= task.inherited {
            report.spend.count_inherited(step);
        } else {
            report.spend.count(step);
        }
        request.messages.push(Message { role: Role::Assistant, content: step.content.clone() });
        // A fork goes on from its last inherited step, with its message in the next turn.
        let fork_message = task.fork_message.filter(|_| step.step == task.inherited);
        let with_fork_message = |mut m: Message| {
            if let Some(text) = fork_message {
                m.content.push(ContentBlock::Text { text: text.to_owned() });
            }
            m
        };
        match next_after(step, task.output, &mut corrections) {
            Next::Continue if fork_message.is_some() => {
                request.messages.push(with_fork_message(Message { role: Role::User, content: vec![] }))
            }
            Next::Continue => {}
            Next::Correct(message) => request.messages.push(with_fork_message(Message::user_text(&message))),
            Next::Done(_) if fork_message.is_some() => {
                request.messages.push(with_fork_message(Message { role: Role::User, content: vec![] }))
            }
            Next::Done(outcome) => {
                report.outcome = outcome;
                return report;
            }
            Next::Tools => {
                let recorded = |id: &str| recorded_tools.get(&(step.step, id)).map(|t| (*t).clone());
                let decision = |id: &str| decided.get(&(step.step, id)).map(|d| (*d).clone());
                let pending = awaiting_decision(step, task.approval, &recorded, &decision);
                if !pending.is_empty() {
                    report.outcome = Outcome::WaitingForInput(pending);
                    return report;
                }
                match run.all(step, &recorded, &decision, &*checkpoint).await {
                    Ok(results) => {
                        request.messages.push(with_fork_message(Message { role: Role::User, content: results }))
                    }
                    Err(halt) => {
                        report.outcome = Outcome::Halted(halt);
                        return report;
                    }
                }
            }
        }
    }
    if !task.history.is_empty() {
        tracing::info!(
            replayed_steps = report.spend.step,
            cost_usd = report.spend.usage.cost_usd(),
            "resumed from recorded steps"
        );
    }

    let outcome = loop {
        if report.spend.step >= task.max_iterations {
            break Outcome::Failed(TaskError::new(
                ErrorCode::MaxIterationsExceeded,
                format!("the model did not finish within {} steps", task.max_iterations),
            ));
        }
        if over_budget(&report.spend.usage) {
            break budget_exceeded(task.max_cost_nanos);
        }
        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            break Outcome::Interrupted(TaskError::new(
                ErrorCode::Deadline,
                "the worker ran out of time; the task will resume",
            ));
        }

        if let Err(halt) = checkpoint.before_model_call().await {
            break Outcome::Halted(halt);
        }
        // One span per step: the model call (with its retries and fallbacks), the checkpoint,
        // the tools it asked for.
        let step_span = tracing::info_span!("step", step = report.spend.step + 1);
        let called = Instant::now();
        let answered =
            match models.complete(&request, limits.retry, limits.deadline).instrument(step_span.clone()).await {
                Ok(r) => r,
                Err(ChainError::Unavailable(e)) => {
                    // The provider's words may name endpoints: they go to the log, not the task.
                    let detail = e.map_or_else(|| "every model's circuit is open".to_owned(), |e| e.to_string());
                    tracing::warn!(detail, "no model is available");
                    break Outcome::Interrupted(TaskError::new(
                        ErrorCode::ModelsUnavailable,
                        "no model of the chain is available right now; the task will be tried again",
                    ));
                }
                Err(ChainError::Rejected(e)) => {
                    break Outcome::Failed(TaskError::new(ErrorCode::ModelError, e.client_message()));
                }
            };
        report.new_calls += 1;
        let call = CallStats {
            latency_ms: called.elapsed().as_millis() as u64,
            attempts: answered.attempts,
            passed_over: answered.passed_over,
        };
        let (response, model_id) = (answered.response, answered.model);

        let mut usage = Usage {
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            cache_read_input_tokens: response.usage.cache_read_input_tokens,
            cache_creation_input_tokens: response.usage.cache_creation_input_tokens,
            cost_nanos: 0,
        };
        // The configured id is what the operator priced; the provider may answer with an alias.
        match prices.price(&model_id).or_else(|| prices.price(&response.model)) {
            Some(p) => usage.cost_nanos = p.cost_nanos(&usage),
            None => {
                tracing::error!(model = %response.model, "no price for the model that answered; its cost is counted as 0")
            }
        }
        let step = ModelStep {
            step: report.spend.step + 1,
            model: model_id,
            content: response.content,
            stop_reason: response.stop_reason,
            usage,
            call: Some(call),
        };
        report.spend.count(&step);
        metrics::record()
            .dimension("model", step.model.as_str())
            .value("InputTokens", usage.input_tokens as f64, Unit::Count)
            .value("OutputTokens", usage.output_tokens as f64, Unit::Count)
            .value("ModelCostUsd", usage.cost_usd(), Unit::None)
            .property("task_id", task.task_id)
            .emit();
        tracing::info!(
            step = step.step,
            model = %step.model,
            stop_reason = ?step.stop_reason,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            "model answered"
        );
        if let Err(halt) = checkpoint.model_step(&step, &report).instrument(step_span.clone()).await {
            break Outcome::Halted(halt);
        }

        match next_after(&step, task.output, &mut corrections) {
            Next::Done(outcome) => break outcome,
            // A finished answer is delivered even if it crossed the budget: it is paid for.
            _ if over_budget(&report.spend.usage) => break budget_exceeded(task.max_cost_nanos),
            Next::Continue => request.messages.push(Message { role: Role::Assistant, content: step.content }),
            Next::Correct(message) => {
                request.messages.push(Message { role: Role::Assistant, content: step.content });
                request.messages.push(Message::user_text(&message));
            }
            Next::Tools => {
                // A live step has nothing recorded in a worker's run; a replay may bring its
                // tools' recorded results and the decisions on its calls.
                let recorded = |id: &str| recorded_tools.get(&(step.step, id)).map(|t| (*t).clone());
                let decision = |id: &str| decided.get(&(step.step, id)).map(|d| (*d).clone());
                let pending = awaiting_decision(&step, task.approval, &recorded, &decision);
                if !pending.is_empty() {
                    break Outcome::WaitingForInput(pending);
                }
                let results =
                    match run.all(&step, &recorded, &decision, &*checkpoint).instrument(step_span.clone()).await {
                        Ok(results) => results,
                        Err(halt) => break Outcome::Halted(halt),
                    };
                request.messages.push(Message { role: Role::Assistant, content: step.content });
                request.messages.push(Message { role: Role::User, content: results });
            }
        }
    };
    report.outcome = outcome;
    report
}

fn budget_exceeded(max: Option<u64>) -> Outcome {
    let max_usd = max.unwrap_or_default() as f64 / 1e9;
    Outcome::Failed(TaskError::new(
        ErrorCode::BudgetExceeded,
        format!("the task reached its cost budget of ${max_usd}"),
    ))
}

/// The calls of `step` that need approval and have neither a recorded result nor a decision.
fn awaiting_decision(
    step: &ModelStep,
    approval: &[String],
    recorded: &(dyn Fn(&str) -> Option<ToolStep> + Sync),
    decision: &(dyn Fn(&str) -> Option<Decision> + Sync),
) -> Vec<PendingCall> {
    step.content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input }
                if approval.contains(name) && recorded(id).is_none() && decision(id).is_none() =>
            {
                Some(PendingCall { step: step.step, tool_use_id: id.clone(), name: name.clone(), input: input.clone() })
            }
            _ => None,
        })
        .collect()
}

/// The tool output a task may still accumulate, shared by the calls of a step.
struct ToolBudget {
    caps: ToolCaps,
    left: std::sync::atomic::AtomicUsize,
}

impl ToolBudget {
    /// Takes up to `want` bytes; returns how many were granted.
    fn take(&self, want: usize) -> usize {
        use std::sync::atomic::Ordering;
        let before = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| Some(left.saturating_sub(want)))
            .unwrap_or(0);
        before.min(want)
    }

    fn exhausted(&self) -> bool {
        self.left.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// What running a step's tools needs: the tools, whose task it is, and its output budget.
struct ToolRun<'a> {
    tools: &'a ToolRegistry,
    task_id: &'a str,
    tenant_id: &'a str,
    budget: &'a ToolBudget,
}

impl ToolRun<'_> {
    /// Answers every `tool_use` block of a model step, in order: with its recorded result if
    /// there is one, else by running the tool (a few at a time) and recording the result.
    async fn all(
        &self,
        step: &ModelStep,
        recorded: &(dyn Fn(&str) -> Option<ToolStep> + Sync),
        decision: &(dyn Fn(&str) -> Option<Decision> + Sync),
        checkpoint: &dyn Checkpoint,
    ) -> Result<Vec<ContentBlock>, Halt> {
        // Owned inputs keep the stream's future free of borrowed closure arguments, which the
        // compiler cannot prove `Send` for every lifetime.
        let calls: Vec<Call> = step
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse { id, name, input } => Some(Call {
                    id: id.clone(),
                    name: name.clone(),
                    input: input.clone(),
                    recorded: recorded(id),
                    decision: decision(id),
                }),
                _ => None,
            })
            .collect();
        let asked = calls.len();
        let context = ToolContext {
            task_id: self.task_id.to_owned(),
            tenant_id: self.tenant_id.to_owned(),
            step: step.step,
            tool_use_id: String::new(),
        };
        let results: Vec<Result<ToolStep, Halt>> = futures::stream::iter(
            calls.into_iter().enumerate().map(|(i, call)| self.one(&context, checkpoint, call, i, asked)),
        )
        .buffered(TOOL_CONCURRENCY)
        .collect()
        .await;
        results
            .into_iter()
            .map(|r| {
                r.map(|t| ContentBlock::ToolResult {
                    tool_use_id: t.tool_use_id,
                    content: t.content,
                    is_error: t.is_error,
                })
            })
            .collect()
    }

    /// Runs the `index`th of `asked` calls of a step, within the caps, and records its result.
    async fn one(
        &self,
        context: &ToolContext,
        checkpoint: &dyn Checkpoint,
        call: Call,
        index: usize,
        asked: usize,
    ) -> Result<ToolStep, Halt> {
        if let Some(done) = call.recorded {
            return Ok(done);
        }
        let caps = self.budget.caps;
        let refused = if index >= caps.max_calls_per_step {
            Some(format!(
                "not run: {asked} tool calls were asked for in one step and at most {} run; ask for fewer at a time",
                caps.max_calls_per_step
            ))
        } else if self.budget.exhausted() {
            Some(format!(
                "not run: this task has used its tool output limit of {} bytes; answer with what you have",
                caps.max_output_bytes
            ))
        } else {
            call.decision.as_ref().filter(|d| d.action == Action::Reject).map(Decision::rejection_text)
        };
        let started = Instant::now();
        let (content, is_error, duration_ms) = match refused {
            Some(why) => (why, true, None),
            None => {
                let out = self.run(context, &call).await;
                (self.fit(out.content), out.is_error, Some(started.elapsed().as_millis() as u64))
            }
        };
        let result =
            ToolStep { step: context.step, tool_use_id: call.id, name: call.name, content, is_error, duration_ms };
        checkpoint.tool_result(&result).await?;
        Ok(result)
    }

    /// Cuts `content` to what is left of the task's tool output budget, saying so.
    fn fit(&self, mut content: String) -> String {
        let granted = self.budget.take(content.len());
        if granted < content.len() {
            let mut cut = granted;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
            content.push_str(&format!(
                "\n[cut: this task reached its tool output limit of {} bytes]",
                self.budget.caps.max_output_bytes
            ));
        }
        content
    }

    async fn run(&self, context: &ToolContext, call: &Call) -> ToolOutput {
        let started = Instant::now();
        let span = tracing::info_span!("tool_call", tool = %call.name, tool_use_id = %call.id);
        // An edit runs the tool on the reviewer's input instead of the model's.
        let input = match &call.decision {
            Some(Decision { action: Action::Edit, input: Some(edited), .. }) => edited,
            _ => &call.input,
        };
        let out = self.tools.run(&call.name, input, &context.for_call(&call.id)).instrument(span.clone()).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        span.in_scope(|| {
            tracing::info!(
                is_error = out.is_error,
                error_type = out.error_type,
                latency_ms,
                input = crate::observe::telemetry::content(&input.to_string()),
                output = crate::observe::telemetry::content(&out.content),
                "tool ran"
            );
        });
        metrics::record()
            .dimension("tool", metric_tool_name(self.tools, &call.name))
            .dimension("outcome", out.error_type.unwrap_or("ok"))
            .value("ToolCalls", 1.0, Unit::Count)
            .value("ToolLatencyMs", latency_ms as f64, Unit::Milliseconds)
            .property("task_id", context.task_id.as_str())
            .emit();
        out
    }
}

/// The `tool` dimension of a call's metrics: a name the model made up must not become a
/// metric of its own (CloudWatch bills each one).
fn metric_tool_name<'a>(tools: &ToolRegistry, name: &'a str) -> &'a str {
    if tools.knows(name) { name } else { "unknown" }
}

/// One `tool_use` block of a step, its recorded result if an earlier run made one, and the
/// decision on it if it needed one.
struct Call {
    id: String,
    name: String,
    input: serde_json::Value,
    recorded: Option<ToolStep>,
    decision: Option<Decision>,
}

#[cfg(test)]
mod tests;
