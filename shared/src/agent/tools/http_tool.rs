//! Tools defined in configuration and served by an HTTP endpoint of the operator's: the
//! model's input is POSTed as JSON; the response body is the result.
//!
//! Each request carries:
//! - `Idempotency-Key: <task id>:<step>:<tool_use id>`, the same on every retry and on a
//!   re-run after a crash, so the service can perform the action once;
//! - `X-Agentq-Tenant` and `X-Agentq-Task`: whose task asks;
//! - `X-Agentq-Timestamp: <unix seconds>` and `X-Agentq-Signature: v2=<hex>`, an HMAC-SHA256
//!   with the shared secret over the lines `<timestamp>`, `POST`, `<url>`, `<idempotency key>`,
//!   `<tenant>` and then the body (see [`signed_text`]), so the service can check that the call
//!   came from agentq, is fresh, and was not moved to another URL, tenant or call.
//!
//! A deployment with HTTP tools and no signing secret refuses to start unless
//! `AGENTQ_ALLOW_UNSIGNED_TOOLS=true` says it means it. Redirects are never followed (the
//! signature would go with them). Transient failures (408, 429, 5xx, timeouts, connection
//! errors) are retried with jittered backoff; the final error becomes an `is_error` result, in
//! words that name the tool, not the endpoint (that is in the log). A response is read up to
//! 256 KiB. The endpoints are the operator's own configuration, so the `http_get` address guard
//! does not apply to them.

use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable as _;
use hmac::{Hmac, KeyInit as _, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Tool, ToolContext, ToolError};
use crate::domain::backoff::Retries;
use crate::domain::secret::Secret;
pub use crate::domain::tooldef::HttpToolSpec;
use crate::llm::ToolSpec;

/// Largest response body passed back to the model.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

pub struct HttpTool {
    spec: ToolSpec,
    url: String,
    timeout: Duration,
    max_attempts: usize,
    http: reqwest::Client,
    secret: Option<Secret>,
}

impl HttpTool {
    pub fn new(config: HttpToolSpec, http: reqwest::Client, secret: Option<Secret>) -> Self {
        Self {
            spec: ToolSpec { name: config.name, description: config.description, input_schema: config.input_schema },
            url: config.url,
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            max_attempts: config.max_attempts.max(1),
            http,
            secret,
        }
    }
}

/// What a call's signature covers: one line each for the timestamp, the method, the URL, the
/// idempotency key and the tenant, then the body.
pub fn signed_text(
    timestamp: i64,
    method: &str,
    url: &str,
    idempotency_key: &str,
    tenant: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut text = format!("{timestamp}\n{method}\n{url}\n{idempotency_key}\n{tenant}\n").into_bytes();
    text.extend_from_slice(body);
    text
}

/// `v2=<hex HMAC-SHA256(secret, signed_text)>`.
pub fn signature(secret: &Secret, signed_text: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(signed_text);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("v2={hex}")
}

/// One attempt's failure, and whether another is worth making.
struct Failure {
    message: String,
    transient: bool,
}

