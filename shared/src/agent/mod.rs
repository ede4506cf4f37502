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

pub mod tools;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::time::Instant;
use tracing::Instrument as _;

use std::collections::BTreeMap;

pub use tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};

pub use crate::llm::RetryPolicy;
use crate::llm::{ChainError, ContentBlock, Message, ModelChain, ModelRequest, Role, StopReason};
use crate::metrics::{self, Unit};
use crate::steps::{ModelStep, Step, ToolStep};
use crate::task::{TaskError, TaskResult};
use crate::usage::{PriceTable, Usage};

/// Tool calls of one turn run at most this many at a time.
const TOOL_CONCURRENCY: usize = 8;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AgentTask<'a> {
    /// Passed to tools (idempotency keys).
    pub task_id: &'a str,
    pub prompt: &'a str,
    pub max_iterations: u32,
    /// Stop once the task has cost this much (nano-dollars), recorded steps included.
    pub max_cost_nanos: Option<u64>,
    /// What earlier runs recorded, in order (see [`Step::sort_key`]).
    pub history: &'a [Step],
}

/// When to stop trying.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retry: RetryPolicy,
    /// No model call or backoff is started that could not finish before this.
    pub deadline: Option<Instant>,
}

/// Persists each step as it happens; the worker's implementation writes it to the store,
/// records progress and renews its lease.
#[async_trait]
pub trait Checkpoint: Send + Sync {
    /// Called after every new model answer, with the run so far. An error stops the run: the
    /// task is no longer ours to run, or was cancelled.
    async fn model_step(&mut self, step: &ModelStep, report: &Report) -> Result<(), anyhow::Error>;

    /// Called after every new tool result. Tools of one turn run concurrently, hence `&self`.
    async fn tool_result(&self, step: &ToolStep) -> Result<(), anyhow::Error>;
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
    /// The checkpoint refused a step: someone else owns the task now, or it was cancelled.
    Abandoned(String),
}

/// A run's outcome and what the task has spent, recorded steps included.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub outcome: Outcome,
    /// Model calls made.
    pub steps: u32,
    pub usage: Usage,
    /// Usage and cost per model that answered.
    pub usage_by_model: BTreeMap<String, Usage>,
    /// The model that gave the last answer.
    pub model: Option<String>,
    /// Model calls this run made (not replayed).
    pub new_calls: u32,
}

impl Report {
    fn count(&mut self, step: &ModelStep) {
        self.steps = step.step;
        self.usage += step.usage;
        *self.usage_by_model.entry(step.model.clone()).or_default() += step.usage;
        self.model = Some(step.model.clone());
    }
}

/// What a model answer means for the run: go on, or stop with an outcome.
enum Next {
    Continue,
    /// Run these tool calls, then go on.
    Tools,
    Done(Outcome),
}

