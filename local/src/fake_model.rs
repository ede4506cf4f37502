//! A scripted stand-in for the Anthropic Messages API, so the local stack runs without a key,
//! with knobs the fault suite turns at run time.
//!
//! The script: if the first user message says `call <tool> with <JSON>` and the request offers
//! that tool, ask for it with that input (once); if it holds arithmetic (`6 * 7`) and the
//! request offers a `calculator` tool that has not been used yet, ask for it; otherwise end
//! the turn with an answer that quotes the tool results. With `steps` set, it instead asks for a tool (`tool`,
//! default `calculator`) that many times before answering. Every answer ends with
//! `digest=<16 hex>` (SHA-256 of the first user message), the check the bench driver applies;
//! asked for JSON by the system prompt (a task's `output_schema`), it answers
//! `{"answer": "…", "digest": "…"}` instead.
//! Usage is ~len/4 tokens, deterministic. Like the real API it answers 401 without
//! `x-api-key` and 400 without `anthropic-version` or for a malformed body.
//!
//! Control (local only): `POST /control` with any of `latency_ms`, `fail_rate`, `fail_status`,
//! `steps`, `tool`, `down`, `tool_timeout_rate`, `tool_delay_ms`; `GET /stats` gives requests
//! and answers per prompt digest; `DELETE /stats` clears them. `POST /tool` is an HTTP tool
//! endpoint that sometimes answers too late (`tool_timeout_rate`, `tool_delay_ms`). `/mcp` is
//! the demo MCP server ([`crate::mcp_server`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// What the fake does; every field can be changed through `POST /control`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    pub latency_ms: u64,
    /// Share of calls answered with `fail_status` instead.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Tool calls asked for before answering (0: the arithmetic script).
    pub steps: u32,
    pub tool: String,
    /// Every call fails with 529.
    pub down: bool,
    /// Share of `/tool` calls that take `tool_delay_ms`.
    pub tool_timeout_rate: f64,
    pub tool_delay_ms: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            fail_rate: 0.0,
            fail_status: 529,
            steps: 0,
            tool: "calculator".into(),
            down: false,
            tool_timeout_rate: 0.0,
            tool_delay_ms: 0,
        }
    }
}

/// Calls seen for one prompt.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptStats {
    pub requests: u64,
    pub answered: u64,
}

#[derive(Debug)]
struct Shared {
    knobs: Knobs,
    stats: BTreeMap<String, PromptStats>,
    rng: fastrand::Rng,
    cache: PromptCache,
}

/// Prompt caching as the Messages API bills it: a request's prompt is its tools, its system
/// blocks and its messages' blocks, in that order; a block marked `cache_control` is a
/// breakpoint, and the prefix up to each breakpoint is written to the cache (5 minutes, and
/// only from 1,024 tokens). A later request whose prompt starts with a cached prefix reads it:
/// `cache_read_input_tokens` for that prefix, `cache_creation_input_tokens` for what it writes
/// beyond it up to its last breakpoint, `input_tokens` for the rest. Tokens are bytes / 4.
#[derive(Debug, Default)]
pub struct PromptCache {
    entries: std::collections::HashMap<String, std::time::Instant>,
}

/// The three parts of a request's input, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputBill {
    pub input: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

const CACHE_TTL: Duration = Duration::from_secs(300);
const MIN_CACHED_TOKENS: u64 = 1024;

