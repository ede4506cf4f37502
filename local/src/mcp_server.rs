//! A small MCP server (Streamable HTTP, built with the official Rust SDK, `rmcp`) with demo
//! tools, served by the fake model at `/mcp`: `make up` offers its tools to tasks as `demo__…`,
//! and the tests run the worker's MCP client against it, including its failure modes.
//!
//! Tools: `add` (two numbers), `echo` (text back), `slow` (answers after `ms`, for timeouts),
//! `fail` (an error result, as a tool that says no), `big` (`kib` KiB of text, for the size
//! bound).

use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddInput {
    /// The first number.
    pub a: f64,
    /// The second number.
    pub b: f64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EchoInput {
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SlowInput {
    /// How long to wait before answering, in milliseconds.
    pub ms: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FailInput {
    pub message: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BigInput {
    /// KiB of text to answer with.
    pub kib: u32,
}

/// The demo server's tools.
#[derive(Debug, Clone)]
pub struct DemoTools {
    tool_router: ToolRouter<Self>,
}

impl Default for DemoTools {
    fn default() -> Self {
        Self { tool_router: Self::tool_router() }
    }
}

#[tool_router]
impl DemoTools {
    #[tool(description = "Adds two numbers")]
    fn add(&self, Parameters(AddInput { a, b }): Parameters<AddInput>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Answers with the text it is given")]
    fn echo(&self, Parameters(EchoInput { text }): Parameters<EchoInput>) -> String {
        text
    }

    #[tool(description = "Answers after a while")]
    async fn slow(&self, Parameters(SlowInput { ms }): Parameters<SlowInput>) -> String {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "Always fails, with the message it is given")]
    fn fail(&self, Parameters(FailInput { message }): Parameters<FailInput>) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(message)])
    }

    #[tool(description = "Answers with a lot of text")]
    fn big(&self, Parameters(BigInput { kib }): Parameters<BigInput>) -> String {
        "x".repeat(kib.min(4096) as usize * 1024)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The server as a router to nest at `/mcp` (sessions kept in memory, loopback hosts only).
pub fn router() -> axum::Router {
    let service: StreamableHttpService<DemoTools, LocalSessionManager> = StreamableHttpService::new(
        || Ok(DemoTools::default()),
        Default::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    axum::Router::new().nest_service("/mcp", service)
}