fn next_after(step: &ModelStep) -> Next {
    let text = || crate::llm::text_of(&step.content);
    match &step.stop_reason {
        StopReason::EndTurn | StopReason::StopSequence => {
            Next::Done(Outcome::Succeeded(TaskResult { text: text(), truncated: false }))
        }
        StopReason::MaxTokens => Next::Done(Outcome::Succeeded(TaskResult { text: text(), truncated: true })),
        StopReason::Refusal => {
            Next::Done(Outcome::Failed(TaskError::new("refused", "the model declined to answer this prompt")))
        }
        StopReason::PauseTurn => Next::Continue,
        StopReason::ToolUse if step.content.iter().any(|b| matches!(b, ContentBlock::ToolUse { .. })) => Next::Tools,
        StopReason::ToolUse => Next::Done(Outcome::Failed(TaskError::new(
            "model_error",
            "the model stopped for tool use but asked for no tool",
        ))),
        StopReason::Other(reason) => Next::Done(Outcome::Failed(TaskError::new(
            "model_error",
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
    let mut request =
        ModelRequest { system: None, messages: vec![Message::user_text(task.prompt)], tools: tools.specs() };
    let mut report = Report {
        outcome: Outcome::Abandoned(String::new()),
        steps: 0,
        usage: Usage::default(),
        usage_by_model: BTreeMap::new(),
        model: None,
        new_calls: 0,
    };
    let over_budget = |usage: &Usage| task.max_cost_nanos.is_some_and(|max| usage.cost_nanos >= max);

    // Replay what earlier runs recorded.
    let recorded_tools: BTreeMap<(u32, &str), &ToolStep> = task
        .history
        .iter()
        .filter_map(|s| match s {
            Step::Tool(t) => Some(((t.step, t.tool_use_id.as_str()), t)),
            Step::Model(_) => None,
        })
        .collect();
    for step in task.history.iter().filter_map(|s| match s {
        Step::Model(m) => Some(m),
        Step::Tool(_) => None,
    }) {
        report.count(step);
        request.messages.push(Message { role: Role::Assistant, content: step.content.clone() });
        match next_after(step) {
            Next::Continue => {}
            Next::Done(outcome) => {
                report.outcome = outcome;
                return report;
            }
            Next::Tools => {
                let recorded = |id: &str| recorded_tools.get(&(step.step, id)).map(|t| (*t).clone());
                match run_tools(tools, task.task_id, step, &recorded, &*checkpoint).await {
                    Ok(results) => request.messages.push(Message { role: Role::User, content: results }),
                    Err(e) => {
                        report.outcome = Outcome::Abandoned(format!("{e:#}"));
                        return report;
                    }
                }
            }
        }
    }
    if !task.history.is_empty() {
        tracing::info!(
            replayed_steps = report.steps,
            cost_usd = report.usage.cost_usd(),
            "resumed from recorded steps"
        );
    }

    let outcome = loop {
        if report.steps >= task.max_iterations {
            break Outcome::Failed(TaskError::new(
                "max_iterations_exceeded",
                format!("the model did not finish within {} steps", task.max_iterations),
            ));
        }
        if over_budget(&report.usage) {
            break budget_exceeded(task.max_cost_nanos);
        }
        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            break Outcome::Interrupted(TaskError::new("deadline", "the worker ran out of time; the task will resume"));
        }

        // One span per step: the model call (with its retries and fallbacks), the checkpoint,
        // the tools it asked for.
        let step_span = tracing::info_span!("step", step = report.steps + 1);
        let (response, model_id) =
            match models.complete(&request, limits.retry, limits.deadline).instrument(step_span.clone()).await {
                Ok(r) => r,
                Err(ChainError::Unavailable(e)) => {
                    let detail = e.map_or_else(|| "every model's circuit is open".to_owned(), |e| e.to_string());
                    break Outcome::Interrupted(TaskError::new(
                        "models_unavailable",
                        format!("no model is available: {detail}"),
                    ));
                }
                Err(ChainError::Rejected(e)) => break Outcome::Failed(TaskError::new("model_error", e.to_string())),
            };
        report.new_calls += 1;

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
            step: report.steps + 1,
            model: model_id,
            content: response.content,
            stop_reason: response.stop_reason,
            usage,
        };
        report.count(&step);
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
        if let Err(e) = checkpoint.model_step(&step, &report).instrument(step_span.clone()).await {
            break Outcome::Abandoned(format!("{e:#}"));
        }

        match next_after(&step) {
            Next::Done(outcome) => break outcome,
            // A finished answer is delivered even if it crossed the budget: it is paid for.
            _ if over_budget(&report.usage) => break budget_exceeded(task.max_cost_nanos),
            Next::Continue => request.messages.push(Message { role: Role::Assistant, content: step.content }),
            Next::Tools => {
                let results = match run_tools(tools, task.task_id, &step, &|_| None, &*checkpoint)
                    .instrument(step_span.clone())
                    .await
                {
                    Ok(results) => results,
                    Err(e) => break Outcome::Abandoned(format!("{e:#}")),
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
    Outcome::Failed(TaskError::new("budget_exceeded", format!("the task reached its cost budget of ${max_usd}")))
}

/// Answers every `tool_use` block of a model step, in order: with its recorded result if
/// there is one, else by running the tool (a few at a time) and recording the result.
async fn run_tools(
    tools: &ToolRegistry,
    task_id: &str,
    step: &ModelStep,
    recorded: &(dyn Fn(&str) -> Option<ToolStep> + Sync),
    checkpoint: &dyn Checkpoint,
) -> Result<Vec<ContentBlock>, anyhow::Error> {
    // Owned inputs keep the stream's future free of borrowed closure arguments, which the
    // compiler cannot prove `Send` for every lifetime.
    let calls: Vec<(String, String, serde_json::Value, Option<ToolStep>)> = step
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.clone(), name.clone(), input.clone(), recorded(id))),
            _ => None,
        })
        .collect();
    let context = ToolContext { task_id: task_id.to_owned(), step: step.step, tool_use_id: String::new() };
    let results: Vec<Result<ToolStep, anyhow::Error>> =
        futures::stream::iter(calls.into_iter().map(|call| run_tool(tools, &context, checkpoint, call)))
            .buffered(TOOL_CONCURRENCY)
            .collect()
            .await;
    results
        .into_iter()
        .map(|r| {
            r.map(|t| ContentBlock::ToolResult { tool_use_id: t.tool_use_id, content: t.content, is_error: t.is_error })
        })
        .collect()
}

async fn run_tool(
    tools: &ToolRegistry,
    context: &ToolContext,
    checkpoint: &dyn Checkpoint,
    (id, name, input, recorded): (String, String, serde_json::Value, Option<ToolStep>),
) -> Result<ToolStep, anyhow::Error> {
    if let Some(done) = recorded {
        return Ok(done);
    }
    let started = Instant::now();
    let span = tracing::info_span!("tool_call", tool = %name, tool_use_id = %id);
    let out = tools.run(&name, &input, &context.for_call(&id)).instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        tracing::info!(
            is_error = out.is_error,
            error_type = out.error_type,
            latency_ms,
            input = crate::telemetry::content(&input.to_string()),
            output = crate::telemetry::content(&out.content),
            "tool ran"
        );
    });
    let outcome = out.error_type.unwrap_or("ok");
    metrics::record()
        .dimension("tool", name.as_str())
        .dimension("outcome", outcome)
        .value("ToolCalls", 1.0, Unit::Count)
        .value("ToolLatencyMs", latency_ms as f64, Unit::Milliseconds)
        .property("task_id", context.task_id.as_str())
        .emit();
    let result = ToolStep { step: context.step, tool_use_id: id, name, content: out.content, is_error: out.is_error };
    checkpoint.tool_result(&result).await?;
    Ok(result)
}

#[cfg(test)]
mod tests;