impl PromptCache {
    /// Bills `request` and records what it writes.
    pub fn bill(&mut self, request: &Value) -> InputBill {
        let now = std::time::Instant::now();
        self.entries.retain(|_, expires| *expires > now);
        let mut segments: Vec<(Value, bool)> = Vec::new();
        let mut push = |mut v: Value, role: Option<&str>| {
            let breakpoint = v.as_object_mut().and_then(|o| o.remove("cache_control")).is_some();
            if let Some(role) = role {
                v = json!({"role": role, "block": v});
            }
            segments.push((v, breakpoint));
        };
        for tool in request["tools"].as_array().into_iter().flatten() {
            push(tool.clone(), None);
        }
        match &request["system"] {
            Value::String(text) => push(json!({"type": "text", "text": text}), None),
            Value::Array(blocks) => blocks.iter().for_each(|b| push(b.clone(), None)),
            _ => {}
        }
        for m in request["messages"].as_array().into_iter().flatten() {
            let role = m["role"].as_str().unwrap_or("user");
            match &m["content"] {
                Value::String(text) => push(json!({"type": "text", "text": text}), Some(role)),
                Value::Array(blocks) => blocks.iter().for_each(|b| push(b.clone(), Some(role))),
                _ => {}
            }
        }
        let mut hasher = Sha256::new();
        let (mut tokens, mut prefixes) = (0u64, Vec::new());
        for (v, breakpoint) in &segments {
            let text = v.to_string();
            hasher.update(text.as_bytes());
            tokens += (text.len() / 4) as u64;
            let hash: String = hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
            prefixes.push((hash, tokens, *breakpoint));
        }
        let total = tokens.max(1);
        let read =
            prefixes.iter().filter(|(h, ..)| self.entries.contains_key(h)).map(|(_, t, _)| *t).max().unwrap_or(0);
        let written = prefixes.iter().filter(|(_, t, b)| *b && *t >= MIN_CACHED_TOKENS).map(|(_, t, _)| *t).max();
        for (hash, t, breakpoint) in &prefixes {
            if *breakpoint && *t >= MIN_CACHED_TOKENS {
                self.entries.insert(hash.clone(), now + CACHE_TTL);
            }
        }
        let cached_to = written.unwrap_or(0).max(read);
        InputBill { cache_read: read, cache_write: cached_to - read, input: total - cached_to }
    }
}

#[derive(Debug, Clone)]
pub struct FakeModel {
    shared: Arc<Mutex<Shared>>,
}

impl FakeModel {
    pub fn new(knobs: Knobs) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                knobs,
                stats: BTreeMap::new(),
                rng: fastrand::Rng::with_seed(42),
                cache: PromptCache::default(),
            })),
        }
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/v1/messages", post(messages))
            .route("/control", post(control))
            .route("/stats", get(stats).delete(clear))
            .route("/tool", post(tool))
            .with_state(self)
            .merge(crate::mcp_server::router())
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

