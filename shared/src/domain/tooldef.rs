//! A tool the operator serves over HTTP, as configuration describes it: plain data the
//! configuration reads and the agent's HTTP tool is built from.

use serde::Deserialize;
use serde_json::Value;

/// A tool as written in configuration (`AGENTQ_HTTP_TOOLS`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub url: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_attempts")]
    pub max_attempts: usize,
    /// `"always"`: every call waits for a person's decision (docs/approvals.md).
    #[serde(default)]
    pub approval: Approval,
}

/// Whether a tool's calls wait for a person's decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Only when the task asks (`"approval": {"tools": [...]}` on submit).
    #[default]
    Never,
    Always,
}

fn default_timeout() -> u64 {
    30
}

fn default_attempts() -> usize {
    3
}
