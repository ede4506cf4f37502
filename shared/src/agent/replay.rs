//! Replay: a recorded run's agent loop again, against its recorded model answers, with no
//! model call and no cost. Tools run again (`Live`) or give their recorded results
//! (`Recorded`); decisions a person made are always reused. The report says where the new run
//! departs from the recorded one: a tool result that differs, a tool call run that was never
//! recorded or a recorded one not run, a request the model would now receive differently,
//! more or fewer model answers than were recorded, a different ending.
//!
//! The point is to reproduce a run exactly after changing a tool or the loop: `agentq replay`
//! does it for a task of the API, and a test can do it for a fixture of recorded steps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::{AgentTask, Checkpoint, Halt, Limits, Outcome, Report, ToolCaps, ToolRegistry, run_agent};
use crate::domain::output::OutputSchema;
use crate::domain::steps::{ModelStep, Step, ToolStep};
use crate::domain::usage::PriceTable;
use crate::llm::{
    BreakerPolicy, ContentBlock, Model, ModelChain, ModelError, ModelRequest, ModelResponse, RetryPolicy, TokenUsage,
};

/// Where the replay's tool results come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolsMode {
    /// The recorded results: the loop alone is replayed.
    #[default]
    Recorded,
    /// The tools run again, and their results are compared with the recorded ones (a tool the
    /// replay's registry does not have gives its recorded result).
    Live,
}

/// What was recorded of a run: its steps, in order, and what its loop was given.
#[derive(Debug, Clone, Copy)]
pub struct Recording<'a> {
    pub steps: &'a [Step],
    pub max_iterations: u32,
    pub output: Option<&'a OutputSchema>,
    /// For a fork: the steps it inherited, and the message it added after them.
    pub inherited: u32,
    pub fork_message: Option<&'a str>,
}

impl<'a> Recording<'a> {
    /// The recording of a task that is not a fork.
    pub fn of(steps: &'a [Step], max_iterations: u32, output: Option<&'a OutputSchema>) -> Self {
        Self { steps, max_iterations, output, inherited: 0, fork_message: None }
    }
}

/// One way the replay departed from the recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// A tool call gave another result than the recorded one.
    ToolResult {
        step: u32,
        tool_use_id: String,
        name: String,
        recorded: String,
        replayed: String,
        recorded_error: bool,
        replayed_error: bool,
    },
    /// A tool call ran that has no recorded result.
    UnrecordedToolCall { step: u32, tool_use_id: String, name: String },
    /// A recorded tool result the replay never produced.
    ToolNotRun { step: u32, tool_use_id: String, name: String },
    /// The model would now receive a different request for this step: the tool results (or
    /// correction) it is sent after the previous step differ from the recorded ones.
    Request { step: u32, detail: String },
    /// The loop asked for a model answer that was never recorded.
    UnrecordedModelCall { step: u32 },
    /// The loop ended before it used every recorded answer.
    UnusedModelAnswers { used: u32, recorded: u32 },
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub outcome: Outcome,
    /// Recorded answers the loop asked for.
    pub model_calls: u32,
    /// Tool results the replay produced or reused, in order.
    pub tool_results: Vec<ToolStep>,
    pub divergences: Vec<Divergence>,
}

