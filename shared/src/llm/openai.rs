//! OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, OpenRouter…): the conversation
//! is translated to and from agentq's Messages-style blocks, tool calls included.
//!
//! Translation: assistant `tool_use` blocks become `tool_calls` (arguments as a JSON string);
//! each user `tool_result` block becomes a `role: "tool"` message. `finish_reason` maps
//! `stop` → `end_turn`, `tool_calls` → `tool_use`, `length` → `max_tokens`,
//! `content_filter` → `refusal`. Cached prompt tokens (`prompt_tokens_details.cached_tokens`)
//! are counted as cache reads and taken out of the input tokens, as OpenAI bills them.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::send_json;
use super::{ContentBlock, Model, ModelError, ModelRequest, ModelResponse, Role, StopReason, TokenUsage};
use crate::domain::secret::Secret;

/// A client for one model behind a Chat Completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiModel {
    http: reqwest::Client,
    url: String,
    api_key: Option<Secret>,
    model: String,
    max_tokens: u32,
    timeout: Duration,
}

impl OpenAiModel {
    /// `base_url` includes the version, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Option<Secret>,
        model: impl Into<String>,
        max_tokens: u32,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            model: model.into(),
            max_tokens,
            timeout,
        }
    }
}

/// The Chat Completions body for a request.
fn wire_request(model: &str, max_tokens: u32, request: &ModelRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &request.messages {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in &m.content {
            match block {
                ContentBlock::Text { text: t } => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(t);
                }
                ContentBlock::ToolUse { id, name, input } => tool_calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}
                })),
                ContentBlock::ToolResult { tool_use_id, content, is_error } => {
                    let content = if *is_error { format!("error: {content}") } else { content.clone() };
                    messages.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
                }
                ContentBlock::Other(_) => {}
            }
        }
        match m.role {
            Role::Assistant => {
                let mut msg =
                    json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !tool_calls.is_empty() {
                    msg["tool_calls"] = json!(tool_calls);
                }
                messages.push(msg);
            }
            Role::User if !text.is_empty() => messages.push(json!({"role": "user", "content": text})),
            Role::User => {}
        }
    }
    let mut body = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
    }
    body
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn from_wire(wire: WireResponse, requested: &str) -> Result<ModelResponse, ModelError> {
    let choice =
        wire.choices.into_iter().next().ok_or_else(|| ModelError::Decode("no choices in the answer".into()))?;
    let mut content = Vec::new();
    if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
        content.push(ContentBlock::Text { text });
    }
    if let Some(refusal) = &choice.message.refusal {
        content.push(ContentBlock::Text { text: refusal.clone() });
    }
    for call in choice.message.tool_calls {
        // Arguments the model garbled reach the tool as a string, which fails its schema
        // and goes back to the model as an error it can correct.
        let input = serde_json::from_str(&call.function.arguments).unwrap_or(Value::String(call.function.arguments));
        content.push(ContentBlock::ToolUse { id: call.id, name: call.function.name, input });
    }
    let has_tools = content.iter().any(|b| matches!(b, ContentBlock::ToolUse { .. }));
    let stop_reason = match choice.finish_reason.as_deref() {
        _ if choice.message.refusal.is_some() => StopReason::Refusal,
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        Some("content_filter") => StopReason::Refusal,
        // Some servers say "stop" even when they return tool calls.
        _ if has_tools => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    };
    let usage = wire.usage.map_or_else(TokenUsage::default, |u| {
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).min(u.prompt_tokens);
        TokenUsage {
            input_tokens: u.prompt_tokens - cached,
            output_tokens: u.completion_tokens,
            cache_read_input_tokens: cached,
            cache_creation_input_tokens: 0,
        }
    });
    Ok(ModelResponse { model: wire.model.unwrap_or_else(|| requested.to_owned()), content, stop_reason, usage })
}

#[async_trait]
impl Model for OpenAiModel {
    fn id(&self) -> &str {
        &self.model
    }

    fn provider(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut req =
            self.http.post(&self.url).timeout(self.timeout).json(&wire_request(&self.model, self.max_tokens, request));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose());
        }
        let bytes = send_json(req, self.timeout).await?;
        let wire: WireResponse = serde_json::from_slice(&bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        from_wire(wire, &self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, ToolSpec};

    #[test]
    fn a_tool_conversation_translates_to_chat_messages() {
        let request = ModelRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::user_text("6*7?"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentBlock::Text { text: "calculating".into() },
                        ContentBlock::ToolUse {
                            id: "c1".into(),
                            name: "calculator".into(),
                            input: json!({"expression": "6*7"}),
                        },
                    ],
                },
                Message {
                    role: Role::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "c1".into(),
                        content: "42".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "math".into(),
                input_schema: json!({"type": "object"}),
            }],
        };
        let body = wire_request("gpt-4o-mini", 100, &request);
        let m = &body["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1], json!({"role": "user", "content": "6*7?"}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"],
            json!({"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"})
        );
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "c1", "content": "42"}));
        assert_eq!(body["tools"][0]["function"]["parameters"], json!({"type": "object"}));
    }

    #[test]
    fn tool_calls_and_cached_usage_come_back_as_blocks_and_cache_reads() {
        let wire: WireResponse = serde_json::from_value(json!({
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"1+1\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 40}}
        }))
        .unwrap();
        let r = from_wire(wire, "gpt-4o-mini").unwrap();
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(
            r.content,
            [ContentBlock::ToolUse { id: "c1".into(), name: "calculator".into(), input: json!({"expression": "1+1"}) }]
        );
        assert_eq!(
            r.usage,
            TokenUsage {
                input_tokens: 60,
                output_tokens: 7,
                cache_read_input_tokens: 40,
                cache_creation_input_tokens: 0
            }
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        let answer = |reason: &str| {
            let wire: WireResponse = serde_json::from_value(json!({
                "choices": [{"message": {"content": "x"}, "finish_reason": reason}]
            }))
            .unwrap();
            from_wire(wire, "m").unwrap().stop_reason
        };
        assert_eq!(answer("stop"), StopReason::EndTurn);
        assert_eq!(answer("length"), StopReason::MaxTokens);
        assert_eq!(answer("content_filter"), StopReason::Refusal);
    }
}
