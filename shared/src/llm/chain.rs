//! The model chain: models tried in order, each behind its own circuit breaker, with retries
//! per call. This is where "the model is down" becomes "the next model answers".
//!
//! Per call, for each model in the chain:
//! - an open circuit skips the model;
//! - transient failures (408, 409, 429, 5xx, 529, timeouts, connection errors) are retried
//!   with backoff ([`complete_with_retries`]); when retries run out the model counts as
//!   unusable for this call;
//! - 401, 403, 404 and unreadable answers make the model unusable at once;
//! - a rejected request (400, 413, 422) is the task's fault: the chain stops there, since
//!   every model would reject it too.
//!
//! Every failed attempt counts against the model's breaker (not every failed call of several
//! attempts), and the retries stop once the breaker opens; then the next model is tried. When none is
//! left the call fails with [`ChainError::Unavailable`], which the worker turns into a retry
//! of the whole task later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::retry::{Attempts, RetryPolicy, complete_watched};
use crate::llm::{Model, ModelError, ModelRequest, ModelResponse};
use crate::observe::metrics::{self, Unit};

/// When a model's circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts (a transient failure, or an unusable answer) that open the
    /// circuit.
    pub threshold: u32,
    /// How long an open circuit skips the model before one probe call is let through.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { threshold: 5, cooldown: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over and one probe call is in flight.
    Probing,
}

/// A circuit breaker for one model, shared by every task of a worker process.
#[derive(Debug)]
pub struct CircuitBreaker {
    model: String,
    policy: BreakerPolicy,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(model: impl Into<String>, policy: BreakerPolicy) -> Self {
        Self { model: model.into(), policy, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    /// May a call go to the model now? After the cool-down, exactly one caller gets `true`.
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().expect("poisoned");
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                tracing::info!(model = %self.model, "circuit half-open: letting one probe call through");
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    pub fn record_success(&self) {
        let mut state = self.state.lock().expect("poisoned");
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!(model = %self.model, "circuit closed: the model answers again");
        }
        *state = State::Closed { failures: 0 };
    }

    pub fn record_failure(&self) {
        let mut state = self.state.lock().expect("poisoned");
        let open = State::Open { until: Instant::now() + self.policy.cooldown };
        *state = match *state {
            State::Closed { failures } if failures + 1 >= self.policy.threshold => {
                tracing::warn!(model = %self.model, failures = failures + 1, cooldown_s = self.policy.cooldown.as_secs(), "circuit opened: skipping the model");
                open
            }
            State::Closed { failures } => State::Closed { failures: failures + 1 },
            State::Probing | State::Open { .. } => {
                tracing::warn!(model = %self.model, cooldown_s = self.policy.cooldown.as_secs(), "circuit re-opened: the probe failed");
                open
            }
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock().expect("poisoned"), State::Closed { .. })
    }

    /// Another instance found the model down: skip it until `until`, unless this instance's
    /// circuit is already open or probing.
    fn open_by_others(&self, until: Instant) {
        let mut state = self.state.lock().expect("poisoned");
        if let State::Closed { .. } = *state {
            tracing::warn!(model = %self.model, "circuit opened by another instance: skipping the model");
            *state = State::Open { until };
        }
    }
}

/// The breaker counts every failed attempt, so a dead model is found within `threshold`
/// attempts rather than `threshold` calls of several attempts each, and retries stop the
/// moment the circuit opens (a probe is never retried).
impl Attempts for CircuitBreaker {
    fn failed(&self, _error: &ModelError) {
        self.record_failure();
    }

    fn may_retry(&self) -> bool {
        matches!(*self.state.lock().expect("poisoned"), State::Closed { .. })
    }
}

/// Circuit state shared by every instance: when a model's circuit opened somewhere, and
/// until when. One small item per model is enough; the chain reads it at most every
/// [`BOARD_TTL`] per model and instance, and writes it when its own circuit opens.
#[async_trait::async_trait]
pub trait BreakerBoard: Send + Sync {
    /// Until when (epoch milliseconds) the model's circuit is open, if some instance opened it.
    async fn open_until(&self, model: &str) -> anyhow::Result<Option<i64>>;
    /// Says the model's circuit is open until `until_ms` (epoch milliseconds).
    async fn open(&self, model: &str, until_ms: i64) -> anyhow::Result<()>;
}

/// How long an instance trusts what it last read of the board.
pub const BOARD_TTL: Duration = Duration::from_secs(2);

/// The board, and what this instance last read of it per model.
struct Board {
    board: Arc<dyn BreakerBoard>,
    seen: Mutex<std::collections::HashMap<String, (Instant, Option<i64>)>>,
}

impl Board {
    /// Until when (a local instant) another instance says the model is down, if it does.
    async fn open_until(&self, model: &str) -> Option<Instant> {
        let cached = self.seen.lock().expect("poisoned").get(model).copied();
        let until_ms = match cached {
            Some((at, until)) if at.elapsed() < BOARD_TTL => until,
            _ => {
                // A board that cannot be read is no reason to stop calling the model.
                let until = self.board.open_until(model).await.unwrap_or_else(|e| {
                    tracing::warn!(model, error = format!("{e:#}"), "could not read the shared circuit state");
                    None
                });
                self.seen.lock().expect("poisoned").insert(model.to_owned(), (Instant::now(), until));
                until
            }
        }?;
        let left_ms = until_ms - crate::now_millis();
        (left_ms > 0).then(|| Instant::now() + Duration::from_millis(left_ms as u64))
    }

