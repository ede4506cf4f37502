//! MCP tool servers through submit, the worker and the status API: a real MCP server (the
//! demo server `make up` runs, built with the official SDK) over Streamable HTTP on loopback,
//! the model over HTTP, the worker's registry and the submit path's checks built by the same
//! wiring a deployment uses (`AGENTQ_MCP_SERVERS`).

use std::time::Duration;

use agentq_tests::{TestApp, message, test_config_with, tool_result_of};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(60);

/// The demo MCP server on a free loopback port; dropping the handle stops it.
struct McpServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl McpServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            axum::serve(listener, agentq_local::mcp_server::router())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { url, stop: Some(stop), done }
    }

    /// Stops it and waits until its port is closed.
    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        // Open sessions hold the graceful shutdown; the port closes at once either way.
        self.done.abort();
        let _ = (&mut self.done).await;
    }
}

/// A port nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// The app with the worker's tools and the submit path's checks wired from `servers` (the
/// `AGENTQ_MCP_SERVERS` list) and the other variables.
async fn app_with(servers: Value, extra: &[(&str, &str)]) -> TestApp {
    let mut app = TestApp::spawn().await;
    let servers = servers.to_string();
    let mut vars = vec![("AGENTQ_MCP_SERVERS", servers.as_str())];
    vars.extend_from_slice(extra);
    let config = test_config_with(&app.table, &vars);
    let http = agentq::runtime::wiring::http_client().unwrap();
    app.worker.tools = agentq::runtime::wiring::tool_registry(&config, &http).unwrap();
    app.submit.tools = agentq::runtime::wiring::tool_schemas(&config).unwrap();
    app.submit.allowed.mcp_servers = config.tools.mcp_servers.clone();
    app
}

/// Asks for `tool` with `input` until a tool result comes back, then answers with it.
struct CallOnce {
    tool: &'static str,
    input: Value,
}

impl Respond for CallOnce {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let usage = json!({"input_tokens": 50, "output_tokens": 10});
        let offered = body["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == self.tool));
        match tool_result_of(&body) {
            None if offered => ResponseTemplate::new(200).set_body_json(message(
                json!([{"type": "tool_use", "id": "toolu_1", "name": self.tool, "input": self.input}]),
                "tool_use",
                usage,
            )),
            None => ResponseTemplate::new(200).set_body_json(message(
                json!([{"type": "text", "text": "No such tool."}]),
                "end_turn",
                usage,
            )),
            Some(r) => {
                let text = format!("error={} {}", r["is_error"] == true, r["content"].as_str().unwrap_or_default());
                ResponseTemplate::new(200).set_body_json(message(
                    json!([{"type": "text", "text": text}]),
                    "end_turn",
                    usage,
                ))
            }
        }
    }
}

async fn script(app: &TestApp, tool: &'static str, input: Value) {
    Mock::given(method("POST")).respond_with(CallOnce { tool, input }).mount(&app.model).await;
}

async fn requests(app: &TestApp) -> Vec<Value> {
    app.model.received_requests().await.unwrap().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
}

