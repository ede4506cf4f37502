//! Tools defined in configuration and served by an HTTP endpoint of the operator's: the
//! model's input is POSTed as JSON; the response body is the result.
//!
//! Each request carries:
//! - `Idempotency-Key: <task id>:<step>:<tool_use id>`, the same on every retry and on a
//!   re-run after a crash, so the service can perform the action once;
//! - `X-Agentq-Timestamp: <unix seconds>` and `X-Agentq-Signature: v1=<hex>`, an HMAC-SHA256
//!   over `<timestamp>.<body>` with the shared secret, so the service can check the call came
//!   from agentq and is fresh.
//!
//! Transient failures (408, 429, 5xx, timeouts, connection errors) are retried with jittered
//! backoff; the final error becomes an `is_error` result. The endpoints are the operator's own
//! configuration, so the `http_get` address guard does not apply to them.

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable as _};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{Tool, ToolContext, ToolError};
use crate::config::Secret;
use crate::llm::ToolSpec;

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
}

fn default_timeout() -> u64 {
    30
}

fn default_attempts() -> usize {
    3
}

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

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// One attempt's failure, and whether another is worth making.
struct Failure {
    message: String,
    transient: bool,
}

impl HttpTool {
    async fn attempt(&self, body: &[u8], context: &ToolContext) -> Result<String, Failure> {
        let timestamp = crate::now().unix_timestamp();
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", context.idempotency_key())
            .header("x-agentq-timestamp", timestamp.to_string())
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            req = req.header("x-agentq-signature", signature(secret, timestamp, body));
        }
        let response = req.send().await.map_err(|e| Failure {
            message: format!("calling {} failed: {e}", self.spec.name),
            transient: e.is_timeout() || e.is_connect() || e.is_request(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Failure { message: e.to_string(), transient: true })?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_RESPONSE_BYTES)]).into_owned();
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
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_max_times(self.max_attempts - 1);
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
        };
        HttpTool::new(spec, reqwest::Client::new(), Some(Secret::new("s3cret")))
    }

    fn ctx() -> ToolContext {
        ToolContext { task_id: "01TASK".into(), tenant_id: "acme".into(), step: 2, tool_use_id: "toolu_9".into() }
    }

    #[tokio::test]
    async fn a_call_posts_the_input_signed_with_an_idempotency_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header("idempotency-key", "01TASK:2:toolu_9"))
            .respond_with(|req: &Request| {
                let ts: i64 = req.headers["x-agentq-timestamp"].to_str().unwrap().parse().unwrap();
                let expected = signature(&Secret::new("s3cret"), ts, &req.body);
                if req.headers["x-agentq-signature"] != expected.as_str() {
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
    fn the_signature_is_an_hmac_of_timestamp_and_body() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let sig = signature(&Secret::new("secret"), 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(sig, "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686");
    }
}
