//! The loop against a scripted in-process model: every stop reason, retries, budgets.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::llm::{ModelError, ModelResponse, TokenUsage};

struct Scripted {
    answers: Mutex<VecDeque<Result<ModelResponse, ModelError>>>,
    requests: Mutex<Vec<ModelRequest>>,
}

impl Scripted {
    fn new(answers: Vec<Result<ModelResponse, ModelError>>) -> Self {
        Self { answers: Mutex::new(answers.into()), requests: Mutex::default() }
    }
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[async_trait]
impl Model for Scripted {
    fn id(&self) -> &str {
        "claude-sonnet-4-5"
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.requests.lock().unwrap().push(request.clone());
        self.answers.lock().unwrap().pop_front().expect("the script ran out")
    }
}

fn answer(stop: StopReason, content: Vec<ContentBlock>) -> Result<ModelResponse, ModelError> {
    Ok(ModelResponse {
        model: "claude-sonnet-4-5-20250929".into(),
        content,
        stop_reason: stop,
        usage: TokenUsage {
            input_tokens: 100,
            output_tokens: 10,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        },
    })
}

fn text(t: &str) -> Vec<ContentBlock> {
    vec![ContentBlock::Text { text: t.into() }]
}

fn overloaded() -> Result<ModelResponse, ModelError> {
    Err(ModelError::Status {
        status: 529,
        kind: "overloaded_error".into(),
        message: "Overloaded".into(),
        retry_after: None,
    })
}

#[derive(Default)]
struct Steps(Vec<(u32, Usage)>, bool);

#[async_trait]
impl Checkpoint for Steps {
    async fn step(&mut self, step: u32, usage: &Usage, _model: &str) -> Result<(), anyhow::Error> {
        if self.1 {
            anyhow::bail!("lease lost");
        }
        self.0.push((step, *usage));
        Ok(())
    }
}

fn limits() -> Limits {
    Limits {
        retry: RetryPolicy { max_attempts: 3, base: Duration::from_millis(1), cap: Duration::from_millis(5) },
        deadline: None,
    }
}

async fn run(model: &Scripted, max_iterations: u32) -> (Report, Steps) {
    let mut steps = Steps::default();
    let report = run_agent(
        model,
        &ToolRegistry::builtin(),
        &PriceTable::default(),
        AgentTask { prompt: "what is 6 * 7?", max_iterations },
        limits(),
        &mut steps,
    )
    .await;
    (report, steps)
}

#[tokio::test]
async fn an_end_turn_answer_succeeds_with_its_text_and_priced_usage() {
    let model = Scripted::new(vec![answer(StopReason::EndTurn, text("42"))]);
    let (report, steps) = run(&model, 10).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult { text: "42".into(), truncated: false }));
    assert_eq!(report.steps, 1);
    // 100 input at $3/MTok + 10 output at $15/MTok = 300_000 + 150_000 n$.
    assert_eq!(report.usage.cost_nanos, 450_000);
    assert_eq!(report.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(steps.0, [(1, report.usage)]);
}

#[tokio::test]
async fn a_tool_call_runs_the_tool_and_sends_its_result_back() {
    let model = Scripted::new(vec![
        answer(
            StopReason::ToolUse,
            vec![ContentBlock::ToolUse {
                id: "tu_1".into(),
                name: "calculator".into(),
                input: json!({"expression": "6 * 7"}),
            }],
        ),
        answer(StopReason::EndTurn, text("It is 42.")),
    ]);
    let (report, steps) = run(&model, 10).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult { text: "It is 42.".into(), truncated: false }));
    assert_eq!(steps.0.len(), 2);
    let second = &model.requests.lock().unwrap()[1];
    assert_eq!(second.messages.len(), 3);
    assert_eq!(
        second.messages[2].content,
        [ContentBlock::ToolResult { tool_use_id: "tu_1".into(), content: "42".into(), is_error: false }]
    );
    assert_eq!(report.usage.input_tokens, 200);
}

