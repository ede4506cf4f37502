//! Tools served by remote MCP servers (Streamable HTTP), through the official Rust SDK
//! (`rmcp`): each configured server's tools are offered to the model as `<server>__<tool>`,
//! beside the built-ins, their input checked against their schemas as ours are.
//!
//! - **One session per server per instance**, opened on first use and reused by every task
//!   (an MCP session is an `initialize` handshake: too slow to pay per call). A session that
//!   breaks is dropped and the next call opens another.
//! - **Tool lists are cached** for the configured TTL. A server that cannot be listed keeps
//!   its last good list (calls then fail as tool errors the model reads); one never listed is
//!   left out of the tasks that start while it is down, and tried again after a short wait
//!   rather than by every task.
//! - **The URL passes the SSRF guard** at every connect: its host is resolved, every address
//!   must be public (loopback only with the local-only `AGENTQ_WEBHOOKS_ALLOW_LOCAL`), and the
//!   connection goes to the checked address. Redirects are never followed.
//! - **Calls are bounded**: each attempt by the server's `timeout_secs`, the answer by
//!   [`MAX_RESULT_BYTES`] (the transport refuses a larger JSON body), and retried with jittered
//!   backoff like HTTP tools when the transport failed or timed out (not when the server
//!   answered an error). Each call carries `agentq/idempotency_key` (task, step, tool use) in
//!   its `_meta`, so a server can do a retried call once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::Retryable as _;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ContentBlock, RequestMetaObject};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ServiceExt as _, model::Tool as RemoteTool};
use serde_json::Value;

use super::{Entry, Tool, ToolContext, ToolError};
use crate::domain::backoff::Retries;
use crate::domain::secret::Secret;
use crate::domain::tooldef::McpServerSpec;
use crate::llm::ToolSpec;
use crate::outbound::{Reach, vet};

/// Largest tool result passed back to the model.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Largest JSON body the transport accepts from a server (a result, or a tool list).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long a server that could not be listed is left alone before the next try.
const RETRY_LIST_AFTER: Duration = Duration::from_secs(15);

/// How an instance reaches its MCP servers.
#[derive(Debug, Clone, Copy)]
pub struct McpPolicy {
    pub reach: Reach,
    pub list_ttl: Duration,
}

type Session = RunningService<RoleClient, ClientConfig>;

