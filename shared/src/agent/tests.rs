//! The loop against a scripted in-process model: every stop reason, retries, budgets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::domain::steps::fixtures::{calculator_call, calculator_result};
use crate::domain::steps::{ModelStep, Step, ToolStep};
use crate::llm::{BreakerPolicy, Model, ModelError, ModelResponse, TokenUsage};

struct Scripted {
    id: &'static str,
    answers: Mutex<VecDeque<Result<ModelResponse, ModelError>>>,
    requests: Mutex<Vec<ModelRequest>>,
}

impl Scripted {
    fn new(answers: Vec<Result<ModelResponse, ModelError>>) -> Self {
        Self::named("claude-sonnet-4-5", answers)
    }
    fn named(id: &'static str, answers: Vec<Result<ModelResponse, ModelError>>) -> Self {
        Self { id, answers: Mutex::new(answers.into()), requests: Mutex::default() }
    }
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[async_trait]
impl Model for Scripted {
    fn id(&self) -> &str {
        self.id
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

/// Records what the loop checkpoints; refuses model steps when `.1` is set.
#[derive(Default)]
struct Steps(Vec<(u32, Usage)>, bool, Mutex<Vec<ToolStep>>);

#[async_trait]
impl Checkpoint for Steps {
    async fn model_step(&mut self, step: &ModelStep, report: &Report) -> Result<(), Halt> {
        if self.1 {
            return Err(Halt::LeaseLost);
        }
        self.0.push((step.step, report.spend.usage));
        Ok(())
    }

    async fn tool_result(&self, step: &ToolStep) -> Result<(), Halt> {
        self.2.lock().unwrap().push(step.clone());
        Ok(())
    }
}

/// A chain of the given models, sharing nothing with other tests.
fn chain(models: Vec<Arc<Scripted>>) -> ModelChain {
    let models: Vec<Arc<dyn Model>> = models.into_iter().map(|m| m as Arc<dyn Model>).collect();
    ModelChain::new(models, BreakerPolicy { threshold: 5, cooldown: Duration::from_secs(60) })
}

fn task(max_iterations: u32) -> AgentTask<'static> {
    AgentTask {
        task_id: "T",
        tenant_id: "acme",
        prompt: "what is 6 * 7?",
        max_iterations,
        max_cost_nanos: None,
        history: &[],
        output: None,
        approval: &[],
        inherited: 0,
        fork_message: None,
    }
}

fn limits() -> Limits {
    Limits {
        retry: RetryPolicy { max_attempts: 3, base: Duration::from_millis(1), cap: Duration::from_millis(5) },
        deadline: None,
        tools: ToolCaps::default(),
    }
}

async fn run_task(models: &ModelChain, task: AgentTask<'_>, limits: Limits) -> (Report, Steps) {
    let mut steps = Steps::default();
    let report = run_agent(models, &ToolRegistry::builtin(), &PriceTable::default(), task, limits, &mut steps).await;
    (report, steps)
}

async fn run(model: &Arc<Scripted>, max_iterations: u32) -> (Report, Steps) {
    run_task(&chain(vec![model.clone()]), task(max_iterations), limits()).await
}

#[tokio::test]
async fn an_end_turn_answer_succeeds_with_its_text_and_priced_usage() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("42"))]));
    let (report, steps) = run(&model, 10).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult::text("42")));
    assert_eq!(report.spend.step, 1);
    // 100 input at $3/MTok + 10 output at $15/MTok = 300_000 + 150_000 n$.
    assert_eq!(report.spend.usage.cost_nanos, 450_000);
    assert_eq!(report.spend.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(report.spend.usage_by_model["claude-sonnet-4-5"], report.spend.usage);
    assert_eq!(steps.0, [(1, report.spend.usage)]);
}

#[tokio::test]
async fn a_tool_call_runs_the_tool_and_sends_its_result_back() {
    let model = Arc::new(Scripted::new(vec![
        answer(
            StopReason::ToolUse,
            vec![ContentBlock::ToolUse {
                id: "tu_1".into(),
                name: "calculator".into(),
                input: json!({"expression": "6 * 7"}),
            }],
        ),
        answer(StopReason::EndTurn, text("It is 42.")),
    ]));
    let (report, steps) = run(&model, 10).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult::text("It is 42.")));
    assert_eq!(steps.0.len(), 2);
    let second = &model.requests.lock().unwrap()[1];
    assert_eq!(second.messages.len(), 3);
    assert_eq!(
        second.messages[2].content,
        [ContentBlock::ToolResult { tool_use_id: "tu_1".into(), content: "42".into(), is_error: false }]
    );
    assert_eq!(report.spend.usage.input_tokens, 200);
}

