//! The model side of the agent loop: a provider-neutral conversation format, a small
//! `dyn`-compatible [`Model`] trait, and one module per provider.
//!
//! The conversation types follow the Anthropic Messages API, the richest of the formats we
//! speak; other providers translate to and from them.

pub mod anthropic;
pub mod bedrock;
pub mod chain;
mod http;
pub mod openai;
pub mod retry;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

// The conversation is the domain's; the providers speak it.
pub use crate::domain::conversation::{ContentBlock, Message, Role, StopReason, ToolSpec, text_of};
pub use anthropic::AnthropicModel;
pub use bedrock::BedrockModel;
pub use chain::{
    Answered, BOARD_TTL, BreakerBoard, BreakerPolicy, ChainError, CircuitBreaker, DEFAULT_THROTTLE, ModelChain,
    SharedCircuit,
};
pub use openai::OpenAiModel;
pub use retry::{Attempts, RetryPolicy, complete_watched, complete_with_retries};

/// One model call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
}

/// Tokens one call used, as the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_creation_input_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_read_input_tokens: u64,
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    /// The model that answered, as the provider names it.
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub usage: TokenUsage,
}

impl ModelResponse {
    /// All text blocks, joined.
    pub fn text(&self) -> String {
        text_of(&self.content)
    }
}

/// A failed model call.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model API answered {status} ({kind}): {message}")]
    Status { status: u16, kind: String, message: String, retry_after: Option<Duration> },
    #[error("the model API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the model API: {0}")]
    Connect(String),
    #[error("the model API's answer could not be read: {0}")]
    Decode(String),
}

impl ModelError {
    /// Worth trying again: overloads, rate limits, server faults and network trouble. A 4xx
    /// that blames the request (400, 401, 403, 404, 413) would fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            Self::Timeout(_) | Self::Connect(_) => true,
            Self::Decode(_) => false,
        }
    }

    /// What a client may read: the provider's own words about the request, never the
    /// endpoint or a transport error (those stay in the logs).
    pub fn client_message(&self) -> String {
        match self {
            Self::Status { status, message, .. } => {
                format!("the model rejected the request (HTTP {status}): {message}")
            }
            other => format!("the model could not be used ({})", other.kind()),
        }
    }

    /// The request itself is at fault (malformed, too large): no model would take it.
    pub fn is_request_fault(&self) -> bool {
        matches!(self, Self::Status { status: 400 | 413 | 422, .. })
    }

    /// A short name for the kind of failure (a metric dimension): `http_429`, `timeout`,
    /// `connect`, `decode`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { status, .. } => match status {
                400 => "http_400",
                401 => "http_401",
                403 => "http_403",
                404 => "http_404",
                408 => "http_408",
                409 => "http_409",
                413 => "http_413",
                422 => "http_422",
                429 => "http_429",
                500 => "http_500",
                502 => "http_502",
                503 => "http_503",
                504 => "http_504",
                529 => "http_529",
                400..=499 => "http_4xx",
                _ => "http_5xx",
            },
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Decode(_) => "decode",
        }
    }

    /// The HTTP status the provider answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The provider is rate-limiting us (429): it is up, but asks for fewer calls.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }

    /// How long the provider asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A model provider. Object-safe so a worker can hold a chain of `Box<dyn Model>`.
#[async_trait]
pub trait Model: Send + Sync {
    /// The model id requests ask for; prices are looked up by it.
    fn id(&self) -> &str;

    /// Who serves it (`anthropic`, `openai`, `bedrock`), for logs and traces.
    fn provider(&self) -> &'static str {
        "other"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_blocks_survive_a_round_trip() {
        let raw = json!([
            {"type": "thinking", "thinking": "hmm", "signature": "abc"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "t1", "name": "calculator", "input": {"expression": "1+1"}}
        ]);
        let blocks: Vec<ContentBlock> = serde_json::from_value(raw.clone()).unwrap();
        assert!(matches!(blocks[0], ContentBlock::Other(_)));
        assert!(matches!(blocks[1], ContentBlock::Text { .. }));
        assert_eq!(serde_json::to_value(&blocks).unwrap(), raw);
    }

    #[test]
    fn tool_results_omit_is_error_when_false() {
        let ok = ContentBlock::ToolResult { tool_use_id: "t".into(), content: "2".into(), is_error: false };
        assert_eq!(
            serde_json::to_value(ok).unwrap(),
            json!({"type": "tool_result", "tool_use_id": "t", "content": "2"})
        );
    }

    #[test]
    fn unknown_stop_reasons_are_kept() {
        let r: StopReason = serde_json::from_value(json!("model_context_window_exceeded")).unwrap();
        assert_eq!(r, StopReason::Other("model_context_window_exceeded".into()));
        assert_eq!(serde_json::from_value::<StopReason>(json!("pause_turn")).unwrap(), StopReason::PauseTurn);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        let status =
            |s| ModelError::Status { status: s, kind: String::new(), message: String::new(), retry_after: None };
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 413] {
            assert!(!status(s).is_transient(), "{s}");
        }
    }
}