/// One server: its configuration and this instance's session with it.
struct Server {
    spec: McpServerSpec,
    /// Header values, secrets resolved.
    headers: Vec<(String, Secret)>,
    policy: McpPolicy,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// A failure, and whether another attempt may help.
struct Failure {
    message: String,
    transient: bool,
}

impl Server {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_secs.max(1))
    }

    /// The open session, or a new one (one connect at a time per server).
    async fn session(&self) -> Result<Arc<Session>, Failure> {
        let mut slot = self.session.lock().await;
        if let Some(open) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(open.clone());
        }
        let session = Arc::new(self.connect().await?);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forgets a session that failed, so the next call opens another.
    async fn drop_session(&self, broken: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Session, Failure> {
        let name = &self.spec.name;
        let unreachable = |why: String| {
            tracing::warn!(mcp_server = %name, error = %why, "MCP server could not be reached");
            Failure { message: format!("the {name} tool server could not be reached"), transient: true }
        };
        let url = reqwest::Url::parse(&self.spec.url).map_err(|e| unreachable(e.to_string()))?;
        let addr = vet(&url, self.policy.reach, false).await.map_err(|why| {
            Failure { message: format!("the {name} tool server's address is not allowed"), transient: false }
                .logged(name, &why)
        })?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let http = crate::net::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout())
            .resolve(&host, addr)
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let mut headers = std::collections::HashMap::new();
        for (k, v) in &self.headers {
            let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.expose()))
            else {
                return Err(Failure {
                    message: format!("the {name} tool server has a malformed header"),
                    transient: false,
                });
            };
            headers.insert(k, v);
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.spec.url.as_str()).custom_headers(headers);
        config.max_json_response_size = MAX_RESPONSE_BYTES;
        config.reinit_on_expired_session = true;
        let transport = StreamableHttpClientTransport::with_client(http, config);
        match tokio::time::timeout(self.timeout(), ClientConfig::default().serve(transport)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer to initialize in {:?}", self.timeout()))),
        }
    }

    /// Every tool the server lists, in one attempt.
    async fn list(&self) -> Result<Vec<RemoteTool>, Failure> {
        let session = self.session().await?;
        match tokio::time::timeout(self.timeout(), session.peer().list_all_tools()).await {
            Ok(Ok(tools)) => Ok(tools),
            Ok(Err(e)) => Err(self.failed(&session, e, "listing its tools").await),
            Err(_) => {
                self.drop_session(&session).await;
                Err(self.timed_out("listing its tools"))
            }
        }
    }

    /// One attempt of a call.
    async fn call(&self, tool: &str, input: &Value, context: &ToolContext) -> Result<CallToolResult, Failure> {
        let session = self.session().await?;
        let arguments = match input {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let mut meta = serde_json::Map::new();
        meta.insert("agentq/idempotency_key".into(), context.idempotency_key().into());
        let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        params.meta = Some(RequestMetaObject(meta.into()));
        match tokio::time::timeout(self.timeout(), session.peer().call_tool(params)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(self.failed(&session, e, "running the tool").await),
            Err(_) => {
                // The call is abandoned (the SDK cancels it); the session may be wedged.
                self.drop_session(&session).await;
                Err(self.timed_out("running the tool"))
            }
        }
    }

    fn timed_out(&self, doing: &str) -> Failure {
        let name = &self.spec.name;
        tracing::warn!(mcp_server = %name, timeout_s = self.timeout().as_secs(), doing, "MCP server timed out");
        Failure { message: format!("the {name} tool server timed out {doing}"), transient: true }
    }

    /// An error from the session: the server's own answer (final), or the transport's (the
    /// session is dropped and the call may be tried again).
    async fn failed(&self, session: &Arc<Session>, e: ServiceError, doing: &str) -> Failure {
        let name = &self.spec.name;
        match e {
            ServiceError::McpError(error) => Failure {
                message: format!("the {name} tool server refused {doing}: {}", error.message),
                transient: false,
            },
            other => {
                tracing::warn!(mcp_server = %name, error = %other, doing, "MCP session failed");
                self.drop_session(session).await;
                Failure { message: format!("the {name} tool server failed {doing}"), transient: true }
            }
        }
    }
}

impl Failure {
    fn logged(self, server: &str, why: &str) -> Self {
        tracing::warn!(mcp_server = %server, error = %why, "MCP server refused by the address guard");
        self
    }
}

/// A server's tool, as the model sees it.
struct McpTool {
    spec: ToolSpec,
    /// Its name on the server.
    remote: String,
    server: Arc<Server>,
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, input: &Value, context: &ToolContext) -> Result<String, ToolError> {
        let server = &self.server;
        let backoff =
            Retries::new(Duration::from_millis(200), Duration::from_secs(5), server.spec.max_attempts.max(1) as u32);
        let result = (|| server.call(&self.remote, input, context))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|f| f.transient)
            .notify(|f, wait| tracing::warn!(tool = %self.spec.name, wait_ms = wait.as_millis() as u64, error = %f.message, "MCP tool call failed; retrying"))
            .await
            .map_err(|f| ToolError(f.message))?;
        let text = result_text(&result);
        if result.is_error == Some(true) {
            return Err(ToolError(text));
        }
        Ok(text)
    }
}

