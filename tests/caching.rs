//! Prompt caching, end to end: the worker's Anthropic requests carry cache breakpoints, the
//! local fake model bills cache reads and writes the way the Messages API does, and the task's
//! cost (from the price table) shows it.

use std::sync::Arc;
use std::time::Duration;

use agentq::agent::{Tool, ToolContext, ToolError, ToolRegistry};
use agentq::domain::secret::Secret;
use agentq::llm::{AnthropicModel, Model, ToolSpec};
use agentq_local::fake_model::{FakeModel, Knobs};
use agentq_tests::TestApp;
use async_trait::async_trait;
use serde_json::{Value, json};

/// A tool with a ~4,000-token description: a large, stable prefix, as real tool sets have.
struct Manual(ToolSpec);

#[async_trait]
impl Tool for Manual {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }
    async fn call(&self, _: &Value, _: &ToolContext) -> Result<String, ToolError> {
        Ok("read".into())
    }
}

/// Runs one task of 5 model calls (4 calculator calls, then the answer) against the fake
/// model, with or without prompt caching; returns the finished task.
async fn five_step_task(caching: bool) -> Value {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let knobs = Knobs { steps: 4, tool: "calculator".into(), ..Knobs::default() };
    tokio::spawn(async move { axum::serve(listener, FakeModel::new(knobs).router()).await });
    let mut app = TestApp::spawn_with(|_| {
        let model = AnthropicModel::new(
            agentq::net::client(),
            &url,
            Secret::new("test-key"),
            "claude-sonnet-4-5",
            1024,
            Duration::from_secs(10),
        )
        .with_prompt_caching(caching);
        vec![Arc::new(model) as Arc<dyn Model>]
    })
    .await;
    let manual = ToolSpec {
        name: "manual".into(),
        description: "The operator's manual. ".repeat(700),
        input_schema: json!({"type": "object"}),
    };
    app.worker.tools = ToolRegistry::builtin().with(Manual(manual)).unwrap();
    let id = app.submit("work through the checklist").await;
    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    app.drain().await;
    task
}

#[tokio::test]
async fn a_five_step_task_with_a_large_stable_prefix_costs_at_most_half_with_caching() {
    let cached = five_step_task(true).await;
    let plain = five_step_task(false).await;
    for task in [&cached, &plain] {
        assert_eq!((task["status"].as_str(), task["iterations"].as_u64()), (Some("succeeded"), Some(5)), "{task}");
    }
    assert_eq!(plain["usage"]["cache_read_input_tokens"], 0);
    assert!(cached["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 4 * 4000, "{}", cached["usage"]);
    let (with, without) = (cached["usage"]["cost_usd"].as_f64().unwrap(), plain["usage"]["cost_usd"].as_f64().unwrap());
    eprintln!("five steps: cached ${with:.6} ({}), uncached ${without:.6} ({})", cached["usage"], plain["usage"]);
    assert!(with <= 0.5 * without, "cached ${with} against uncached ${without}");
}
