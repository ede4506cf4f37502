//! Tools the model may call: a small trait, a registry that validates input against each
//! tool's JSON Schema before running it, and the tools themselves.
//!
//! A tool failure is never a task failure: it goes back to the model as a `tool_result` with
//! `is_error: true` and an explanation, and the model decides what to do next.

mod builtin;
mod http_get;
mod http_tool;
mod mcp;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use builtin::{Calculator, CurrentTime};
pub use http_get::{HttpGet, HttpGetPolicy, is_public_address};
pub use http_tool::{HttpTool, HttpToolSpec};
pub use mcp::{McpPolicy, McpSource};

use crate::llm::ToolSpec;

/// Why a tool call failed, in words for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// Where a call comes from: whose task, which step; enough to make an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolContext {
    pub task_id: String,
    /// The tenant that owns the task (HTTP tools are told, under the signature).
    pub tenant_id: String,
    /// The step (model call) that asked for the tool.
    pub step: u32,
    pub tool_use_id: String,
}

impl ToolContext {
    /// This context for one `tool_use` block.
    pub fn for_call(&self, tool_use_id: &str) -> Self {
        Self { tool_use_id: tool_use_id.to_owned(), ..self.clone() }
    }

    /// Task id + step + tool_use id: the same call retried (or re-run after a crash) carries
    /// the same key, so the service behind the tool can do it once.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.task_id, self.step, self.tool_use_id)
    }
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn spec(&self) -> &ToolSpec;

    /// Runs the tool on input that already matches its schema.
    async fn call(&self, input: &Value, context: &ToolContext) -> Result<String, ToolError>;
}

/// What a tool call produced, ready to become a `tool_result` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
    /// What kind of failure, for metrics and logs: `unknown_tool`, `invalid_input` or
    /// `failed` (the tool itself said no).
    pub error_type: Option<&'static str>,
}

impl ToolOutput {
    fn ok(content: String) -> Self {
        Self { content, is_error: false, error_type: None }
    }

    fn error(error_type: &'static str, content: String) -> Self {
        Self { content, is_error: true, error_type: Some(error_type) }
    }
}

struct Entry {
    tool: Arc<dyn Tool>,
    validator: Arc<jsonschema::Validator>,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Self { tool: self.tool.clone(), validator: self.validator.clone() }
    }
}

/// A tool's schema that is not valid JSON Schema: a configuration error, found at start.
#[derive(Debug, thiserror::Error)]
#[error("tool {name}: invalid input_schema: {message}")]
pub struct SchemaError {
    pub name: String,
    pub message: String,
}