impl HttpTool {
    async fn attempt(&self, body: &[u8], context: &ToolContext) -> Result<String, Failure> {
        let timestamp = crate::now().unix_timestamp();
        let key = context.idempotency_key();
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &key)
            .header("x-agentq-tenant", &context.tenant_id)
            .header("x-agentq-task", &context.task_id)
            .header("x-agentq-timestamp", timestamp.to_string())
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            let text = signed_text(timestamp, "POST", &self.url, &key, &context.tenant_id, body);
            req = req.header("x-agentq-signature", signature(secret, &text));
        }
        let mut response = req.send().await.map_err(|e| {
            // The error names the endpoint: the log may say so, the task may not.
            tracing::warn!(tool = %self.spec.name, error = %e, "tool call failed");
            let kind = if e.is_timeout() { "timed out" } else { "could not be reached" };
            Failure {
                message: format!("the {} tool {kind}", self.spec.name),
                transient: e.is_timeout() || e.is_connect() || e.is_request(),
            }
        })?;
        let status = response.status();
        // Read no more than will be kept, however much the service sends.
        let mut bytes = Vec::new();
        while bytes.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(tool = %self.spec.name, error = %e, "reading a tool's answer failed");
                    let message = format!("the {} tool's answer could not be read", self.spec.name);
                    return Err(Failure { message, transient: true });
                }
            }
        }
        bytes.truncate(MAX_RESPONSE_BYTES);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        Err(Failure {
            message: format!("the {} service answered {status}: {text}", self.spec.name),
            transient: matches!(status.as_u16(), 408 | 429 | 500..=599),
        })
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, input: &Value, context: &ToolContext) -> Result<String, ToolError> {
        let body = serde_json::to_vec(input).map_err(|e| ToolError(e.to_string()))?;
        let backoff = Retries::new(Duration::from_millis(200), Duration::from_secs(5), self.max_attempts as u32);
        (|| self.attempt(&body, context))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|f| f.transient)
            .notify(|f, wait| tracing::warn!(tool = %self.spec.name, wait_ms = wait.as_millis() as u64, error = %f.message, "tool call failed; retrying"))
            .await
            .map_err(|f| ToolError(f.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{header, method};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    fn tool(server: &MockServer, attempts: usize) -> HttpTool {
        let spec = HttpToolSpec {
            name: "lookup".into(),
            description: "looks things up".into(),
            input_schema: json!({"type": "object"}),
            url: format!("{}/hooks/lookup", server.uri()),
            timeout_secs: 5,
            max_attempts: attempts,
            approval: Default::default(),
        };
        HttpTool::new(spec, crate::net::client(), Some(Secret::new("s3cret")))
    }

    fn ctx() -> ToolContext {
        ToolContext { task_id: "01TASK".into(), tenant_id: "acme".into(), step: 2, tool_use_id: "toolu_9".into() }
    }

    #[tokio::test]
    async fn a_call_posts_the_input_signed_with_an_idempotency_key() {
        let server = MockServer::start().await;
        // The receiver checks against the URL it is published at.
        let published = format!("{}/hooks/lookup", server.uri());
        Mock::given(method("POST"))
            .and(header("idempotency-key", "01TASK:2:toolu_9"))
            .and(header("x-agentq-tenant", "acme"))
            .and(header("x-agentq-task", "01TASK"))
            .respond_with(move |req: &Request| {
                let ts: i64 = req.headers["x-agentq-timestamp"].to_str().unwrap().parse().unwrap();
                let text = signed_text(ts, "POST", &published, "01TASK:2:toolu_9", "acme", &req.body);
                if req.headers["x-agentq-signature"] != signature(&Secret::new("s3cret"), &text).as_str() {
                    return ResponseTemplate::new(401);
                }
                assert_eq!(serde_json::from_slice::<Value>(&req.body).unwrap(), json!({"q": "rust"}));
                ResponseTemplate::new(200).set_body_string("found it")
            })
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(tool(&server, 3).call(&json!({"q": "rust"}), &ctx()).await.unwrap(), "found it");
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_same_idempotency_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).up_to_n_times(2).mount(&server).await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_string("ok")).mount(&server).await;
        assert_eq!(tool(&server, 3).call(&json!({}), &ctx()).await.unwrap(), "ok");
        let keys: Vec<_> =
            server.received_requests().await.unwrap().iter().map(|r| r.headers["idempotency-key"].clone()).collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| k == "01TASK:2:toolu_9"));
    }

    #[tokio::test]
    async fn the_last_failure_becomes_the_error_and_client_errors_are_not_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).set_body_string("down"))
            .mount(&server)
            .await;
        let e = tool(&server, 2).call(&json!({}), &ctx()).await.unwrap_err();
        assert!(e.0.contains("503") && e.0.contains("down"), "{e}");
        assert_eq!(server.received_requests().await.unwrap().len(), 2);

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(422).set_body_string("bad input"))
            .mount(&server)
            .await;
        assert!(tool(&server, 3).call(&json!({}), &ctx()).await.is_err());
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    #[test]
    fn the_signature_covers_time_method_url_key_tenant_and_body() {
        let text = signed_text(1_700_000_000, "POST", "https://t.example/x", "T:1:u", "acme", br#"{"a":1}"#);
        assert_eq!(text, b"1700000000\nPOST\nhttps://t.example/x\nT:1:u\nacme\n{\"a\":1}");
        // printf '1700000000\nPOST\nhttps://t.example/x\nT:1:u\nacme\n{"a":1}' | openssl dgst -sha256 -hmac secret
        let sig = signature(&Secret::new("secret"), &text);
        assert_eq!(sig, "v2=f32584458579b28146ce56e52c74c5180f46df93059d978ee2950c4585081d10");
        let moved = signed_text(1_700_000_000, "POST", "https://t.example/x", "T:1:u", "globex", br#"{"a":1}"#);
        assert_ne!(signature(&Secret::new("secret"), &moved), sig, "another tenant, another signature");
    }

    #[tokio::test]
    async fn an_unreachable_service_is_named_by_its_tool_not_its_address() {
        let spec = HttpToolSpec {
            name: "lookup".into(),
            description: "d".into(),
            input_schema: json!({"type": "object"}),
            url: "http://127.0.0.1:9/internal/secret-path".into(),
            timeout_secs: 1,
            max_attempts: 1,
            approval: Default::default(),
        };
        let e = HttpTool::new(spec, crate::net::client(), None).call(&json!({}), &ctx()).await.unwrap_err();
        assert!(!e.0.contains("127.0.0.1") && !e.0.contains("secret-path"), "{e}");
        assert!(e.0.contains("lookup"), "{e}");
    }
}
