//! The agent loop: call the model, run the tools it asks for, send their results back, until
//! it answers or the step budget runs out. It knows nothing of AWS: the worker hands it a
//! model, tools and a [`Checkpoint`] that persists each step.
//!
//! Stop reasons: `end_turn` and `stop_sequence` end the task with the answer; `tool_use` runs
//! the tools; `pause_turn` sends the turn back so the model can go on; `max_tokens` ends the
//! task with the text so far, flagged `truncated` (continuing would spend more on an answer
//! the caller sized with `AGENTQ_MAX_TOKENS`); `refusal` fails it with code `refused`.

pub mod retry;
pub mod tools;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::time::Instant;

pub use retry::{RetryPolicy, complete_with_retries};
pub use tools::{Tool, ToolError, ToolOutput, ToolRegistry};

use crate::llm::{ContentBlock, Message, Model, ModelRequest, Role, StopReason};
use crate::task::{TaskError, TaskResult};
use crate::usage::{PriceTable, Usage};

/// Tool calls of one turn run at most this many at a time.
const TOOL_CONCURRENCY: usize = 8;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AgentTask<'a> {
    pub prompt: &'a str,
    pub max_iterations: u32,
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
    /// Called after every model call with the totals so far. An error stops the run: the
    /// task is no longer ours to run.
    async fn step(&mut self, step: u32, usage: &Usage, model: &str) -> Result<(), anyhow::Error>;
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
    /// The model that gave the last answer.
    pub model: Option<String>,
}

/// Runs one task to an [`Outcome`].
pub async fn run_agent(
    model: &dyn Model,
    tools: &ToolRegistry,
    prices: &PriceTable,
    task: AgentTask<'_>,
    limits: Limits,
    checkpoint: &mut dyn Checkpoint,
) -> Report {
    let mut request =
        ModelRequest { system: None, messages: vec![Message::user_text(task.prompt)], tools: tools.specs() };
    let mut report =
        Report { outcome: Outcome::Abandoned(String::new()), steps: 0, usage: Usage::default(), model: None };

    let outcome = loop {
        if report.steps >= task.max_iterations {
            break Outcome::Failed(TaskError::new(
                "max_iterations_exceeded",
                format!("the model did not finish within {} steps", task.max_iterations),
            ));
        }
        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            break Outcome::Interrupted(TaskError::new("deadline", "the worker ran out of time; the task will resume"));
        }

        let response = match complete_with_retries(model, &request, limits.retry, limits.deadline).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                break Outcome::Interrupted(TaskError::new(
                    "models_unavailable",
                    format!("the model is unavailable: {e}"),
                ));
            }
            Err(e) => break Outcome::Failed(TaskError::new("model_error", e.to_string())),
        };

        report.steps += 1;
        let mut usage = Usage {
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            cache_read_input_tokens: response.usage.cache_read_input_tokens,
            cache_creation_input_tokens: response.usage.cache_creation_input_tokens,
            cost_nanos: 0,
        };
        let price = prices.price(&response.model).or_else(|| prices.price(model.id()));
        match price {
            Some(p) => usage.cost_nanos = p.cost_nanos(&usage),
            None => {
                tracing::error!(model = %response.model, "no price for the model that answered; its cost is counted as 0")
            }
        }
        report.usage += usage;
        report.model = Some(response.model.clone());
        tracing::info!(
            step = report.steps,
            model = %response.model,
            stop_reason = ?response.stop_reason,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            "model answered"
        );

        if let Err(e) = checkpoint.step(report.steps, &report.usage, &response.model).await {
            break Outcome::Abandoned(format!("{e:#}"));
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
                let results = run_tools(tools, &response.content).await;
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

/// Runs every `tool_use` block of a turn, a few at a time, and answers them in order.
async fn run_tools(tools: &ToolRegistry, content: &[ContentBlock]) -> Vec<ContentBlock> {
    // Owned inputs keep the stream's future free of borrowed closure arguments, which the
    // compiler cannot prove `Send` for every lifetime.
    let calls: Vec<(String, String, serde_json::Value)> = content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.clone(), name.clone(), input.clone())),
            _ => None,
        })
        .collect();
    futures::stream::iter(calls.into_iter().map(|call| run_tool(tools, call)))
        .buffered(TOOL_CONCURRENCY)
        .collect()
        .await
}

async fn run_tool(tools: &ToolRegistry, (id, name, input): (String, String, serde_json::Value)) -> ContentBlock {
    let started = Instant::now();
    let out = tools.run(&name, &input).await;
    tracing::info!(tool = %name, is_error = out.is_error, latency_ms = started.elapsed().as_millis() as u64, "tool ran");
    ContentBlock::ToolResult { tool_use_id: id, content: out.content, is_error: out.is_error }
}

#[cfg(test)]
mod tests;