#[tokio::test]
async fn a_failing_tool_goes_back_to_the_model_as_an_error_result() {
    let model = Arc::new(Scripted::new(vec![
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
    ]));
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
    let model = Arc::new(Scripted::new(vec![tool_turn(), tool_turn()]));
    let (report, _) = run(&model, 2).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::MaxIterationsExceeded));
    assert_eq!(report.spend.step, 2);
    assert_eq!(model.calls(), 2);
}

#[tokio::test]
async fn max_tokens_ends_with_the_text_flagged_truncated() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::MaxTokens, text("The answer is"))]));
    let (report, _) = run(&model, 10).await;
    assert_eq!(
        report.outcome,
        Outcome::Succeeded(TaskResult { text: "The answer is".into(), truncated: true, structured: false })
    );
}

#[tokio::test]
async fn a_refusal_fails_the_task() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::Refusal, vec![])]));
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::Refused));
}

#[tokio::test]
async fn pause_turn_sends_the_turn_back_to_continue() {
    let model = Arc::new(Scripted::new(vec![
        answer(StopReason::PauseTurn, text("thinking")),
        answer(StopReason::EndTurn, text("done")),
    ]));
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Succeeded(r) if r.text == "done"));
    assert_eq!(model.requests.lock().unwrap()[1].messages.len(), 2);
}

#[tokio::test]
async fn transient_failures_are_retried_within_one_step() {
    let model = Arc::new(Scripted::new(vec![overloaded(), overloaded(), answer(StopReason::EndTurn, text("ok"))]));
    let (report, _) = run(&model, 10).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    assert_eq!(report.spend.step, 1);
    assert_eq!(model.calls(), 3);
}

#[tokio::test]
async fn a_model_that_stays_down_interrupts_the_run_for_a_later_retry() {
    let model = Arc::new(Scripted::new(vec![overloaded(), overloaded(), overloaded()]));
    let (report, _) = run(&model, 10).await;
    assert!(matches!(&report.outcome, Outcome::Interrupted(e) if e.code == ErrorCode::ModelsUnavailable));
    assert_eq!(model.calls(), 3);
}

#[tokio::test]
async fn a_rejected_request_fails_at_once_with_the_providers_message() {
    let model = Arc::new(Scripted::new(vec![Err(ModelError::Status {
        status: 400,
        kind: "invalid_request_error".into(),
        message: "prompt is too long".into(),
        retry_after: None,
    })]));
    let (report, _) = run(&model, 10).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::ModelError && e.message.contains("prompt is too long"))
    );
    assert_eq!(model.calls(), 1);
}

#[tokio::test]
async fn a_retry_that_would_outlive_the_deadline_is_not_started() {
    let model = Arc::new(Scripted::new(vec![Err(ModelError::Status {
        status: 429,
        kind: "rate_limit_error".into(),
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(60)),
    })]));
    let limits = Limits { deadline: Some(Instant::now() + Duration::from_secs(5)), ..limits() };
    let started = Instant::now();
    let (report, _) = run_task(&chain(vec![model.clone()]), task(3), limits).await;
    assert!(matches!(&report.outcome, Outcome::Interrupted(_)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(model.calls(), 1);
}

#[tokio::test]
async fn a_refused_checkpoint_abandons_the_run() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("42"))]));
    let mut steps = Steps(vec![], true, Mutex::default());
    let report =
        run_agent(&chain(vec![model]), &ToolRegistry::builtin(), &PriceTable::default(), task(3), limits(), &mut steps)
            .await;
    assert_eq!(report.outcome, Outcome::Halted(Halt::LeaseLost));
}

