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
//!
//! A 429 also *throttles* the model until its `Retry-After` (or [`DEFAULT_THROTTLE`]): every
//! call of every task (and, through the board, of every instance) waits for that moment before
//! calling the model, instead of each sending its own request into the 429s. A wait longer
//! than [`MAX_HOLD`], or past the deadline, skips the model for this call, as an open circuit
//! does.

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

/// How long a 429 without `Retry-After` throttles its model.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(1);

/// The longest a call waits for a throttled model before it skips it for the next.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

/// A circuit breaker for one model, shared by every task of a worker process.
#[derive(Debug)]
pub struct CircuitBreaker {
    model: String,
    policy: BreakerPolicy,
    state: Mutex<State>,
    /// Until when the provider asked us to hold calls to the model (its last 429).
    throttled: Mutex<Option<Instant>>,
}

impl CircuitBreaker {
    pub fn new(model: impl Into<String>, policy: BreakerPolicy) -> Self {
        Self {
            model: model.into(),
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
            throttled: Mutex::new(None),
        }
    }

    /// Holds calls to the model until `until` (or later, if already held longer). Says whether
    /// that moved the hold.
    pub fn throttle(&self, until: Instant) -> bool {
        let mut throttled = self.throttled.lock().expect("poisoned");
        if throttled.is_some_and(|t| t >= until) {
            return false;
        }
        *throttled = Some(until);
        true
    }

    /// Until when calls to the model are held, if they are now.
    pub fn throttled_until(&self) -> Option<Instant> {
        self.throttled.lock().expect("poisoned").filter(|t| *t > Instant::now())
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
    fn failed(&self, error: &ModelError) {
        self.record_failure();
        if error.is_rate_limited() {
            self.throttle(Instant::now() + error.retry_after().unwrap_or(DEFAULT_THROTTLE));
        }
    }

    fn may_retry(&self) -> bool {
        matches!(*self.state.lock().expect("poisoned"), State::Closed { .. })
    }
}

/// A call's watch on one link: its breaker, and the board told at once of a new throttle, so
/// other instances hold their calls while this one's retry waits; it counts the failed
/// attempts.
struct Watch<'a> {
    breaker: &'a CircuitBreaker,
    board: Option<&'a Arc<Board>>,
    failures: std::sync::atomic::AtomicU32,
}

impl Attempts for Watch<'_> {
    fn failed(&self, error: &ModelError) {
        self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let before = self.breaker.throttled_until();
        self.breaker.failed(error);
        let after = self.breaker.throttled_until();
        if let (Some(board), Some(until)) = (self.board, after.filter(|a| Some(*a) != before)) {
            let (board, model) = (board.clone(), self.breaker.model.clone());
            let until_ms = crate::now_millis() + until.saturating_duration_since(Instant::now()).as_millis() as i64;
            tokio::spawn(async move { board.publish_throttle(&model, until_ms).await });
        }
    }

    fn may_retry(&self) -> bool {
        self.breaker.may_retry()
    }
}

/// Circuit state shared by every instance: when a model's circuit opened somewhere, and
/// until when. One small item per model is enough; the chain reads it at most every
/// [`BOARD_TTL`] per model and instance, and writes it when its own circuit opens.
#[async_trait::async_trait]
pub trait BreakerBoard: Send + Sync {
    /// What some instance last said of the model.
    async fn shared(&self, model: &str) -> anyhow::Result<SharedCircuit>;
    /// Says the model's circuit is open until `until_ms` (epoch milliseconds).
    async fn open(&self, model: &str, until_ms: i64) -> anyhow::Result<()>;
    /// Says the provider holds calls to the model until `until_ms` (epoch milliseconds).
    async fn throttle(&self, model: &str, until_ms: i64) -> anyhow::Result<()>;
}

/// A model's shared circuit state, epoch milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedCircuit {
    /// Until when its circuit is open, if some instance opened it.
    pub open_until_ms: Option<i64>,
    /// Until when the provider asked to hold calls (a 429's `Retry-After`).
    pub throttled_until_ms: Option<i64>,
}

/// How long an instance trusts what it last read of the board.
pub const BOARD_TTL: Duration = Duration::from_secs(2);

/// The board, and what this instance last read of it per model.
struct Board {
    board: Arc<dyn BreakerBoard>,
    seen: Mutex<std::collections::HashMap<String, (Instant, SharedCircuit)>>,
}

/// A local instant for an epoch-milliseconds time still to come.
fn instant_of(until_ms: Option<i64>) -> Option<Instant> {
    let left_ms = until_ms? - crate::now_millis();
    (left_ms > 0).then(|| Instant::now() + Duration::from_millis(left_ms as u64))
}

impl Board {
    /// Until when (local instants) other instances say the model is down, and held.
    async fn shared(&self, model: &str) -> (Option<Instant>, Option<Instant>) {
        let cached = self.seen.lock().expect("poisoned").get(model).copied();
        let shared = match cached {
            Some((at, shared)) if at.elapsed() < BOARD_TTL => shared,
            _ => {
                // A board that cannot be read is no reason to stop calling the model.
                let shared = self.board.shared(model).await.unwrap_or_else(|e| {
                    tracing::warn!(model, error = format!("{e:#}"), "could not read the shared circuit state");
                    SharedCircuit::default()
                });
                self.seen.lock().expect("poisoned").insert(model.to_owned(), (Instant::now(), shared));
                shared
            }
        };
        (instant_of(shared.open_until_ms), instant_of(shared.throttled_until_ms))
    }