/// Replays `recording` with `tools` (used when `mode` is `Live`).
pub async fn replay(recording: Recording<'_>, tools: &ToolRegistry, mode: ToolsMode) -> Replayed {
    let answers: Vec<ModelStep> = recording
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Model(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let recorded_tools: BTreeMap<(u32, String), ToolStep> = recording
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Tool(t) => Some(((t.step, t.tool_use_id.clone()), t.clone())),
            _ => None,
        })
        .collect();
    // Decisions are a person's input: always reused. Recorded tool results when asked, and
    // for tools `tools` does not have (they cannot run here).
    let reuse = |t: &ToolStep| mode == ToolsMode::Recorded || !tools.knows(&t.name);
    let history: Vec<Step> = recording
        .steps
        .iter()
        .filter(|s| match s {
            Step::Decision(_) => true,
            Step::Tool(t) => reuse(t),
            Step::Model(_) => false,
        })
        .cloned()
        .collect();

    let model = Arc::new(Recorded {
        id: answers.first().map_or_else(|| "recorded".to_owned(), |m| m.model.clone()),
        answers: answers.clone(),
        tools: recorded_tools.clone(),
        seen: Mutex::default(),
    });
    let chain = ModelChain::new(
        vec![model.clone() as Arc<dyn Model>],
        BreakerPolicy { threshold: u32::MAX, cooldown: std::time::Duration::ZERO },
    );
    let offered = if mode == ToolsMode::Live { tools.clone() } else { ToolRegistry::new() };
    let task = AgentTask {
        task_id: "replay",
        tenant_id: "replay",
        prompt: "(the recorded prompt)",
        max_iterations: recording.max_iterations,
        max_cost_nanos: None,
        history: &history,
        output: recording.output,
        approval: &[],
        inherited: recording.inherited,
        fork_message: recording.fork_message,
    };
    let limits = Limits {
        retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        deadline: None,
        tools: ToolCaps::default(),
    };
    let mut checkpoint = Collect::default();
    let report = run_agent(&chain, &offered, &PriceTable::default(), task, limits, &mut checkpoint).await;

    let mut divergences = std::mem::take(&mut *model.seen.lock().expect("poisoned"));
    let produced = checkpoint.tools.into_inner().expect("poisoned");
    for t in &produced {
        match recorded_tools.get(&(t.step, t.tool_use_id.clone())) {
            Some(r) if r.content != t.content || r.is_error != t.is_error => divergences.push(Divergence::ToolResult {
                step: t.step,
                tool_use_id: t.tool_use_id.clone(),
                name: t.name.clone(),
                recorded: r.content.clone(),
                replayed: t.content.clone(),
                recorded_error: r.is_error,
                replayed_error: t.is_error,
            }),
            Some(_) => {}
            None => divergences.push(Divergence::UnrecordedToolCall {
                step: t.step,
                tool_use_id: t.tool_use_id.clone(),
                name: t.name.clone(),
            }),
        }
    }
    let tool_results = match mode {
        ToolsMode::Live => {
            for ((step, id), r) in &recorded_tools {
                let ran = produced.iter().any(|t| t.step == *step && &t.tool_use_id == id);
                if *step <= report.spend.step && !ran && !reuse(r) {
                    divergences.push(Divergence::ToolNotRun {
                        step: *step,
                        tool_use_id: id.clone(),
                        name: r.name.clone(),
                    });
                }
            }
            produced
        }
        // The reused results, as the loop was given them, and any it had to run.
        ToolsMode::Recorded => {
            let mut all: Vec<ToolStep> =
                recorded_tools.values().filter(|t| t.step <= report.spend.step).cloned().collect();
            all.extend(produced);
            all
        }
    };
    let recorded = answers.len() as u32;
    if report.spend.step < recorded {
        divergences.push(Divergence::UnusedModelAnswers { used: report.spend.step, recorded });
    }
    Replayed { outcome: report.outcome, model_calls: report.spend.step, tool_results, divergences }
}

/// Serves the recorded answers in order, and checks each request's tool results (the turn
/// after the previous step) against the recorded ones.
struct Recorded {
    id: String,
    answers: Vec<ModelStep>,
    tools: BTreeMap<(u32, String), ToolStep>,
    seen: Mutex<Vec<Divergence>>,
}