#[tokio::test]
async fn a_model_that_stays_down_hands_over_to_the_next_in_the_chain() {
    let primary = Arc::new(Scripted::named("claude-sonnet-4-5", vec![overloaded(), overloaded(), overloaded()]));
    let fallback = Arc::new(Scripted::named("claude-haiku-4-5", vec![answer(StopReason::EndTurn, text("from haiku"))]));
    let (report, _) = run_task(&chain(vec![primary.clone(), fallback.clone()]), task(3), limits()).await;
    assert!(matches!(&report.outcome, Outcome::Succeeded(r) if r.text == "from haiku"));
    assert_eq!(report.spend.model.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(primary.calls(), 3, "the primary had its retries");
    // Priced as haiku: 100 × $1 + 10 × $5 per MTok.
    assert_eq!(report.spend.usage_by_model["claude-haiku-4-5"].cost_nanos, 150_000);
}

#[tokio::test]
async fn an_unauthorized_model_is_skipped_without_retries() {
    let denied = || {
        Err(ModelError::Status {
            status: 401,
            kind: "authentication_error".into(),
            message: "bad key".into(),
            retry_after: None,
        })
    };
    let primary = Arc::new(Scripted::named("claude-sonnet-4-5", vec![denied()]));
    let fallback = Arc::new(Scripted::named("claude-haiku-4-5", vec![answer(StopReason::EndTurn, text("ok"))]));
    let (report, _) = run_task(&chain(vec![primary.clone(), fallback]), task(3), limits()).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    assert_eq!(primary.calls(), 1);
}

#[tokio::test]
async fn a_rejected_request_does_not_burn_the_chain() {
    let bad = Err(ModelError::Status {
        status: 400,
        kind: "invalid_request_error".into(),
        message: "nope".into(),
        retry_after: None,
    });
    let primary = Arc::new(Scripted::named("claude-sonnet-4-5", vec![bad]));
    let fallback = Arc::new(Scripted::named("claude-haiku-4-5", vec![]));
    let (report, _) = run_task(&chain(vec![primary, fallback.clone()]), task(3), limits()).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::ModelError));
    assert_eq!(fallback.calls(), 0);
}

#[tokio::test]
async fn the_circuit_opens_after_threshold_failed_attempts_and_stops_retries_and_later_calls() {
    let primary = Arc::new(Scripted::named("claude-sonnet-4-5", (0..6).map(|_| overloaded()).collect()));
    let fallback = Arc::new(Scripted::named(
        "claude-haiku-4-5",
        (0..3).map(|_| answer(StopReason::EndTurn, text("ok"))).collect(),
    ));
    let models = chain(vec![primary.clone(), fallback]);
    for _ in 0..3 {
        let (report, _) = run_task(&models, task(3), limits()).await;
        assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    }
    // Threshold 5 counts attempts: the first run's 3 failed attempts and 2 of the second's
    // opened the circuit, which stopped the second run's retries; the third skipped it.
    assert_eq!(primary.calls(), 5);
}

#[tokio::test]
async fn every_model_down_interrupts_with_models_unavailable() {
    let a = Arc::new(Scripted::named("claude-sonnet-4-5", (0..3).map(|_| overloaded()).collect()));
    let b = Arc::new(Scripted::named("claude-haiku-4-5", (0..3).map(|_| overloaded()).collect()));
    let (report, _) = run_task(&chain(vec![a, b]), task(3), limits()).await;
    assert!(matches!(&report.outcome, Outcome::Interrupted(e) if e.code == ErrorCode::ModelsUnavailable));
}

#[tokio::test]
async fn a_run_stops_at_its_budget_with_the_usage_so_far() {
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
    let model = Arc::new(Scripted::new(vec![tool_turn(), tool_turn(), tool_turn()]));
    // Each call costs 450_000 n$; a budget of 800_000 allows the second call to start, not a third.
    let budget = AgentTask { max_cost_nanos: Some(800_000), ..task(10) };
    let (report, _) = run_task(&chain(vec![model.clone()]), budget, limits()).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::BudgetExceeded),
        "{:?}",
        report.outcome
    );
    assert_eq!(model.calls(), 2);
    assert_eq!(report.spend.usage.cost_nanos, 900_000);
}

fn recorded_tool_turn() -> ModelStep {
    calculator_call(1, Usage { input_tokens: 100, output_tokens: 10, cost_nanos: 450_000, ..Usage::default() })
}

#[tokio::test]
async fn spending_recorded_by_earlier_runs_counts_against_the_budget() {
    let model = Arc::new(Scripted::new(vec![]));
    let history = [Step::Model(recorded_tool_turn())];
    let spent = AgentTask { max_cost_nanos: Some(450_000), history: &history, ..task(10) };
    let (report, _) = run_task(&chain(vec![model.clone()]), spent, limits()).await;
    assert!(matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::BudgetExceeded));
    assert_eq!(model.calls(), 0);
    assert_eq!(report.spend.usage.cost_nanos, 450_000);
}