async fn control(State(fake): State<FakeModel>, axum::Json(update): axum::Json<Value>) -> Response {
    let mut shared = fake.shared.lock().expect("poisoned");
    let mut knobs = serde_json::to_value(&shared.knobs).expect("knobs serialize");
    for (k, v) in update.as_object().into_iter().flatten() {
        knobs[k] = v.clone();
    }
    match serde_json::from_value(knobs) {
        Ok(k) => {
            shared.knobs = k;
            axum::Json(json!(shared.knobs)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn stats(State(fake): State<FakeModel>) -> Response {
    axum::Json(json!(fake.shared.lock().expect("poisoned").stats)).into_response()
}

async fn clear(State(fake): State<FakeModel>) -> StatusCode {
    fake.shared.lock().expect("poisoned").stats.clear();
    StatusCode::NO_CONTENT
}

async fn tool(State(fake): State<FakeModel>, body: String) -> Response {
    let delay = {
        let mut shared = fake.shared.lock().expect("poisoned");
        let late = shared.rng.f64() < shared.knobs.tool_timeout_rate;
        if late { shared.knobs.tool_delay_ms } else { 0 }
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    axum::Json(json!({"looked_up": body.len()})).into_response()
}

async fn messages(State(fake): State<FakeModel>, headers: HeaderMap, body: String) -> Response {
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
    let prompt = messages.first().map(first_text).unwrap_or_default();
    let key = digest(&prompt);
    let (knobs, fail) = {
        let mut shared = fake.shared.lock().expect("poisoned");
        shared.stats.entry(key.clone()).or_default().requests += 1;
        let fail = shared.knobs.down || shared.rng.f64() < shared.knobs.fail_rate;
        (shared.knobs.clone(), fail)
    };
    tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    if fail {
        let status = if knobs.down { 529 } else { knobs.fail_status };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = if status.as_u16() == 529 { "overloaded_error" } else { "api_error" };
        return error(status, kind, "the fake model is failing on purpose");
    }

    let results: Vec<String> = messages
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| b["content"].as_str().unwrap_or("").to_owned())
        .collect();
    let offered = |name: &str| request["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == name));
    let tool_use = |name: &str, input: Value| {
        json!([
            {"type": "text", "text": "Let me use a tool."},
            {"type": "tool_use", "id": format!("toolu_{:016x}", fastrand::u64(..)), "name": name, "input": input}
        ])
    };
    let scripted = scripted_call(&prompt).filter(|(name, _)| offered(name) && results.is_empty());
    let (content, stop_reason) = match (scripted, arithmetic(&prompt)) {
        (Some((name, input)), _) => (tool_use(&name, input), "tool_use"),
        _ if knobs.steps > 0 && offered(&knobs.tool) && (results.len() as u32) < knobs.steps => {
            let input =
                if knobs.tool == "calculator" { json!({"expression": "1 + 1"}) } else { json!({"q": prompt.len()}) };
            (tool_use(&knobs.tool, input), "tool_use")
        }
        (None, Some(expr)) if knobs.steps == 0 && offered("calculator") && results.is_empty() => {
            (tool_use("calculator", json!({"expression": expr})), "tool_use")
        }
        _ => {
            let answer = match results.last() {
                Some(r) if knobs.steps == 0 => format!("The answer is {r}."),
                Some(_) => format!("Done after {} tool calls.", results.len()),
                None => "Done.".to_owned(),
            };
            let text = if wants_json(&request) {
                // Asked for JSON (a task with an `output_schema`): the answer as an object.
                json!({"answer": answer, "digest": key}).to_string()
            } else {
                format!("{answer} (fake model, digest={key})")
            };
            (json!([{"type": "text", "text": text}]), "end_turn")
        }
    };
    let bill = {
        let mut shared = fake.shared.lock().expect("poisoned");
        shared.stats.entry(key).or_default().answered += 1;
        shared.cache.bill(&request)
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
            "input_tokens": bill.input,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": bill.cache_write,
            "cache_read_input_tokens": bill.cache_read
        }
    }))
    .into_response()
}

/// `call <tool> with <JSON>` in a prompt: the tool and its input.
fn scripted_call(prompt: &str) -> Option<(String, Value)> {
    let rest = &prompt[prompt.find("call ")? + 5..];
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    let json = &rest[name.len()..].trim_start().strip_prefix("with")?.trim_start();
    let input = serde_json::Deserializer::from_str(json).into_iter::<Value>().next()?.ok()?;
    (!name.is_empty()).then_some((name, input))
}

fn first_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

/// `sha256(text)` as hex, first 16 characters.
/// Whether the system prompt asks for a JSON answer (agentq's output-schema instruction).
fn wants_json(request: &Value) -> bool {
    let system = match &request["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
        _ => String::new(),
    };
    system.contains("JSON Schema")
}

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
    fn a_scripted_call_names_its_tool_and_input() {
        let (name, input) = scripted_call(r#"Please call demo__add with {"a": 2, "b": 3} and say the sum."#).unwrap();
        assert_eq!(name, "demo__add");
        assert_eq!(input, json!({"a": 2, "b": 3}));
        assert_eq!(scripted_call("call nobody"), None);
    }

    #[test]
    fn arithmetic_is_found_in_a_sentence() {
        assert_eq!(arithmetic("What is 6 * 7?").as_deref(), Some("6 * 7"));
        assert_eq!(arithmetic("compute (2 + 3) * 4 please").as_deref(), Some("(2 + 3) * 4"));
        assert_eq!(arithmetic("hello 2026").as_deref(), None);
    }

    fn request(tools: usize, turns: usize, cached: bool) -> Value {
        let mark = |mut v: Value, on: bool| {
            if on && cached {
                v["cache_control"] = json!({"type": "ephemeral"});
            }
            v
        };
        let tools: Vec<Value> = (0..tools)
            .map(|i| mark(json!({"name": format!("t{i}"), "description": "x".repeat(8000)}), i + 1 == tools))
            .collect();
        let messages: Vec<Value> = (0..turns)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                json!({"role": role, "content": [mark(json!({"type": "text", "text": format!("turn {i} {}", "y".repeat(400))}), i + 1 == turns)]})
            })
            .collect();
        json!({"tools": tools, "messages": messages})
    }

    #[test]
    fn a_cached_prefix_is_read_by_the_next_request_and_only_the_new_part_written() {
        let mut cache = PromptCache::default();
        let first = cache.bill(&request(2, 1, true));
        assert_eq!(first.cache_read, 0);
        assert!(first.cache_write > 4000 && first.input == 0, "{first:?}");
        let second = cache.bill(&request(2, 3, true));
        assert_eq!(second.cache_read, first.cache_write, "the first request's prefix is read");
        assert!(second.cache_write > 0 && second.cache_write < 300, "{second:?}");
        let plain = PromptCache::default().bill(&request(2, 3, false));
        assert_eq!((plain.cache_read, plain.cache_write), (0, 0));
        assert_eq!(plain.input, second.cache_read + second.cache_write + second.input);
    }

    #[test]
    fn the_digest_matches_the_bench_drivers() {
        // fake_llm.digest("hello") = sha256("hello").hexdigest()[:16]
        assert_eq!(digest("hello"), "2cf24dba5fb0a30e");
    }
}