impl Recorded {
    fn check(&self, step: u32, request: &ModelRequest) {
        let Some(previous) = step.checked_sub(1).filter(|p| *p > 0) else { return };
        let sent: BTreeMap<String, (String, bool)> = request
            .messages
            .last()
            .into_iter()
            .flat_map(|m| m.content.iter())
            .filter_map(|b| match b {
                ContentBlock::ToolResult { tool_use_id, content, is_error } => {
                    Some((tool_use_id.clone(), (content.clone(), *is_error)))
                }
                _ => None,
            })
            .collect();
        let recorded: BTreeMap<String, (String, bool)> = self
            .tools
            .iter()
            .filter(|((s, _), _)| *s == previous)
            .map(|((_, id), t)| (id.clone(), (t.content.clone(), t.is_error)))
            .collect();
        if sent != recorded {
            let differing: Vec<&String> = sent
                .keys()
                .chain(recorded.keys())
                .filter(|id| sent.get(*id) != recorded.get(*id))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let detail = format!(
                "the tool results sent after step {previous} differ from the recorded ones ({})",
                differing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
            self.seen.lock().expect("poisoned").push(Divergence::Request { step, detail });
        }
    }
}

#[async_trait]
impl Model for Recorded {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        // The loop's request for step n carries the assistant turns of steps 1..n-1.
        let step = 1 + request.messages.iter().filter(|m| matches!(m.role, crate::llm::Role::Assistant)).count() as u32;
        self.check(step, request);
        let Some(answer) = self.answers.get(step as usize - 1) else {
            self.seen.lock().expect("poisoned").push(Divergence::UnrecordedModelCall { step });
            return Err(ModelError::Status {
                status: 400,
                kind: "not_recorded".into(),
                message: format!("the recording has no answer for step {step}"),
                retry_after: None,
            });
        };
        Ok(ModelResponse {
            model: answer.model.clone(),
            content: answer.content.clone(),
            stop_reason: answer.stop_reason.clone(),
            usage: TokenUsage {
                input_tokens: answer.usage.input_tokens,
                output_tokens: answer.usage.output_tokens,
                cache_creation_input_tokens: answer.usage.cache_creation_input_tokens,
                cache_read_input_tokens: answer.usage.cache_read_input_tokens,
            },
        })
    }
}

/// Keeps what the replay produced.
#[derive(Default)]
struct Collect {
    tools: Mutex<Vec<ToolStep>>,
}

#[async_trait]
impl Checkpoint for Collect {
    async fn model_step(&mut self, _step: &ModelStep, _report: &Report) -> Result<(), Halt> {
        Ok(())
    }

    async fn tool_result(&self, step: &ToolStep) -> Result<(), Halt> {
        self.tools.lock().expect("poisoned").push(step.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> Vec<Step> {
        crate::domain::steps::fixtures::two_steps()
    }

    fn of(steps: &[Step]) -> Recording<'_> {
        Recording::of(steps, 10, None)
    }

    #[tokio::test]
    async fn a_faithful_replay_ends_as_recorded_without_divergence() {
        let steps = recording();
        for mode in [ToolsMode::Recorded, ToolsMode::Live] {
            let r = replay(of(&steps), &ToolRegistry::builtin(), mode).await;
            assert_eq!(r.divergences, [], "{mode:?}");
            assert_eq!(r.outcome, Outcome::Succeeded(crate::domain::task::TaskResult::text("It is 42.")));
            assert_eq!((r.model_calls, r.tool_results.len()), (2, 1));
        }
    }

    #[tokio::test]
    async fn a_changed_tool_shows_where_the_run_departs() {
        let mut steps = recording();
        if let Step::Tool(t) = &mut steps[1] {
            t.content = "41".into();
        }
        let r = replay(of(&steps), &ToolRegistry::builtin(), ToolsMode::Live).await;
        assert!(
            matches!(&r.divergences[..], [Divergence::Request { step: 2, .. }, Divergence::ToolResult { recorded, replayed, .. }] if recorded == "41" && replayed == "42"),
            "{:?}",
            r.divergences
        );
    }

    #[tokio::test]
    async fn a_loop_that_wants_more_answers_than_were_recorded_says_so() {
        let steps = recording()[..2].to_vec();
        let r = replay(of(&steps), &ToolRegistry::builtin(), ToolsMode::Recorded).await;
        assert_eq!(r.divergences, [Divergence::UnrecordedModelCall { step: 2 }]);
        assert!(matches!(r.outcome, Outcome::Failed(_)));
        let r =
            replay(Recording { max_iterations: 1, ..of(&recording()) }, &ToolRegistry::builtin(), ToolsMode::Recorded)
                .await;
        assert_eq!(r.divergences, [Divergence::UnusedModelAnswers { used: 1, recorded: 2 }]);
    }
}