#[tokio::test]
async fn a_resumed_run_replays_recorded_steps_without_paying_for_them_again() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("It is 42."))]));
    let history = [Step::Model(recorded_tool_turn()), Step::Tool(calculator_result(1))];
    let mut steps = Steps::default();
    let t = AgentTask { history: &history, ..task(10) };
    let report = run_agent(
        &chain(vec![model.clone()]),
        &ToolRegistry::builtin(),
        &PriceTable::default(),
        t,
        limits(),
        &mut steps,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult::text("It is 42.")));
    assert_eq!(model.calls(), 1, "only the step after the recorded ones");
    assert_eq!((report.spend.step, report.new_calls), (2, 1));
    assert_eq!(report.spend.usage.cost_nanos, 450_000 * 2, "the recorded step counted once");
    assert!(steps.2.lock().unwrap().is_empty(), "the recorded tool result was reused, not re-run");
    // The model saw the whole conversation, recorded turns included.
    let sent = &model.requests.lock().unwrap()[0];
    assert_eq!(sent.messages.len(), 3);
    assert!(matches!(&sent.messages[2].content[0], ContentBlock::ToolResult { content, .. } if content == "42"));
}

#[tokio::test]
async fn a_tool_call_started_but_not_recorded_runs_again_and_is_recorded() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("done"))]));
    let history = [Step::Model(recorded_tool_turn())];
    let mut steps = Steps::default();
    let t = AgentTask { history: &history, ..task(10) };
    let report = run_agent(
        &chain(vec![model.clone()]),
        &ToolRegistry::builtin(),
        &PriceTable::default(),
        t,
        limits(),
        &mut steps,
    )
    .await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    let tools = steps.2.lock().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!((tools[0].step, tools[0].tool_use_id.as_str(), tools[0].content.as_str()), (1, "tu_1", "42"));
}

#[tokio::test]
async fn a_history_that_already_ended_finishes_without_a_call() {
    let model = Arc::new(Scripted::new(vec![]));
    let done = ModelStep { stop_reason: StopReason::EndTurn, content: text("final"), ..recorded_tool_turn() };
    let history = [Step::Model(done)];
    let (report, _) =
        run_task(&chain(vec![model.clone()]), AgentTask { history: &history, ..task(10) }, limits()).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult::text("final")));
    assert_eq!(model.calls(), 0);
}

