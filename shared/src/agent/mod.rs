//! The agent loop: call the model, run the tools it asks for, send their results back, until
//! it answers or a budget (steps, cost, time) runs out. It knows nothing of AWS: the worker
//! hands it a model chain, tools and a [`Checkpoint`] that persists each step.
//!
//! Stop reasons: `end_turn` and `stop_sequence` end the task with the answer; `tool_use` runs
//! the tools; `pause_turn` sends the turn back so the model can go on; `max_tokens` ends the
//! task with the text so far, flagged `truncated` (continuing would spend more on an answer
//! the caller sized with `AGENTQ_MAX_TOKENS`); `refusal` fails it with code `refused`.

pub mod tools;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::time::Instant;

use std::collections::BTreeMap;

pub use tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};

pub use crate::llm::RetryPolicy;
use crate::llm::{ChainError, ContentBlock, Message, ModelChain, ModelRequest, Role, StopReason};
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
    /// Stop once the run has cost this much (nano-dollars), counting `spent_nanos`.
    pub max_cost_nanos: Option<u64>,
    /// Already spent on this task by earlier attempts.
    pub spent_nanos: u64,
}

/// When to stop trying.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retry: RetryPolicy,
    /// No model call or backoff is started that could not finish before this.
    pub deadline: Option<Instant>,
}

/// Persists each step; the worker's implementation writes progress and renews its lease.
#[async_trait]
pub trait Checkpoint: Send {
    /// Called after every model call with the run so far. An error stops the run: the task is
    /// no longer ours to run.
    async fn step(&mut self, step: u32, report: &Report, model: &str) -> Result<(), anyhow::Error>;
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
    /// The checkpoint refused a step: someone else owns the task now. Write nothing.
    Abandoned(String),
}

/// A run's outcome and what it spent.
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
}

/// Runs one task to an [`Outcome`].
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
    };
    let over_budget = |usage: &Usage| task.max_cost_nanos.is_some_and(|max| task.spent_nanos + usage.cost_nanos >= max);

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

        let (response, model_id) = match models.complete(&request, limits.retry, limits.deadline).await {
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

        report.steps += 1;
        let mut usage = Usage {
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            cache_read_input_tokens: response.usage.cache_read_input_tokens,
            cache_creation_input_tokens: response.usage.cache_creation_input_tokens,
            cost_nanos: 0,
        };
        // The configured id is what the operator priced; the provider may answer with an alias.
        let price = prices.price(&model_id).or_else(|| prices.price(&response.model));
        match price {
            Some(p) => usage.cost_nanos = p.cost_nanos(&usage),
            None => {
                tracing::error!(model = %response.model, "no price for the model that answered; its cost is counted as 0")
            }
        }
        report.usage += usage;
        *report.usage_by_model.entry(model_id.clone()).or_default() += usage;
        report.model = Some(model_id.clone());
        tracing::info!(
            step = report.steps,
            model = %response.model,
            stop_reason = ?response.stop_reason,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            "model answered"
        );

        if let Err(e) = checkpoint.step(report.steps, &report, &model_id).await {
            break Outcome::Abandoned(format!("{e:#}"));
        }
        // A finished answer is delivered even if it crossed the budget: it is paid for.
        if over_budget(&report.usage) && response.stop_reason != StopReason::EndTurn {
            break budget_exceeded(task.max_cost_nanos);
        }

        match response.stop_reason {
            StopReason::EndTurn | StopReason::StopSequence => {
                break Outcome::Succeeded(TaskResult { text: response.text(), truncated: false });
            }
            StopReason::MaxTokens => {
                break Outcome::Succeeded(TaskResult { text: response.text(), truncated: true });
            }
            StopReason::Refusal => {
                break Outcome::Failed(TaskError::new("refused", "the model declined to answer this prompt"));
            }
            StopReason::PauseTurn => {
                request.messages.push(Message { role: Role::Assistant, content: response.content });
            }
            StopReason::ToolUse => {
                let context =
                    ToolContext { task_id: task.task_id.to_owned(), step: report.steps, ..ToolContext::default() };
                let results = run_tools(tools, &context, &response.content).await;
                if results.is_empty() {
                    break Outcome::Failed(TaskError::new(
                        "model_error",
                        "the model stopped for tool use but asked for no tool",
                    ));
                }
                request.messages.push(Message { role: Role::Assistant, content: response.content });
                request.messages.push(Message { role: Role::User, content: results });
            }
            StopReason::Other(reason) => {
                break Outcome::Failed(TaskError::new(
                    "model_error",
                    format!("the model stopped for a reason this version does not handle: {reason}"),
                ));
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

/// Runs every `tool_use` block of a turn, a few at a time, and answers them in order.
async fn run_tools(tools: &ToolRegistry, context: &ToolContext, content: &[ContentBlock]) -> Vec<ContentBlock> {
    // Owned inputs keep the stream's future free of borrowed closure arguments, which the
    // compiler cannot prove `Send` for every lifetime.
    let calls: Vec<(String, String, serde_json::Value)> = content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.clone(), name.clone(), input.clone())),
            _ => None,
        })
        .collect();
    futures::stream::iter(calls.into_iter().map(|call| run_tool(tools, context, call)))
        .buffered(TOOL_CONCURRENCY)
        .collect()
        .await
}

async fn run_tool(
    tools: &ToolRegistry,
    context: &ToolContext,
    (id, name, input): (String, String, serde_json::Value),
) -> ContentBlock {
    let started = Instant::now();
    let out = tools.run(&name, &input, &context.for_call(&id)).await;
    tracing::info!(tool = %name, is_error = out.is_error, latency_ms = started.elapsed().as_millis() as u64, "tool ran");
    ContentBlock::ToolResult { tool_use_id: id, content: out.content, is_error: out.is_error }
}

#[cfg(test)]
mod tests;
