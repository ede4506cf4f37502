//! Replay against runs recorded by the real pipeline (the model over HTTP, the store in
//! DynamoDB Local): a faithful replay reproduces the run exactly, with the recorded or the
//! re-run tools and with a person's decisions; a changed tool shows the step where the run
//! departs.

use std::time::Duration;

use agentq::agent::replay::{Divergence, Recording, ToolsMode, replay};
use agentq::agent::{Outcome, Tool, ToolContext, ToolError, ToolRegistry};
use agentq::domain::steps::Step;
use agentq::llm::ToolSpec;
use agentq::store::TaskRead as _;
use agentq_tests::{CalculatorScript, TestApp};
use async_trait::async_trait;
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

/// A calculator that is off by one: a tool changed after a run was recorded.
struct OffByOne(ToolSpec);

#[async_trait]
impl Tool for OffByOne {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }
    async fn call(&self, _input: &Value, _context: &ToolContext) -> Result<String, ToolError> {
        Ok("41".into())
    }
}

async fn recorded(app: &TestApp, body: Value) -> (Vec<Step>, Value) {
    let (status, accepted) = app.post_task(&body).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    (app.store.steps(id.parse().unwrap()).await.unwrap(), task)
}

#[tokio::test]
async fn a_recorded_run_replays_exactly_and_a_changed_tool_shows_where_it_departs() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (steps, task) = recorded(&app, json!({"prompt": "What is 6 * 7?"})).await;
    assert_eq!(task["result"]["text"], "The answer is 42.");
    let requests = app.model_requests().await.len();
    let recording = Recording::of(&steps, 10, None);

    for mode in [ToolsMode::Recorded, ToolsMode::Live] {
        let r = replay(recording, &ToolRegistry::builtin(), mode).await;
        assert_eq!(r.divergences, [], "{mode:?}");
        assert!(matches!(&r.outcome, Outcome::Succeeded(res) if res.text == "The answer is 42."), "{:?}", r.outcome);
        assert_eq!(r.model_calls, 2);
    }
    assert_eq!(app.model_requests().await.len(), requests, "a replay calls no model");

    let spec = ToolRegistry::builtin().specs().into_iter().find(|s| s.name == "calculator").unwrap();
    let changed = ToolRegistry::new().with(OffByOne(spec)).unwrap();
    let r = replay(recording, &changed, ToolsMode::Live).await;
    let tool = r.divergences.iter().find_map(|d| match d {
        Divergence::ToolResult { step, recorded, replayed, .. } => Some((*step, recorded.clone(), replayed.clone())),
        _ => None,
    });
    assert_eq!(tool, Some((1, "42".to_owned(), "41".to_owned())), "{:?}", r.divergences);
    assert!(
        r.divergences.iter().any(|d| matches!(d, Divergence::Request { step: 2, .. })),
        "the model would now be sent another result at step 2: {:?}",
        r.divergences
    );
    app.drain().await;
}

#[tokio::test]
async fn a_run_with_a_persons_decision_replays_with_that_decision() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (status, accepted) =
        app.post_task(&json!({"prompt": "What is 6 * 7?", "approval": {"tools": ["calculator"]}})).await;
    assert_eq!(status, 202);
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let waiting = app.run_until_status(&id, "waiting_for_input", Duration::from_secs(60)).await;
    let decision = json!({"decisions": [{"tool_use_id": waiting["pending"][0]["tool_use_id"], "action": "edit", "input": {"expression": "2 + 2"}}]});
    assert_eq!(app.post_input(&app.key, &id, &decision).await.0, 202);
    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(task["result"]["text"], "The answer is 4.");
    let steps = app.store.steps(id.parse().unwrap()).await.unwrap();

    let r = replay(Recording::of(&steps, 10, None), &ToolRegistry::builtin(), ToolsMode::Live).await;
    assert_eq!(r.divergences, [], "the edit is replayed, so the tool gives 4 again");
    assert!(matches!(&r.outcome, Outcome::Succeeded(res) if res.text == "The answer is 4."));
    app.drain().await;
}
