//! Retries of one model call: exponential backoff with full jitter and a cap, only for
//! transient failures, honouring the provider's `retry-after`, and never starting a wait that
//! would end after the deadline (the task is better handed back to the queue than killed
//! mid-wait by the Lambda timeout).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable as _;
use tokio::time::Instant;

use tracing::Instrument as _;

use super::{Model, ModelError, ModelRequest, ModelResponse};
use crate::observe::metrics::{self, Unit};

/// How hard to try one model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff's upper bound.
    pub base: Duration,
    /// No backoff is drawn from above this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 4, base: Duration::from_millis(500), cap: Duration::from_secs(20) }
    }
}

/// What a caller learns of each failed attempt, and whether it still wants retries: the
/// chain's circuit breaker counts every failed attempt, and once it opens (this call's
/// failures or another task's) the retries stop and the next model is tried.
pub trait Attempts: Sync {
    /// A transient failure of one attempt.
    fn failed(&self, error: &ModelError);
    /// Whether another attempt may start.
    fn may_retry(&self) -> bool;
}

/// Nobody is watching: retry as the policy says.
struct Unwatched;

impl Attempts for Unwatched {
    fn failed(&self, _error: &ModelError) {}
    fn may_retry(&self) -> bool {
        true
    }
}

/// Calls `model`, retrying transient failures under `policy` until `deadline`.
pub async fn complete_with_retries(
    model: &dyn Model,
    request: &ModelRequest,
    policy: RetryPolicy,
    deadline: Option<Instant>,
) -> Result<ModelResponse, ModelError> {
    complete_watched(model, request, policy, deadline, &Unwatched).await
}

/// [`complete_with_retries`], telling `attempts` of each failed attempt and asking it before
/// each retry.
pub async fn complete_watched(
    model: &dyn Model,
    request: &ModelRequest,
    policy: RetryPolicy,
    deadline: Option<Instant>,
    attempts: &dyn Attempts,
) -> Result<ModelResponse, ModelError> {
    let attempt = AtomicU32::new(1);
    (|| async {
        let result = observed(model, request, attempt.load(Ordering::Relaxed)).await;
        if let Err(e) = &result
            && e.is_transient()
        {
            attempts.failed(e);
        }
        result
    })
    .retry(crate::domain::backoff::Retries::new(policy.base, policy.cap, policy.max_attempts))
    .sleep(tokio::time::sleep)
    .when(|e| e.is_transient() && attempts.may_retry())
    .adjust(|e, backoff| {
        // The provider knows its own load better than our schedule does.
        let wait = e.retry_after().or(backoff).filter(|_| backoff.is_some())?;
        match deadline {
            Some(d) if Instant::now() + wait >= d => None,
            _ => Some(wait),
        }
    })
    .notify(|e, wait| {
        tracing::warn!(model = model.id(), attempt = attempt.load(Ordering::Relaxed), wait_ms = wait.as_millis() as u64, error = %e, "model call failed; retrying");
        metrics::record().dimension("model", model.id()).value("ModelRetries", 1.0, Unit::Count).emit();
        attempt.fetch_add(1, Ordering::Relaxed);
    })
    .await
}

/// One call to one model, in its own span, logged and counted: the provider, the attempt,
/// the outcome, the latency and the tokens (never the content).
async fn observed(model: &dyn Model, request: &ModelRequest, attempt: u32) -> Result<ModelResponse, ModelError> {
    let span = tracing::info_span!("model_call", model = model.id(), provider = model.provider(), attempt);
    let started = Instant::now();
    let result = model.complete(request).instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    span.in_scope(|| match &result {
        Ok(r) => tracing::info!(
            outcome,
            latency_ms,
            input_tokens = r.usage.input_tokens,
            output_tokens = r.usage.output_tokens,
            stop_reason = ?r.stop_reason,
            "model call"
        ),
        Err(e) => tracing::warn!(outcome, latency_ms, status = e.status(), error = %e, "model call failed"),
    });
    metrics::record()
        .dimension("model", model.id())
        .dimension("outcome", outcome)
        .value("ModelCalls", 1.0, Unit::Count)
        .value("ModelLatencyMs", latency_ms as f64, Unit::Milliseconds)
        .emit();
    result
}