    /// Notes what this instance tells the board, so its own next read need not ask.
    fn note(&self, model: &str, change: impl FnOnce(&mut SharedCircuit)) {
        let mut seen = self.seen.lock().expect("poisoned");
        let entry = seen.entry(model.to_owned()).or_insert((Instant::now(), SharedCircuit::default()));
        change(&mut entry.1);
    }

    async fn publish(&self, model: &str, cooldown: Duration) {
        let until_ms = crate::now_millis() + cooldown.as_millis() as i64;
        self.note(model, |s| s.open_until_ms = Some(until_ms));
        if let Err(e) = self.board.open(model, until_ms).await {
            tracing::warn!(model, error = format!("{e:#}"), "could not share the open circuit");
        }
    }

    async fn publish_throttle(&self, model: &str, until_ms: i64) {
        self.note(model, |s| s.throttled_until_ms = Some(until_ms));
        if let Err(e) = self.board.throttle(model, until_ms).await {
            tracing::warn!(model, error = format!("{e:#}"), "could not share the throttle");
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

/// A model's answer, and how the chain came by it.
#[derive(Debug, Clone)]
pub struct Answered {
    pub response: ModelResponse,
    /// The chain's id for the model that answered.
    pub model: String,
    /// Requests this call sent, failed ones (retries, models passed over) included.
    pub attempts: u32,
    /// The models of the chain passed over before the one that answered: unusable, behind an
    /// open circuit, or held by their provider.
    pub passed_over: Vec<String>,
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
    ) -> Result<Answered, ChainError> {
        let mut last = None;
        let (mut attempts, mut passed_over) = (0, Vec::new());
        for (i, link) in self.links.iter().enumerate() {
            let id = link.model.id();
            if i > 0 {
                passed_over.push(self.links[i - 1].model.id().to_owned());
            }
            if let Some(board) = &self.board {
                let (open, throttled) = board.shared(id).await;
                if let Some(until) = open {
                    link.breaker.open_by_others(until);
                }
                if let Some(until) = throttled {
                    link.breaker.throttle(until);
                }
            }
            if let Some(until) = link.breaker.throttled_until() {
                // Start after the hold, spread over a quarter second so the held calls do not
                // all arrive at once.
                let resume = until + Duration::from_millis(fastrand::u64(0..250));
                if resume.saturating_duration_since(Instant::now()) > MAX_HOLD || deadline.is_some_and(|d| resume >= d)
                {
                    tracing::info!(model = id, "the provider holds calls longer than we wait: skipping the model");
                    metrics::record().dimension("model", id).value("ThrottleSkips", 1.0, Unit::Count).emit();
                    continue;
                }
                tracing::info!(
                    model = id,
                    wait_ms = resume.saturating_duration_since(Instant::now()).as_millis() as u64,
                    "the provider asked to hold calls: waiting"
                );
                metrics::record().dimension("model", id).value("ThrottleWaits", 1.0, Unit::Count).emit();
                tokio::time::sleep_until(resume).await;
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
            let watch =
                Watch { breaker: link.breaker.as_ref(), board: self.board.as_ref(), failures: Default::default() };
            let result = complete_watched(link.model.as_ref(), request, retry, deadline, &watch).await;
            // Transient failures were counted as they happened; the last answer, if it was not one.
            attempts += watch.failures.load(std::sync::atomic::Ordering::Relaxed)
                + u32::from(result.as_ref().map_or_else(|e| !e.is_transient(), |_| true));
            let latency_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(response) => {
                    link.breaker.record_success();
                    if i > 0 {
                        tracing::warn!(model = id, position = i, "answered by a fallback model");
                    }
                    return Ok(Answered { response, model: id.to_owned(), attempts, passed_over });
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
    use crate::llm::ModelError;

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

    /// A provider over its quota until `until`: it answers 429 with the time left as
    /// `Retry-After` until then, and counts the requests it refused.
    struct Quota {
        until: Instant,
        refused: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl Model for Quota {
        fn id(&self) -> &str {
            "m"
        }
        async fn complete(&self, _request: &ModelRequest) -> Result<ModelResponse, ModelError> {
            let left = self.until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let message = "rate limited".into();
                return Err(ModelError::Status { status: 429, kind: String::new(), message, retry_after: Some(left) });
            }
            Ok(ModelResponse {
                model: "m".into(),
                content: vec![],
                stop_reason: crate::llm::StopReason::EndTurn,
                usage: Default::default(),
            })
        }
    }

    #[tokio::test]
    async fn a_429_holds_every_instances_calls_until_the_providers_retry_after() {
        let quota = Arc::new(Quota { until: Instant::now() + Duration::from_millis(300), refused: Default::default() });
        let board: Arc<dyn BreakerBoard> = Arc::new(crate::store::MemoryStore::new());
        let instance = || ModelChain::new(vec![quota.clone()], BreakerPolicy::default()).with_board(board.clone());
        let (a, b) = (instance(), instance());
        let request = ModelRequest { system: None, messages: vec![], tools: vec![] };
        let retry = RetryPolicy { max_attempts: 4, base: Duration::from_millis(10), cap: Duration::from_millis(50) };
        let first = a.complete(&request, retry, None);
        // Nine more calls on both instances, after the first met the 429.
        let later = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let calls = (0..9).map(|i| if i % 2 == 0 { &a } else { &b }).map(|c| c.complete(&request, retry, None));
            futures::future::join_all(calls).await
        };
        let (first, later) = tokio::join!(first, later);
        assert!(first.is_ok() && later.iter().all(Result::is_ok), "every call is answered once the quota is back");
        assert_eq!(quota.refused.load(std::sync::atomic::Ordering::SeqCst), 1, "only the first call met a 429");
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