fn offered(request: &Value) -> Vec<String> {
    request["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}

async fn run(app: &TestApp, body: Value) -> Value {
    let (status, accepted) = app.post_task(&body).await;
    assert_eq!(status, 202, "{accepted}");
    app.run_until_terminal(accepted["task_id"].as_str().unwrap(), WAIT).await
}

#[tokio::test]
async fn an_mcp_servers_tools_are_offered_beside_the_built_ins_and_a_call_runs_and_is_recorded() {
    let server = McpServer::start().await;
    let app = app_with(json!([{"name": "demo", "url": server.url}]), &[]).await;
    script(&app, "demo__add", json!({"a": 2, "b": 3})).await;

    let task = run(&app, json!({"prompt": "What is 2 + 3?"})).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "error=false 5");

    let first = &requests(&app).await[0];
    let names = offered(first);
    for name in ["calculator", "current_time", "demo__add", "demo__echo", "demo__slow", "demo__fail"] {
        assert!(names.contains(&name.to_owned()), "{name} is offered: {names:?}");
    }
    let add = first["tools"].as_array().unwrap().iter().find(|t| t["name"] == "demo__add").unwrap();
    assert_eq!(add["description"], "Adds two numbers");
    assert_eq!(add["input_schema"]["required"], json!(["a", "b"]), "the server's schema is passed on: {add}");

    let id = task["task_id"].as_str().unwrap();
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let tool = steps["steps"].as_array().unwrap().iter().find(|s| s["kind"] == "tool").expect("a tool step");
    assert_eq!(
        (tool["name"].as_str(), tool["content"].as_str(), tool["is_error"].as_bool()),
        (Some("demo__add"), Some("5"), Some(false))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_input_that_misses_the_servers_schema_goes_back_to_the_model_without_a_call() {
    let server = McpServer::start().await;
    let app = app_with(json!([{"name": "demo", "url": server.url}]), &[]).await;
    script(&app, "demo__add", json!({"a": "two"})).await;

    let task = run(&app, json!({"prompt": "Add."})).await;
    assert_eq!(task["status"], "succeeded", "a bad tool input is the model's to fix: {task}");
    let text = task["result"]["text"].as_str().unwrap();
    assert!(text.starts_with("error=true") && text.contains("does not match the tool's schema"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_task_may_name_mcp_tools_and_only_those_are_offered_but_not_tools_of_no_server() {
    let server = McpServer::start().await;
    let app = app_with(json!([{"name": "demo", "url": server.url, "allowed_tools": ["add", "echo"]}]), &[]).await;
    script(&app, "demo__echo", json!({"text": "hello"})).await;

    let (status, refused) = app.post_task(&json!({"prompt": "x", "tools": ["demo__slow", "other__add"]})).await;
    assert_eq!(status, 400, "{refused}");
    let fields: Vec<&str> =
        refused["errors"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(fields.iter().any(|m| m.contains("\"demo__slow\"")), "a tool the server may not offer: {fields:?}");
    assert!(fields.iter().any(|m| m.contains("\"other__add\"") && m.contains("demo__<tool>")), "{fields:?}");

    let task = run(&app, json!({"prompt": "Echo.", "tools": ["demo__echo"]})).await;
    assert_eq!(task["result"]["text"], "error=false hello", "{task}");
    assert_eq!(offered(&requests(&app).await[0]), ["demo__echo"], "only what the task named, of what is allowed");
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_fails_or_is_too_slow_is_a_tool_error_the_model_reads() {
    let server = McpServer::start().await;
    let servers = json!([{"name": "demo", "url": server.url, "timeout_secs": 1, "max_attempts": 2}]);
    let app = app_with(servers.clone(), &[]).await;
    script(&app, "demo__fail", json!({"message": "the ledger is locked"})).await;
    let failed = run(&app, json!({"prompt": "Fail."})).await;
    assert_eq!(failed["status"], "succeeded", "{failed}");
    assert_eq!(failed["result"]["text"], "error=true the ledger is locked", "the server's own words reach the model");

    let app = app_with(servers, &[]).await;
    script(&app, "demo__slow", json!({"ms": 3000})).await;
    let started = std::time::Instant::now();
    let slow = run(&app, json!({"prompt": "Wait."})).await;
    assert_eq!(slow["status"], "succeeded", "{slow}");
    assert_eq!(slow["result"]["text"], "error=true the demo tool server timed out running the tool");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "two attempts of a second each, not the tool's 3 s twice over"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_is_down_leaves_its_tools_out_and_the_task_runs_with_the_rest() {
    let app = app_with(json!([{"name": "gone", "url": dead_url().await, "timeout_secs": 2}]), &[]).await;
    script(&app, "calculator", json!({"expression": "6 * 7"})).await;
    let task = run(&app, json!({"prompt": "What is 6 * 7?"})).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "error=false 42");
    let names = offered(&requests(&app).await[0]);
    assert!(names.iter().all(|n| !n.starts_with("gone__")) && names.contains(&"calculator".to_owned()), "{names:?}");
}

#[tokio::test]
async fn a_listed_server_that_goes_down_keeps_its_cached_tools_and_a_call_fails_as_a_tool_error() {
    let server = McpServer::start().await;
    let app = app_with(json!([{"name": "demo", "url": server.url, "timeout_secs": 2, "max_attempts": 2}]), &[]).await;
    script(&app, "demo__add", json!({"a": 1, "b": 1})).await;
    let first = run(&app, json!({"prompt": "One plus one."})).await;
    assert_eq!(first["result"]["text"], "error=false 2");
    server.stop().await;

    let second = run(&app, json!({"prompt": "One plus one, again."})).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    let text = second["result"]["text"].as_str().unwrap();
    assert!(text.starts_with("error=true the demo tool server"), "{text}");
    let last = requests(&app).await.into_iter().rev().find(|r| tool_result_of(r).is_none()).unwrap();
    assert!(offered(&last).contains(&"demo__add".to_owned()), "the list is the cached one");
}

#[tokio::test]
async fn a_loopback_server_is_refused_by_the_address_guard_unless_local_use_is_on() {
    let server = McpServer::start().await;
    let servers = json!([{"name": "demo", "url": server.url}]);
    let app = app_with(servers, &[("AGENTQ_WEBHOOKS_ALLOW_LOCAL", "false")]).await;
    script(&app, "demo__add", json!({"a": 1, "b": 2})).await;
    let task = run(&app, json!({"prompt": "Add."})).await;
    assert_eq!(task["result"]["text"], "No such tool.", "no tool of a loopback server is offered: {task}");
    let names = offered(&requests(&app).await[0]);
    assert!(names.iter().all(|n| !n.starts_with("demo__")), "{names:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_header_naming_a_secret_nobody_holds_stops_the_worker_at_start_in_words() {
    let app = TestApp::spawn().await;
    let servers = json!([{"name": "gh", "url": "https://mcp.example.com/mcp",
                          "headers": {"Authorization": {"secret": "AGENTQ_TEST_NOBODY_HOLDS_THIS"}}}])
    .to_string();
    let config = test_config_with(&app.table, &[("AGENTQ_MCP_SERVERS", servers.as_str())]);
    let http = agentq::runtime::wiring::http_client().unwrap();
    let Err(e) = agentq::runtime::wiring::tool_registry(&config, &http) else { panic!("the worker would start") };
    assert_eq!(e.var, "AGENTQ_MCP_SERVERS");
    assert!(e.problem.contains("AGENTQ_TEST_NOBODY_HOLDS_THIS"), "{e}");
    assert!(agentq::runtime::wiring::tool_schemas(&config).is_ok(), "the submit path needs no secret");
}

#[tokio::test]
async fn a_large_result_is_cut_to_the_bound_before_the_model_reads_it() {
    let server = McpServer::start().await;
    let app = app_with(json!([{"name": "demo", "url": server.url}]), &[]).await;
    script(&app, "demo__big", json!({"kib": 300})).await;
    let task = run(&app, json!({"prompt": "Big."})).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let id = task["task_id"].as_str().unwrap();
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let tool = steps["steps"].as_array().unwrap().iter().find(|s| s["kind"] == "tool").expect("a tool step");
    let kept = tool["content"].as_str().map(str::len).unwrap_or_default();
    assert!(kept > 0 && kept <= 256 * 1024, "300 KiB kept as {kept} bytes");
    server.stop().await;
}
