//! Durable agent steps: every model answer and every tool result of a task, stored as its own
//! item as soon as it exists. A task that is run again (its worker died, its invocation ran
//! out of time) replays them instead of paying for them twice, and `GET /v1/tasks/{id}/steps`
//! shows them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::approval::Decision;
use crate::domain::conversation::{ContentBlock, StopReason};
use crate::domain::usage::Usage;

/// What a run has spent so far: its model calls, their tokens and cost in all and per model,
/// and the model that answered last. The task record, the worker's progress and finish, and
/// the agent loop's report all carry this one type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Model calls made.
    #[serde(default)]
    pub step: u32,
    #[serde(default)]
    pub usage: Usage,
    /// Usage and cost per model that answered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage_by_model: BTreeMap<String, Usage>,
    /// The model that gave the latest answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Spend {
    /// Takes a later state of the same run's bill; the last model is kept if `newer` names
    /// none (a run that ends before any answer).
    pub fn advance_to(&mut self, newer: &Spend) {
        let model = newer.model.clone().or_else(|| self.model.take());
        *self = Spend { model, ..newer.clone() };
    }

    /// Takes a model answer a fork inherited: it counts as a step, but its cost is its
    /// parent's, billed there once.
    pub fn count_inherited(&mut self, step: &ModelStep) {
        self.step = step.step;
        self.model = Some(step.model.clone());
    }

    /// Adds a model answer to the bill.
    pub fn count(&mut self, step: &ModelStep) {
        self.step = step.step;
        self.usage += step.usage;
        *self.usage_by_model.entry(step.model.clone()).or_default() += step.usage;
        self.model = Some(step.model.clone());
    }
}

impl Spend {
    /// Each model's cost beyond what `counted` (per model, nano-dollars) says, models with
    /// nothing new left out.
    pub fn cost_by_model_since(&self, counted: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        self.usage_by_model
            .iter()
            .map(|(m, u)| (m.clone(), u.cost_nanos.saturating_sub(counted.get(m).copied().unwrap_or(0))))
            .filter(|(_, c)| *c > 0)
            .collect()
    }
}

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
    /// How the answer came: its wall time, attempts and the models passed over (absent on
    /// steps recorded before agentq kept it, and on replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallStats>,
}

/// How a model answer was obtained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStats {
    /// From the first request to the answer, retries, holds and fallbacks included.
    pub latency_ms: u64,
    /// Requests sent, failed ones included (1 when the first request answered).
    pub attempts: u32,
    /// Models of the chain passed over before the one that answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
}

/// One tool call's result, for the `tool_use` block `tool_use_id` of model step `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStep {
    pub step: u32,
    pub tool_use_id: String,
    pub name: String,
    pub content: String,
    pub is_error: bool,
    /// How long the tool ran, retries included (absent on steps recorded before agentq kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A stored step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    Model(ModelStep),
    Tool(ToolStep),
    /// A person's decision on a tool call that needed approval.
    Decision(Decision),
}

impl Step {
    pub fn step(&self) -> u32 {
        match self {
            Step::Model(m) => m.step,
            Step::Tool(t) => t.step,
            Step::Decision(d) => d.step,
        }
    }

    /// The sort key under the task: the model answer of a step sorts before the decisions on
    /// its calls, those before its tools' results, and every step before the next.
    pub fn sort_key(&self) -> String {
        match self {
            Step::Model(m) => format!("STEP#{:05}", m.step),
            Step::Decision(d) => format!("STEP#{:05}#DECISION#{}", d.step, d.tool_use_id),
            Step::Tool(t) => format!("STEP#{:05}#TOOL#{}", t.step, t.tool_use_id),
        }
    }
}

/// Recorded steps for tests: the calculator asked for `6 * 7` and answering 42, then the
/// model's final answer; the run the replay, fork and resume tests start from.
#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::json;

    use super::{ModelStep, Step, ToolStep};
    use crate::domain::conversation::{ContentBlock, StopReason};
    use crate::domain::usage::Usage;

    /// Step `step`'s model turn: one calculator call, `tu_<step>`, of `6 * 7`.
    pub(crate) fn calculator_call(step: u32, usage: Usage) -> ModelStep {
        ModelStep {
            step,
            model: "claude-sonnet-4-5".into(),
            content: vec![ContentBlock::ToolUse {
                id: format!("tu_{step}"),
                name: "calculator".into(),
                input: json!({"expression": "6 * 7"}),
            }],
            stop_reason: StopReason::ToolUse,
            usage,
            call: None,
        }
    }

    /// The calculator's answer to step `step`'s call.
    pub(crate) fn calculator_result(step: u32) -> ToolStep {
        ToolStep {
            step,
            tool_use_id: format!("tu_{step}"),
            name: "calculator".into(),
            content: "42".into(),
            is_error: false,
            duration_ms: None,
        }
    }

    /// Step `step`'s model turn ending the run with `text`.
    pub(crate) fn final_answer(step: u32, text: &str, usage: Usage) -> ModelStep {
        ModelStep {
            step,
            model: "claude-sonnet-4-5".into(),
            content: vec![ContentBlock::Text { text: text.into() }],
            stop_reason: StopReason::EndTurn,
            usage,
            call: None,
        }
    }

    /// A two-step run: the calculator called and answered at step 1, "It is 42." at step 2.
    pub(crate) fn two_steps() -> Vec<Step> {
        vec![
            Step::Model(calculator_call(1, Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() })),
            Step::Tool(calculator_result(1)),
            Step::Model(final_answer(2, "It is 42.", Usage { input_tokens: 20, output_tokens: 5, ..Usage::default() })),
        ]
    }
}