/// A result as text for the model: its text blocks, else its structured content as JSON;
/// other blocks (images, audio) are named, not inlined. Cut to [`MAX_RESULT_BYTES`].
fn result_text(result: &CallToolResult) -> String {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => format!("[an image, {}]", i.mime_type),
            ContentBlock::Audio(a) => format!("[audio, {}]", a.mime_type),
            ContentBlock::Resource(_) => "[an embedded resource]".to_owned(),
            ContentBlock::ResourceLink(r) => format!("[a resource: {}]", r.uri),
            _ => "[content of a kind agentq does not read]".to_owned(),
        })
        .collect();
    if result.content.iter().all(|b| !matches!(b, ContentBlock::Text(_)))
        && let Some(structured) = &result.structured_content
    {
        parts.insert(0, structured.to_string());
    }
    let mut text = parts.join("\n");
    if text.len() > MAX_RESULT_BYTES {
        let mut cut = MAX_RESULT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The tools of one server as last listed.
struct Listing {
    at: Instant,
    entries: Option<Vec<Entry>>,
}

/// One MCP server as a source of tools for the registry.
pub struct McpSource {
    server: Arc<Server>,
    listing: tokio::sync::Mutex<Option<Listing>>,
}

impl std::fmt::Debug for McpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSource").field("name", &self.server.spec.name).finish()
    }
}

impl McpSource {
    /// A source that connects on first use. `headers` are the spec's, secrets resolved.
    pub fn new(spec: McpServerSpec, headers: Vec<(String, Secret)>, policy: McpPolicy) -> Self {
        Self {
            server: Arc::new(Server { spec, headers, policy, session: tokio::sync::Mutex::new(None) }),
            listing: tokio::sync::Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &McpServerSpec {
        &self.server.spec
    }

    /// Whether `name` is one of this server's tools' names (listed or not).
    pub fn claims(&self, name: &str) -> bool {
        self.server.spec.claims(name)
    }

    /// The server's tools, from the cache while it is fresh; none while it cannot be listed
    /// and never was.
    pub(super) async fn entries(&self) -> Vec<Entry> {
        let mut listing = self.listing.lock().await;
        let fresh = |l: &Listing| {
            let ttl = if l.entries.is_some() { self.server.policy.list_ttl } else { RETRY_LIST_AFTER };
            l.at.elapsed() < ttl
        };
        if let Some(l) = listing.as_ref().filter(|l| fresh(l)) {
            return l.entries.clone().unwrap_or_default();
        }
        let started = Instant::now();
        let listed = self.server.list().await;
        let spec = &self.server.spec;
        let entries = match listed {
            Ok(tools) => {
                let entries = self.build(tools);
                tracing::info!(mcp_server = %spec.name, tools = entries.len(), took_ms = started.elapsed().as_millis() as u64, "MCP tools listed");
                Some(entries)
            }
            Err(f) => {
                let stale = listing.as_ref().and_then(|l| l.entries.clone());
                tracing::warn!(mcp_server = %spec.name, error = %f.message, keeping_last_list = stale.is_some(), "MCP tools could not be listed");
                stale
            }
        };
        let out = entries.clone().unwrap_or_default();
        *listing = Some(Listing { at: Instant::now(), entries });
        out
    }

    /// Registry entries for the listed tools the configuration allows; a tool whose schema
    /// does not compile, or whose name collides with another's, is left out (and logged).
    fn build(&self, tools: Vec<RemoteTool>) -> Vec<Entry> {
        let spec = &self.server.spec;
        let mut entries: Vec<Entry> = Vec::new();
        for tool in tools.into_iter().filter(|t| spec.allows(&t.name)) {
            let name = spec.tool_name(&tool.name);
            if entries.iter().any(|e| e.tool.spec().name == name) {
                tracing::warn!(mcp_server = %spec.name, tool = %tool.name, "two MCP tools share a name once cleaned; the second is left out");
                continue;
            }
            let input_schema = Value::Object((*tool.input_schema).clone());
            let validator = match jsonschema::validator_for(&input_schema) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(mcp_server = %spec.name, tool = %tool.name, error = %e, "an MCP tool's input schema does not compile; it is left out");
                    continue;
                }
            };
            let description = tool.description.as_deref().unwrap_or_default().to_owned();
            let description =
                if description.is_empty() { format!("{} (from {})", tool.name, spec.name) } else { description };
            let mcp = McpTool {
                spec: ToolSpec { name, description, input_schema },
                remote: tool.name.to_string(),
                server: self.server.clone(),
            };
            entries.push(Entry { tool: Arc::new(mcp), validator: Arc::new(validator) });
        }
        entries
    }
}