    async fn publish(&self, model: &str, cooldown: Duration) {
        let until_ms = crate::now_millis() + cooldown.as_millis() as i64;
        self.seen.lock().expect("poisoned").insert(model.to_owned(), (Instant::now(), Some(until_ms)));
        if let Err(e) = self.board.open(model, until_ms).await {
            tracing::warn!(model, error = format!("{e:#}"), "could not share the open circuit");
        }
    }
}

/// One model of a chain and its breaker.
#[derive(Clone)]
struct Link {
    model: Arc<dyn Model>,
    breaker: Arc<CircuitBreaker>,
}

/// Models in fallback order.
#[derive(Clone)]
pub struct ModelChain {
    links: Vec<Link>,
    board: Option<Arc<Board>>,
}

impl std::fmt::Debug for ModelChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.links.iter().map(|l| l.model.id())).finish()
    }
}

/// Why no model of the chain answered.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The request itself was refused; another model would refuse it too.
    #[error("the model rejected the request: {0}")]
    Rejected(#[source] ModelError),
    /// Every model was unusable (down, rate-limited past our patience, misconfigured, or
    /// behind an open circuit).
    #[error("no model is available: {}", .0.as_ref().map_or_else(|| "every circuit is open".to_owned(), ToString::to_string))]
    Unavailable(Option<ModelError>),
}

impl ModelChain {
    pub fn new(models: Vec<Arc<dyn Model>>, policy: BreakerPolicy) -> Self {
        let links = models
            .into_iter()
            .map(|model| Link { breaker: Arc::new(CircuitBreaker::new(model.id(), policy)), model })
            .collect();
        Self { links, board: None }
    }

    /// Shares the circuits' state with every instance through `board`: a model one instance
    /// finds down is skipped by the others within [`BOARD_TTL`].
    pub fn with_board(mut self, board: Arc<dyn BreakerBoard>) -> Self {
        self.board = Some(Arc::new(Board { board, seen: Mutex::default() }));
        self
    }

    /// The model ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.links.iter().map(|l| l.model.id().to_owned()).collect()
    }

    /// The chain from the named model on (its fallbacks are the models after it), sharing
    /// the breakers.
    pub fn starting_at(&self, id: &str) -> Option<Self> {
        let at = self.links.iter().position(|l| l.model.id() == id)?;
        Some(Self { links: self.links[at..].to_vec(), board: self.board.clone() })
    }

    /// The first model's id, for pricing when the answer names no known model.
    pub fn primary(&self) -> Option<&str> {
        self.links.first().map(|l| l.model.id())
    }

    /// Asks each model in turn until one answers (see the module docs).
    pub async fn complete(
        &self,
        request: &ModelRequest,
        retry: RetryPolicy,
        deadline: Option<Instant>,
    ) -> Result<(ModelResponse, String), ChainError> {
        let mut last = None;
        for (i, link) in self.links.iter().enumerate() {
            let id = link.model.id();
            if let Some(board) = &self.board
                && let Some(until) = board.open_until(id).await
            {
                link.breaker.open_by_others(until);
            }
            if !link.breaker.allow() {
                tracing::info!(model = id, "circuit open: skipping the model");
                metrics::record().dimension("model", id).value("CircuitOpenSkips", 1.0, Unit::Count).emit();
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let started = Instant::now();
            let result = complete_watched(link.model.as_ref(), request, retry, deadline, link.breaker.as_ref()).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(response) => {
                    link.breaker.record_success();
                    if i > 0 {
                        tracing::warn!(model = id, position = i, "answered by a fallback model");
                    }
                    return Ok((response, id.to_owned()));
                }
                Err(e) if e.is_request_fault() => {
                    tracing::warn!(model = id, latency_ms, error = %e, "the model rejected the request");
                    return Err(ChainError::Rejected(e));
                }
                Err(e) => {
                    // Transient failures were counted attempt by attempt; an unusable model
                    // (401, 403, 404, an unreadable answer) counts once here.
                    if !e.is_transient() {
                        link.breaker.record_failure();
                    }
                    if let Some(board) = &self.board
                        && link.breaker.is_open()
                    {
                        board.publish(id, link.breaker.policy.cooldown).await;
                    }
                    let next = self.links.get(i + 1).map(|l| l.model.id());
                    tracing::warn!(model = id, latency_ms, error = %e, fallback = next, "model unusable; falling back");
                    if let Some(next) = next {
                        metrics::record()
                            .dimension("from", id)
                            .dimension("to", next)
                            .value("Fallbacks", 1.0, Unit::Count)
                            .emit();
                    }
                    last = Some(e);
                }
            }
        }
        Err(ChainError::Unavailable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy { threshold: 2, cooldown: Duration::from_millis(50) }
    }

    #[test]
    fn a_breaker_opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
        let b = CircuitBreaker::new("m", policy());
        b.record_failure();
        assert!(b.allow(), "one failure is under the threshold");
        b.record_failure();
        assert!(!b.allow(), "open after two");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe at a time");
        b.record_success();
        assert!(b.allow() && !b.is_open(), "closed again");
    }

    #[test]
    fn a_failed_probe_reopens_the_circuit() {
        let b = CircuitBreaker::new("m", policy());
        b.record_failure();
        b.record_failure();
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.record_failure();
        assert!(!b.allow());
    }
}
