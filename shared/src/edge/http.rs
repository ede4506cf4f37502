//! The HTTP edge shared by the API functions: the error type every handler returns, and the
//! one place that turns it into a status code and an RFC 9457 `application/problem+json`
//! body. Nothing else in the code base chooses a status code for an error.

use lambda_http::http::header::{CONTENT_TYPE, HeaderValue};
use lambda_http::http::{HeaderName, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use serde_json::json;

use crate::domain::task::FieldError;
use crate::queue::QueueError;
use crate::store::{RateDecision, StoreError};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the body is {size} bytes; the limit is {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    /// No key, a wrong key, or a revoked key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The tenant's token bucket is empty.
    #[error("too many requests: the limit is {limit} in a burst, refilled at {rate_per_sec}/s")]
    RateLimited { limit: u32, rate_per_sec: f64, decision: RateDecision },
    /// The tenant has as many tasks queued or running as it may.
    #[error("the tenant already has {max} tasks queued or running; submit again when one finishes")]
    ConcurrencyLimited { max: u32 },
    /// The tenant's monthly budget is spent.
    #[error("the tenant's monthly budget of ${budget_usd} is spent (${spent_usd} this month)")]
    BudgetExhausted { budget_usd: f64, spent_usd: f64 },
    /// The request conflicts with the resource's state; `code` says how.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// A dependency is down; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Concurrent requests kept the same records busy; the client may retry at once.
    #[error("too many concurrent requests changed the same records; retry shortly")]
    Busy,
    #[error("unexpected error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BudgetExhausted { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable name of the problem, also the last segment of `type`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_failed",
            Self::MalformedJson(_) => "malformed_json",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::ConcurrencyLimited { .. } => "concurrency_limited",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::Conflict { code, .. } => code,
            Self::Unavailable(_) => "service_unavailable",
            Self::Busy => "busy",
            Self::Unexpected(_) => "internal_error",
        }
    }
}

impl From<ApiError> for Response<Body> {
    fn from(err: ApiError) -> Self {
        let status = err.status();
        let detail = match &err {
            // The cause stays in the log; the client gets no internals.
            ApiError::Unexpected(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed unexpectedly");
                "the server failed to handle the request; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("/problems/{}", err.code()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
            "code": err.code(),
        });
        if let ApiError::Validation(errors) = &err {
            body["errors"] = json!(errors);
        }
        let mut response = json_response(status, &body);
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        let headers = response.headers_mut();
        match err {
            ApiError::MethodNotAllowed { allowed, .. } => {
                if let Ok(allowed) = HeaderValue::from_str(&allowed) {
                    headers.insert(HeaderName::from_static("allow"), allowed);
                }
            }
            ApiError::Unavailable(_) | ApiError::ConcurrencyLimited { .. } => {
                headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from_static("5"));
            }
            ApiError::Busy => {
                headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    HeaderName::from_static("www-authenticate"),
                    HeaderValue::from_static("Bearer realm=\"agentq\""),
                );
            }
            ApiError::RateLimited { limit, decision, .. } => {
                let secs = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from(secs));
                rate_limit_headers(headers, limit, &decision);
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::error!(error = format!("{cause:#}"), "task store call failed");
                Self::Unavailable("the task store is unavailable; try again shortly".into())
            }
            // A conflict that reaches the edge is a write that lost to concurrent ones.
            StoreError::Conflict | StoreError::Contended => {
                tracing::warn!(error = %e, "store contention outlasted retries");
                Self::Busy
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        tracing::error!(error = format!("{:#}", e.0), "task queue call failed");
        Self::Unavailable("the task queue is unavailable; try again shortly".into())
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is
/// full), as in the IETF RateLimit header fields draft.
pub fn rate_limit_headers(headers: &mut lambda_http::http::HeaderMap, limit: u32, decision: &RateDecision) {
    headers.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(limit));
    headers.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(decision.remaining));
    headers.insert(
        HeaderName::from_static("ratelimit-reset"),
        HeaderValue::from(decision.reset.as_secs_f64().ceil() as u64),
    );
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_string(body).expect("response bodies are plain data and always serialize");
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Turns a handler's result into the response, whichever way it went.
pub fn respond(result: Result<Response<Body>, ApiError>) -> Response<Body> {
    result.unwrap_or_else(Response::from)
}

/// The request body, if it is JSON and not too large.
pub fn json_body(req: &Request) -> Result<&[u8], ApiError> {
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" && !media.ends_with("+json") {
        let got = if content_type.is_empty() { "no content type".to_owned() } else { format!("{content_type:?}") };
        return Err(ApiError::UnsupportedMediaType(format!("the body must be application/json; got {got}")));
    }
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge { size: body.len(), limit: MAX_BODY_BYTES });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(r: &Response<Body>) -> serde_json::Value {
        serde_json::from_slice(r.body().as_ref()).unwrap()
    }

    #[test]
    fn validation_errors_are_problem_json_naming_each_field() {
        let r = Response::from(ApiError::Validation(vec![FieldError::new("prompt", "is required")]));
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
        let b = body_of(&r);
        assert_eq!(b["type"], "/problems/validation_failed");
        assert_eq!(b["status"], 400);
        assert_eq!(b["errors"][0]["field"], "prompt");
        assert!(b["title"].is_string() && b["detail"].is_string());
    }

    #[test]
    fn contention_is_a_503_to_retry_not_a_500() {
        let r = Response::from(ApiError::from(StoreError::Contended));
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(body_of(&r)["code"], "busy");
    }

    #[test]
    fn unexpected_errors_hide_their_cause() {
        let r = Response::from(ApiError::Unexpected(anyhow::anyhow!("secret connection string")));
        assert_eq!(r.status(), 500);
        assert!(!body_of(&r).to_string().contains("secret"));
    }

    #[test]
    fn content_types_are_checked_by_media_type() {
        let req = |ct: Option<&str>| {
            let mut b = lambda_http::http::Request::builder();
            if let Some(ct) = ct {
                b = b.header(CONTENT_TYPE, ct);
            }
            b.body(Body::from("{}")).unwrap()
        };
        assert!(json_body(&req(Some("application/json"))).is_ok());
        assert!(json_body(&req(Some("Application/JSON; charset=utf-8"))).is_ok());
        assert!(json_body(&req(Some("application/merge-patch+json"))).is_ok());
        assert!(matches!(json_body(&req(Some("text/plain"))), Err(ApiError::UnsupportedMediaType(_))));
        assert!(matches!(json_body(&req(None)), Err(ApiError::UnsupportedMediaType(_))));
    }
}
