//! A scripted stand-in for the Anthropic Messages API, so the local stack runs without a key.
//!
//! The script: if the first user message holds arithmetic (`6 * 7`) and the request offers a
//! `calculator` tool that has not been used yet, ask for it; otherwise end the turn with an
//! answer that quotes the tool results. Every answer ends with `digest=<16 hex>` (SHA-256 of
//! the first user message), the check the bench driver applies. Usage is ~len/4 tokens,
//! deterministic. Like the real API it answers 401 without `x-api-key` and 400 without
//! `anthropic-version` or for a malformed body.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Default)]
pub struct FakeModel {
    /// Added before every answer.
    pub latency: Duration,
}

impl FakeModel {
    pub fn router(self) -> axum::Router {
        axum::Router::new().route("/v1/messages", post(messages)).with_state(Arc::new(self))
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

async fn messages(State(fake): State<Arc<FakeModel>>, headers: HeaderMap, body: String) -> Response {
    if !headers.contains_key("x-api-key") {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "x-api-key header is required");
    }
    if !headers.contains_key("anthropic-version") {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version header is required");
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "body is not JSON");
    };
    let (Some(model), Some(messages)) = (request["model"].as_str(), request["messages"].as_array()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "model and messages are required");
    };
    if request["max_tokens"].as_u64().is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens: field required");
    }
    tokio::time::sleep(fake.latency).await;

    let prompt = messages.first().map(first_text).unwrap_or_default();
    let results: Vec<String> = messages
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| b["content"].as_str().unwrap_or("").to_owned())
        .collect();
    let offers_calculator = request["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "calculator"));

    let (content, stop_reason) = match arithmetic(&prompt) {
        Some(expr) if offers_calculator && results.is_empty() => (
            json!([
                {"type": "text", "text": "Let me calculate that."},
                {"type": "tool_use", "id": format!("toolu_{:016x}", fastrand::u64(..)), "name": "calculator", "input": {"expression": expr}}
            ]),
            "tool_use",
        ),
        _ => {
            let answer = match results.last() {
                Some(r) => format!("The answer is {r}."),
                None => "Done.".to_owned(),
            };
            (
                json!([{"type": "text", "text": format!("{answer} (fake model, digest={})", digest(&prompt))}]),
                "end_turn",
            )
        }
    };
    let output_tokens = (content.to_string().len() / 4).max(1);
    axum::Json(json!({
        "id": format!("msg_{:016x}", fastrand::u64(..)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": (body.len() / 4).max(1),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0
        }
    }))
    .into_response()
}

fn first_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

/// `sha256(text)` as hex, first 16 characters.
pub fn digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The longest run of digits, operators, dots, spaces and parentheses holding at least one
/// digit and one operator.
fn arithmetic(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || "+-*/%^(). ".contains(c)))
        .map(str::trim)
        .filter(|s| s.chars().any(|c| c.is_ascii_digit()) && s.chars().any(|c| "+-*/%^".contains(c)))
        .max_by_key(|s| s.len())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_found_in_a_sentence() {
        assert_eq!(arithmetic("What is 6 * 7?").as_deref(), Some("6 * 7"));
        assert_eq!(arithmetic("compute (2 + 3) * 4 please").as_deref(), Some("(2 + 3) * 4"));
        assert_eq!(arithmetic("hello 2026").as_deref(), None);
    }

    #[test]
    fn the_digest_matches_the_bench_drivers() {
        // fake_llm.digest("hello") = sha256("hello").hexdigest()[:16]
        assert_eq!(digest("hello"), "2cf24dba5fb0a30e");
    }
}