/// The tools offered to the model, in a fixed order: the deployment's own, then those of
/// its MCP servers (listed when a task starts, see [`ToolRegistry::resolved`]).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<Entry>,
    remote: Vec<Arc<McpSource>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The names of [`Self::builtin`]'s tools.
    pub const BUILTIN: [&str; 2] = [Calculator::NAME, CurrentTime::NAME];

    /// The built-in tools that need no configuration: `calculator` and `current_time`.
    pub fn builtin() -> Self {
        Self::new()
            .with(Calculator::new())
            .and_then(|r| r.with(CurrentTime::new()))
            .expect("built-in schemas are valid")
    }

    /// Adds a tool, compiling its schema.
    pub fn with(mut self, tool: impl Tool + 'static) -> Result<Self, SchemaError> {
        let spec = tool.spec();
        let validator = jsonschema::validator_for(&spec.input_schema)
            .map_err(|e| SchemaError { name: spec.name.clone(), message: e.to_string() })?;
        self.tools.push(Entry { tool: Arc::new(tool), validator: Arc::new(validator) });
        Ok(self)
    }

    /// Adds an MCP server whose tools are listed by [`Self::resolved`].
    pub fn with_source(mut self, source: McpSource) -> Self {
        self.remote.push(Arc::new(source));
        self
    }

    /// This registry with its MCP servers' tools in it, from each server's cached list (the
    /// servers are listed at once; one that cannot be listed adds nothing).
    pub async fn resolved(&self) -> Self {
        if self.remote.is_empty() {
            return self.clone();
        }
        let listed = futures::future::join_all(self.remote.iter().map(|s| s.entries())).await;
        let mut tools = self.tools.clone();
        for entry in listed.into_iter().flatten() {
            if !tools.iter().any(|e| e.tool.spec().name == entry.tool.spec().name) {
                tools.push(entry);
            }
        }
        Self { tools, remote: Vec::new() }
    }

    /// Whether a tool of this name is offered.
    pub fn knows(&self, name: &str) -> bool {
        self.tools.iter().any(|e| e.tool.spec().name == name)
    }

    /// Whether the name is one of the deployment's tools, or may be one of its MCP servers'
    /// (their lists are not read here).
    pub fn may_know(&self, name: &str) -> bool {
        self.knows(name) || self.remote.iter().any(|s| s.claims(name))
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|e| e.tool.spec().name.clone()).collect()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|e| e.tool.spec().clone()).collect()
    }

    /// Only the named tools (a task may restrict what it is offered). Unknown names are
    /// ignored here: the submit path already refused them.
    pub fn subset(&self, names: &[String]) -> Self {
        Self {
            tools: self.tools.iter().filter(|e| names.contains(&e.tool.spec().name)).cloned().collect(),
            // Of the tools known now: resolve MCP servers first.
            remote: Vec::new(),
        }
    }

    /// Whether `input` matches the named tool's schema (a reviewer's edited input is checked
    /// before it is accepted); the error says why not, for people.
    pub fn check(&self, name: &str, input: &Value) -> Result<(), String> {
        match self.tools.iter().find(|e| e.tool.spec().name == name) {
            Some(entry) => Self::check_entry(entry, input),
            // An MCP tool's schema is checked when the call runs.
            None if self.may_know(name) => Ok(()),
            None => Err(format!("there is no tool named {name:?}")),
        }
    }

    fn check_entry(entry: &Entry, input: &Value) -> Result<(), String> {
        let problems: Vec<String> = entry
            .validator
            .iter_errors(input)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("the input does not match the tool's schema: {}", problems.join("; ")))
        }
    }

    /// Runs the named tool on `input`, after checking it against the tool's schema.
    pub async fn run(&self, name: &str, input: &Value, context: &ToolContext) -> ToolOutput {
        let Some(entry) = self.tools.iter().find(|e| e.tool.spec().name == name) else {
            return ToolOutput::error("unknown_tool", format!("there is no tool named {name:?}"));
        };
        if let Err(why) = Self::check_entry(entry, input) {
            return ToolOutput::error("invalid_input", why);
        }
        match entry.tool.call(input, context).await {
            Ok(content) => ToolOutput::ok(content),
            Err(e) => ToolOutput::error("failed", e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> ToolContext {
        ToolContext { task_id: "T".into(), tenant_id: "acme".into(), step: 1, tool_use_id: "tu".into() }
    }

    #[tokio::test]
    async fn input_that_violates_the_schema_is_an_error_result() {
        let r = ToolRegistry::builtin();
        let out = r.run("calculator", &json!({"expr": "1"}), &ctx()).await;
        assert!(out.is_error);
        assert!(out.content.contains("schema") && out.content.contains("expression"), "{}", out.content);
        let out = r.run("calculator", &json!({"expression": 5}), &ctx()).await;
        assert!(out.is_error && out.content.contains("/expression"), "{}", out.content);
        let out = r.run("calculator", &json!("1+1"), &ctx()).await;
        assert!(out.is_error);
    }

    #[tokio::test]
    async fn an_unknown_tool_is_an_error_result() {
        let out = ToolRegistry::builtin().run("rm", &json!({}), &ctx()).await;
        assert!(out.is_error);
        assert_eq!(out.error_type, Some("unknown_tool"));
        assert!(out.content.contains("rm"));
    }

    #[test]
    fn a_subset_keeps_only_the_named_tools_in_order() {
        let r = ToolRegistry::builtin();
        assert_eq!(r.names(), ["calculator", "current_time"]);
        assert_eq!(r.subset(&["current_time".into()]).names(), ["current_time"]);
    }

    #[test]
    fn idempotency_keys_name_the_task_step_and_call() {
        assert_eq!(ctx().idempotency_key(), "T:1:tu");
    }
}
