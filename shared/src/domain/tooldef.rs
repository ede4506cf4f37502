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

/// A remote MCP server whose tools the model is offered (`AGENTQ_MCP_SERVERS`,
/// docs/mcp.md). Its tools are named `<name>__<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// 1–32 of `a-z`, `0-9` and `-`: the prefix of its tools' names.
    pub name: String,
    /// The Streamable HTTP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: String,
    /// Sent with every request; a value `{"secret": "KEY"}` is read from the deployment's
    /// secret (or, locally, the environment variable `KEY`) so no token sits in the template.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, HeaderSource>,
    /// Only these of the server's tools (its own names) are offered; default all.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// One attempt of a call (or of connecting and listing).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_attempts")]
    pub max_attempts: usize,
}

/// A header's value: given, or named in the secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HeaderSource {
    Value(String),
    Secret { secret: String },
}

/// Separates a server's name from its tool's in the names the model sees.
pub const MCP_SEPARATOR: &str = "__";
/// Longest tool name the model APIs take.
pub const MAX_TOOL_NAME: usize = 64;

impl McpServerSpec {
    /// Whether the name is usable as a prefix of tool names.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!("server name {:?} must be 1-32 of a-z, 0-9 and -", self.name));
        }
        match self.url.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() => Ok(()),
            _ => Err(format!("server {}: url {:?} must be an http(s) URL", self.name, self.url)),
        }
    }

    /// The name the model sees for this server's tool `tool`: `<server>__<tool>`, with
    /// characters the model APIs refuse replaced by `_`, cut to 64.
    pub fn tool_name(&self, tool: &str) -> String {
        let clean: String =
            tool.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let mut name = format!("{}{MCP_SEPARATOR}{clean}", self.name);
        name.truncate(MAX_TOOL_NAME);
        name
    }

    /// The prefix every one of its tools' names starts with.
    pub fn prefix(&self) -> String {
        format!("{}{MCP_SEPARATOR}", self.name)
    }

    /// Whether `name` (as the model sees it) may be one of this server's tools: it has the
    /// prefix and, when the tools are listed in configuration, is one of them.
    pub fn claims(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix()).is_some_and(|rest| {
            !rest.is_empty()
                && self.allowed_tools.as_ref().is_none_or(|allowed| allowed.iter().any(|t| self.tool_name(t) == name))
        })
    }

    /// Whether `tool` (the server's own name) may be offered.
    pub fn allows(&self, tool: &str) -> bool {
        self.allowed_tools.as_ref().is_none_or(|allowed| allowed.iter().any(|a| a == tool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(json: &str) -> McpServerSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_mcp_tools_name_is_its_servers_then_its_own_cleaned_and_cut_for_the_model_apis() {
        let s = server(r#"{"name": "gh", "url": "https://mcp.example.com/mcp"}"#);
        assert_eq!(s.tool_name("create_issue"), "gh__create_issue");
        assert_eq!(s.tool_name("repo.search/v2"), "gh__repo_search_v2");
        assert_eq!(s.tool_name(&"x".repeat(100)).len(), MAX_TOOL_NAME);
        assert!(s.claims("gh__anything") && !s.claims("gh__") && !s.claims("other__x") && !s.claims("gh_x"));
        let only = server(r#"{"name": "gh", "url": "https://m/mcp", "allowed_tools": ["repo.search"]}"#);
        assert!(only.claims("gh__repo_search") && !only.claims("gh__delete_repo"));
        assert!(only.allows("repo.search") && !only.allows("delete_repo"));
    }

    #[test]
    fn a_server_needs_a_plain_name_and_an_http_url_and_headers_may_name_secrets() {
        assert!(server(r#"{"name": "gh", "url": "https://m/mcp"}"#).check().is_ok());
        assert!(server(r#"{"name": "Git_Hub", "url": "https://m/mcp"}"#).check().is_err());
        assert!(server(r#"{"name": "gh", "url": "file:///etc/passwd"}"#).check().is_err());
        let s = server(
            r#"{"name": "gh", "url": "https://m", "headers": {"Authorization": {"secret": "GH"}, "X-Team": "a"}}"#,
        );
        assert_eq!(s.headers["Authorization"], HeaderSource::Secret { secret: "GH".into() });
        assert_eq!(s.headers["X-Team"], HeaderSource::Value("a".into()));
        assert!(serde_json::from_str::<McpServerSpec>(r#"{"name": "gh", "url": "https://m", "tools": []}"#).is_err());
    }
}