#[tokio::test]
async fn tool_calls_of_one_turn_run_concurrently() {
    use crate::agent::tools::{HttpTool, HttpToolSpec};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    // Each call takes 400 ms; the server notes when each one arrives.
    let server = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |_: &wiremock::Request| {
            seen.lock().unwrap().push(std::time::Instant::now());
            ResponseTemplate::new(200).set_body_string("slow result").set_delay(Duration::from_millis(400))
        })
        .mount(&server)
        .await;
    let spec = HttpToolSpec {
        name: "slow".into(),
        description: "takes its time".into(),
        input_schema: json!({"type": "object"}),
        url: server.uri(),
        timeout_secs: 5,
        max_attempts: 1,
        approval: Default::default(),
    };
    let tools = ToolRegistry::new().with(HttpTool::new(spec, crate::net::client(), None)).unwrap();
    let call = |id: &str| ContentBlock::ToolUse { id: id.into(), name: "slow".into(), input: json!({}) };
    let model = Arc::new(Scripted::new(vec![
        answer(StopReason::ToolUse, vec![call("a"), call("b")]),
        answer(StopReason::EndTurn, text("done")),
    ]));
    let mut steps = Steps::default();
    let report =
        run_agent(&chain(vec![model.clone()]), &tools, &PriceTable::default(), task(3), limits(), &mut steps).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));

    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].duration_since(arrivals[0]);
    assert!(
        gap < Duration::from_millis(400),
        "the second call started {gap:?} after the first: they ran one after the other"
    );
    // Results go back in the order the model asked.
    let results = &model.requests.lock().unwrap()[1].messages[2].content;
    let ids: Vec<_> = results
        .iter()
        .map(|b| match b {
            ContentBlock::ToolResult { tool_use_id, .. } => tool_use_id.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

/// A tool that answers with `n` bytes.
struct Big(crate::llm::ToolSpec);

#[async_trait]
impl Tool for Big {
    fn spec(&self) -> &crate::llm::ToolSpec {
        &self.0
    }
    async fn call(&self, input: &serde_json::Value, _: &ToolContext) -> Result<String, ToolError> {
        Ok("x".repeat(input["n"].as_u64().unwrap_or(0) as usize))
    }
}

fn big_tool() -> ToolRegistry {
    let spec = crate::llm::ToolSpec {
        name: "big".into(),
        description: "answers with n bytes".into(),
        input_schema: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
    };
    ToolRegistry::new().with(Big(spec)).unwrap()
}

fn results_of(request: &crate::llm::ModelRequest) -> Vec<(String, bool)> {
    request.messages[2]
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolResult { content, is_error, .. } => Some((content.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn tool_calls_beyond_the_per_step_cap_are_answered_not_run() {
    let calls: Vec<ContentBlock> = (0..20)
        .map(|i| ContentBlock::ToolUse { id: format!("c{i}"), name: "big".into(), input: json!({"n": 3}) })
        .collect();
    let model =
        Arc::new(Scripted::new(vec![answer(StopReason::ToolUse, calls), answer(StopReason::EndTurn, text("ok"))]));
    let limits = Limits { tools: ToolCaps { max_calls_per_step: 3, max_output_bytes: 1 << 20 }, ..limits() };
    let mut steps = Steps::default();
    let report =
        run_agent(&chain(vec![model.clone()]), &big_tool(), &PriceTable::default(), task(3), limits, &mut steps).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    let results = results_of(&model.requests.lock().unwrap()[1]);
    assert_eq!(results.len(), 20, "every call is answered");
    assert!(results[..3].iter().all(|(c, e)| c == "xxx" && !e));
    assert!(results[3..].iter().all(|(c, e)| *e && c.contains("not run") && c.contains("at most 3")), "{results:?}");
    assert_eq!(steps.2.lock().unwrap().len(), 20, "refusals are recorded too, so a replay tells the model the same");
}

#[tokio::test]
async fn tool_output_beyond_the_task_cap_is_cut_and_the_model_is_told() {
    let call = |id: &str, n: u64| ContentBlock::ToolUse { id: id.into(), name: "big".into(), input: json!({"n": n}) };
    let model = Arc::new(Scripted::new(vec![
        answer(StopReason::ToolUse, vec![call("a", 600)]),
        answer(StopReason::ToolUse, vec![call("b", 600)]),
        answer(StopReason::ToolUse, vec![call("c", 10)]),
        answer(StopReason::EndTurn, text("ok")),
    ]));
    let limits = Limits { tools: ToolCaps { max_calls_per_step: 8, max_output_bytes: 1000 }, ..limits() };
    let mut steps = Steps::default();
    let report =
        run_agent(&chain(vec![model.clone()]), &big_tool(), &PriceTable::default(), task(5), limits, &mut steps).await;
    assert!(matches!(report.outcome, Outcome::Succeeded(_)));
    let recorded = steps.2.lock().unwrap();
    assert_eq!(recorded[0].content.len(), 600);
    assert!(
        recorded[1].content.starts_with(&"x".repeat(400)) && recorded[1].content.contains("tool output limit of 1000")
    );
    assert!(recorded[2].is_error && recorded[2].content.starts_with("not run"), "{:?}", recorded[2]);
}

#[test]
fn a_tool_name_the_model_made_up_is_counted_as_unknown_not_as_a_metric_of_its_own() {
    let tools = ToolRegistry::builtin();
    assert_eq!(metric_tool_name(&tools, "calculator"), "calculator");
    assert_eq!(metric_tool_name(&tools, "launch_rockets_v9"), "unknown");
}

fn recorded_answer(step: u32, text_: &str) -> ModelStep {
    ModelStep {
        step,
        model: "claude-sonnet-4-5".into(),
        content: text(text_),
        stop_reason: StopReason::EndTurn,
        usage: Usage::default(),
        call: None,
    }
}

#[tokio::test]
async fn a_resumed_run_counts_the_corrections_it_already_made() {
    let schema = OutputSchema::compile(&json!({"type": "object", "required": ["n"]})).unwrap();
    // Two invalid answers were recorded (each sent back); the third is the last chance.
    let history = [Step::Model(recorded_answer(1, "seven")), Step::Model(recorded_answer(2, "{}"))];
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("still {}"))]));
    let t = AgentTask { history: &history, output: Some(&schema), ..task(10) };
    let report = run_agent(
        &chain(vec![model.clone()]),
        &ToolRegistry::builtin(),
        &PriceTable::default(),
        t,
        limits(),
        &mut Steps::default(),
    )
    .await;
    assert!(
        matches!(&report.outcome, Outcome::Failed(e) if e.code == ErrorCode::OutputInvalid),
        "{:?}",
        report.outcome
    );
    let sent = model.requests.lock().unwrap()[0].clone();
    // prompt, answer, correction, answer, correction: as the first run sent them.
    assert_eq!(sent.messages.len(), 5);
    assert!(sent.system.as_deref().is_some_and(|s| s.contains("\"required\"")));

    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text(r#"{"n": 7}"#))]));
    let t = AgentTask { history: &history, output: Some(&schema), ..task(10) };
    let report = run_agent(
        &chain(vec![model]),
        &ToolRegistry::builtin(),
        &PriceTable::default(),
        t,
        limits(),
        &mut Steps::default(),
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::Succeeded(TaskResult { text: r#"{"n":7}"#.into(), truncated: false, structured: true })
    );
}

fn needs_calculator() -> Vec<String> {
    vec!["calculator".to_owned()]
}

fn decision(action: crate::domain::approval::Action, input: Option<serde_json::Value>) -> Step {
    Step::Decision(crate::domain::approval::Decision {
        step: 1,
        tool_use_id: "tu_1".into(),
        name: "calculator".into(),
        action,
        message: Some("too risky".into()),
        input,
        by: "key_1".into(),
        at: crate::now(),
    })
}

#[tokio::test]
async fn a_tool_that_needs_approval_stops_the_run_before_it_runs() {
    let model = Arc::new(Scripted::new(vec![answer(
        StopReason::ToolUse,
        vec![ContentBlock::ToolUse {
            id: "tu_1".into(),
            name: "calculator".into(),
            input: json!({"expression": "6 * 7"}),
        }],
    )]));
    let approval = needs_calculator();
    let t = AgentTask { approval: &approval, ..task(10) };
    let (report, steps) = run_task(&chain(vec![model.clone()]), t, limits()).await;
    let Outcome::WaitingForInput(pending) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert_eq!((pending[0].step, pending[0].tool_use_id.as_str(), pending[0].name.as_str()), (1, "tu_1", "calculator"));
    assert_eq!(pending[0].input, json!({"expression": "6 * 7"}));
    assert_eq!(steps.0.len(), 1, "the model's answer is recorded");
    assert!(steps.2.lock().unwrap().is_empty(), "nothing ran");
}

#[tokio::test]
async fn a_resumed_run_without_a_decision_waits_again_without_calling_the_model() {
    let model = Arc::new(Scripted::new(vec![]));
    let history = [Step::Model(recorded_tool_turn())];
    let approval = needs_calculator();
    let t = AgentTask { history: &history, approval: &approval, ..task(10) };
    let (report, _) = run_task(&chain(vec![model.clone()]), t, limits()).await;
    assert!(matches!(report.outcome, Outcome::WaitingForInput(_)));
    assert_eq!(model.calls(), 0);
}

#[tokio::test]
async fn a_rejected_call_is_not_run_and_the_model_reads_the_reviewers_message() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("ok, I will not"))]));
    let history = [Step::Model(recorded_tool_turn()), decision(crate::domain::approval::Action::Reject, None)];
    let approval = needs_calculator();
    let t = AgentTask { history: &history, approval: &approval, ..task(10) };
    let (report, steps) = run_task(&chain(vec![model.clone()]), t, limits()).await;
    assert_eq!(report.outcome, Outcome::Succeeded(TaskResult::text("ok, I will not")));
    let tools = steps.2.lock().unwrap();
    assert!(tools[0].is_error && tools[0].content.contains("too risky"), "{:?}", tools[0]);
    let sent = &model.requests.lock().unwrap()[0];
    assert!(matches!(&sent.messages[2].content[0], ContentBlock::ToolResult { is_error: true, .. }));
}

#[tokio::test]
async fn an_edited_call_runs_on_the_reviewers_input() {
    let model = Arc::new(Scripted::new(vec![answer(StopReason::EndTurn, text("4"))]));
    let edited = decision(crate::domain::approval::Action::Edit, Some(json!({"expression": "2 + 2"})));
    let history = [Step::Model(recorded_tool_turn()), edited];
    let approval = needs_calculator();
    let t = AgentTask { history: &history, approval: &approval, ..task(10) };
    let (_, steps) = run_task(&chain(vec![model.clone()]), t, limits()).await;
    let tools = steps.2.lock().unwrap();
    assert_eq!((tools[0].content.as_str(), tools[0].is_error), ("4", false));
}
