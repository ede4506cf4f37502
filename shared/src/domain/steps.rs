//! Durable agent steps: every model answer and every tool result of a task, stored as its own
//! item as soon as it exists. A task that is run again (its worker died, its invocation ran
//! out of time) replays them instead of paying for them twice, and `GET /v1/tasks/{id}/steps`
//! shows them.

use serde::{Deserialize, Serialize};

use crate::domain::conversation::{ContentBlock, StopReason};
use crate::domain::usage::Usage;

/// One model call's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStep {
    /// 1 for the first model call.
    pub step: u32,
    /// The chain's id for the model that answered.
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    /// Tokens and cost of this call alone.
    pub usage: Usage,
}

/// One tool call's result, for the `tool_use` block `tool_use_id` of model step `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStep {
    pub step: u32,
    pub tool_use_id: String,
    pub name: String,
    pub content: String,
    pub is_error: bool,
}

/// A stored step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    Model(ModelStep),
    Tool(ToolStep),
}

impl Step {
    pub fn step(&self) -> u32 {
        match self {
            Step::Model(m) => m.step,
            Step::Tool(t) => t.step,
        }
    }

    /// The sort key under the task: the model answer of a step sorts before its tools'
    /// results, and every step before the next.
    pub fn sort_key(&self) -> String {
        match self {
            Step::Model(m) => format!("STEP#{:05}", m.step),
            Step::Tool(t) => format!("STEP#{:05}#TOOL#{}", t.step, t.tool_use_id),
        }
    }
}