#[tokio::test]
async fn a_failing_tool_goes_back_to_the_model_as_an_error_result() {
    let model = Scripted::new(vec![
        answer(
            StopReason::ToolUse,
            vec![
                ContentBlock::ToolUse {
                    id: "a".into(),
                    name: "calculator".into(),
                    input: json!({"expression": "1 +"}),
                },
                ContentBlock::ToolUse { id: "b".into(), name: "nope".into(), input: json!({}) },
            ],
        ),
        answer(StopReason::EndTurn, text("sorry")),
    ]);
    let (report, _) = run(&model, 10).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    let second = &model.requests.lock().unwrap()[1];
    let results = &second.messages[2].content;
    assert!(matches!(&results[0], ContentBlock::ToolResult { tool_use_id, is_error: true, .. } if tool_use_id == "a"));
    assert!(matches!(&results[1], ContentBlock::ToolResult { tool_use_id, is_error: true, .. } if tool_use_id == "b"));
}

#[tokio::test]
async fn running_out_of_iterations_fails_with_its_own_code() {
    let tool_turn = || {
        answer(
            StopReason::ToolUse,
            vec![ContentBlock::ToolUse {
                id: "t".into(),
                name: "calculator".into(),
                input: json!({"expression": "1"}),
            }],
        )
    };
    let model = Scripted::new(vec![tool_turn(), tool_turn()]);
    let (report, _) = run(&model, 2).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == "max_iterations_exceeded"));
    assert_eq!(report.steps, 2);
    assert_eq!(model.calls(), 2);
}

#[tokio::test]
async fn max_tokens_ends_with_the_text_flagged_truncated() {
    let model = Scripted::new(vec![answer(StopReason::MaxTokens, text("The answer is"))]);
    let (report, _) = run(&model, 10).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult { text: "The answer is".into(), truncated: true }));
}

#[tokio::test]
async fn a_refusal_fails_the_task() {
    let model = Scripted::new(vec![answer(StopReason::Refusal, vec![])]);
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == "refused"));
}

#[tokio::test]
async fn pause_turn_sends_the_turn_back_to_continue() {
    let model =
        Scripted::new(vec![answer(StopReason::PauseTurn, text("thinking")), answer(StopReason::EndTurn, text("done"))]);
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Succeeded(r) if r.text == "done"));
    assert_eq!(model.requests.lock().unwrap()[1].messages.len(), 2);
}

#[tokio::test]
async fn transient_failures_are_retried_within_one_step() {
    let model = Scripted::new(vec![overloaded(), overloaded(), answer(StopReason::EndTurn, text("ok"))]);
    let (report, _) = run(&model, 10).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    assert_eq!(report.steps, 1);
    assert_eq!(model.calls(), 3);
}

#[tokio::test]
async fn a_model_that_stays_down_interrupts_the_run_for_a_later_retry() {
    let model = Scripted::new(vec![overloaded(), overloaded(), overloaded()]);
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Interrupted(e) if e.code == "models_unavailable"));
    assert_eq!(model.calls(), 3);
}

#[tokio::test]
async fn a_rejected_request_fails_at_once_with_the_providers_message() {
    let model = Scripted::new(vec![Err(ModelError::Status {
        status: 400,
        kind: "invalid_request_error".into(),
        message: "prompt is too long".into(),
        retry_after: None,
    })]);
    let (report, _) = run(&model, 10).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed(e) if e.code == "model_error" && e.message.contains("prompt is too long"))
    );
    assert_eq!(model.calls(), 1);
}

#[tokio::test]
async fn a_retry_that_would_outlive_the_deadline_is_not_started() {
    let model = Scripted::new(vec![Err(ModelError::Status {
        status: 429,
        kind: "rate_limit_error".into(),
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(60)),
    })]);
    let mut steps = Steps::default();
    let limits = Limits { deadline: Some(Instant::now() + Duration::from_secs(5)), ..limits() };
    let task = AgentTask { prompt: "x", max_iterations: 3 };
    let started = Instant::now();
    let report = run_agent(&model, &ToolRegistry::builtin(), &PriceTable::default(), task, limits, &mut steps).await;
    assert!(matches!(&report.outcome, Outcome::Interrupted(_)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(model.calls(), 1);
}

#[tokio::test]
async fn a_refused_checkpoint_abandons_the_run() {
    let model = Scripted::new(vec![answer(StopReason::EndTurn, text("42"))]);
    let mut steps = Steps(vec![], true);
    let task = AgentTask { prompt: "x", max_iterations: 3 };
    let report = run_agent(&model, &ToolRegistry::builtin(), &PriceTable::default(), task, limits(), &mut steps).await;
    assert!(matches!(report.outcome, Outcome::Abandoned(_)));
}
