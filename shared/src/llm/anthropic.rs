//! The Anthropic Messages API over reqwest. There is no well-kept Rust client for it, and the
//! part we need is small: one POST, its headers, its error shape and `retry-after`.
//!
//! **Prompt caching** (on by default, `AGENTQ_PROMPT_CACHING`): the request marks cache
//! breakpoints (`cache_control: ephemeral`) after the tools, after the system prompt, and on
//! the last block of the conversation. An agent loop resends its whole conversation every
//! step, so each step reads the previous steps' prefix from the cache (at a tenth of the input
//! price) and writes only what the last step added (at 1.25×). The usage the API reports
//! (`cache_read_input_tokens`, `cache_creation_input_tokens`) is priced from the price table.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::http::send_json;
use super::{ContentBlock, Message, Model, ModelError, ModelRequest, ModelResponse, StopReason, TokenUsage, ToolSpec};
use crate::domain::secret::Secret;

/// The API version this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for one Anthropic model.
#[derive(Debug, Clone)]
pub struct AnthropicModel {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    model: String,
    max_tokens: u32,
    timeout: Duration,
    prompt_caching: bool,
}

impl AnthropicModel {
    /// `http` is shared between models so connections are pooled; `base_url` is e.g.
    /// `https://api.anthropic.com`.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Secret,
        model: impl Into<String>,
        max_tokens: u32,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            api_key,
            model: model.into(),
            max_tokens,
            timeout,
            prompt_caching: true,
        }
    }

    /// Marks cache breakpoints in every request (the default) or none.
    pub fn with_prompt_caching(mut self, on: bool) -> Self {
        self.prompt_caching = on;
        self
    }
}

/// `{"type": "ephemeral"}`: the prefix up to here may be cached for five minutes.
fn ephemeral() -> serde_json::Value {
    serde_json::json!({"type": "ephemeral"})
}

/// The request body: the conversation as is, with cache breakpoints when `caching`.
pub fn wire_body(model: &str, max_tokens: u32, request: &ModelRequest, caching: bool) -> serde_json::Value {
    let body = WireRequest {
        model,
        max_tokens,
        system: request.system.as_deref(),
        messages: &request.messages,
        tools: &request.tools,
    };
    let mut body = serde_json::to_value(&body).expect("a request always serializes");
    if !caching {
        return body;
    }
    if let Some(last_tool) = body["tools"].as_array_mut().and_then(|t| t.last_mut()) {
        last_tool["cache_control"] = ephemeral();
    }
    if let Some(system) = body["system"].as_str().map(str::to_owned) {
        body["system"] = serde_json::json!([{"type": "text", "text": system, "cache_control": ephemeral()}]);
    }
    if let Some(last_block) = body["messages"]
        .as_array_mut()
        .and_then(|m| m.last_mut())
        .and_then(|m| m["content"].as_array_mut())
        .and_then(|c| c.last_mut())
    {
        last_block["cache_control"] = ephemeral();
    }
    body
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [ToolSpec],
}

#[derive(Deserialize)]
struct WireResponse {
    model: String,
    content: Vec<ContentBlock>,
    stop_reason: Option<StopReason>,
    #[serde(default)]
    usage: TokenUsage,
}

#[async_trait]
impl Model for AnthropicModel {
    fn id(&self) -> &str {
        &self.model
    }

    fn provider(&self) -> &'static str {
        "anthropic"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = wire_body(&self.model, self.max_tokens, request, self.prompt_caching);
        let request = self
            .http
            .post(&self.url)
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .timeout(self.timeout)
            .json(&body);
        let bytes = send_json(request, self.timeout).await?;
        decode(&bytes)
    }
}

/// A Messages API response body, read.
pub fn decode(bytes: &[u8]) -> Result<ModelResponse, ModelError> {
    let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
    Ok(ModelResponse {
        model: wire.model,
        content: wire.content,
        // A missing stop reason only happens mid-stream; treat it like the end of a turn.
        stop_reason: wire.stop_reason.unwrap_or(StopReason::EndTurn),
        usage: wire.usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client(server: &MockServer) -> AnthropicModel {
        AnthropicModel::new(
            crate::net::client(),
            &server.uri(),
            Secret::new("sk-test"),
            "claude-sonnet-4-5",
            1024,
            Duration::from_secs(5),
        )
    }

    fn request() -> ModelRequest {
        ModelRequest { system: None, messages: vec![Message::user_text("hi")], tools: vec![] }
    }

    #[test]
    fn with_caching_the_tools_and_the_end_of_the_conversation_are_breakpoints() {
        let tool = ToolSpec { name: "t".into(), description: "d".into(), input_schema: json!({"type": "object"}) };
        let request = ModelRequest {
            system: Some("be brief".into()),
            messages: vec![Message::user_text("first"), Message::user_text("second")],
            tools: vec![tool.clone(), tool],
        };
        let body = wire_body("m", 10, &request, true);
        assert_eq!(body["tools"][1]["cache_control"], json!({"type": "ephemeral"}));
        assert!(body["tools"][0].get("cache_control").is_none());
        assert_eq!(body["system"][0]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!(body["messages"][1]["content"][0]["cache_control"], json!({"type": "ephemeral"}));
        assert!(body["messages"][0]["content"][0].get("cache_control").is_none());
        let plain = wire_body("m", 10, &request, false);
        assert!(!plain.to_string().contains("cache_control"));
        assert_eq!(plain["system"], "be brief");
    }

    #[tokio::test]
    async fn a_call_sends_the_key_version_and_model_and_reads_the_answer() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(header("x-api-key", "sk-test"))
            .and(header("anthropic-version", ANTHROPIC_VERSION))
            .and(body_partial_json(json!({"model": "claude-sonnet-4-5", "max_tokens": 1024})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "hello"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": null}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let r = client(&server).complete(&request()).await.unwrap();
        assert_eq!(r.text(), "hello");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert_eq!(r.usage.input_tokens, 10);
        assert_eq!(r.usage.cache_read_input_tokens, 0);
    }

    #[tokio::test]
    async fn an_overload_is_transient_and_carries_retry_after() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(529).insert_header("retry-after", "2").set_body_json(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ))
            .mount(&server)
            .await;
        let e = client(&server).complete(&request()).await.unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.to_string().contains("overloaded_error"), "{e}");
    }

    #[tokio::test]
    async fn a_bad_request_is_permanent_and_keeps_the_providers_message() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}),
            ))
            .mount(&server)
            .await;
        let e = client(&server).complete(&request()).await.unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("max_tokens: too big"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transient_connect_error() {
        let m = AnthropicModel::new(
            crate::net::client(),
            "http://127.0.0.1:9",
            Secret::new("k"),
            "m",
            1,
            Duration::from_secs(2),
        );
        let e = m.complete(&request()).await.unwrap_err();
        assert!(matches!(e, ModelError::Connect(_)), "{e:?}");
        assert!(e.is_transient());
    }
}
