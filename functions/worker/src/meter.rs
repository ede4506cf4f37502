//! Per-tenant model rate limits at the worker (tokens and calls per minute, `agentq tenants set
//! --tokens-per-minute --requests-per-minute`): before each model call a metered tenant's call
//! is counted against its minute, or the run stops at that step boundary and the task pauses
//! until the next minute (a delayed message, not a held worker). Tokens are added as answers
//! arrive.
//!
//! A tenant's limits are read once per [`TENANT_TTL`] per instance, so a change applies within
//! that time everywhere; an unmetered tenant costs no write. The meter fails open: a store
//! error lets the call go ahead (logged), as refusing would stall every task of the tenant on
//! a counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentq::agent::Halt;
use agentq::domain::tenant::Limits;
use agentq::domain::usage::Usage;
use agentq::store::{Metered, ModelMeter, TenantRead};
use time::OffsetDateTime;
use tokio::time::Instant;

/// How long an instance keeps a tenant's limits before reading them again.
pub const TENANT_TTL: Duration = Duration::from_secs(30);

/// A tenant's limits when it meters model calls, and when they were read.
type Entry = (Instant, Option<Limits>);

/// The last-read limits of each tenant seen by this instance (clones share it).
#[derive(Default, Clone)]
pub struct TenantCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl TenantCache {
    /// The tenant's limits, when it has per-minute model limits (read at most every
    /// [`TENANT_TTL`]).
    pub async fn metered(&self, store: &dyn TenantRead, tenant: &str) -> Option<Limits> {
        let cached = self.entries.lock().ok().and_then(|e| e.get(tenant).copied());
        if let Some((at, limits)) = cached
            && at.elapsed() < TENANT_TTL
        {
            return limits;
        }
        let limits = match store.tenant(tenant).await {
            Ok(t) => t.map(|t| t.limits).filter(Limits::meters_models),
            Err(e) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "could not read the tenant's limits; its model calls are not metered this time"
                );
                return cached.and_then(|(_, l)| l);
            }
        };
        if let Ok(mut e) = self.entries.lock() {
            e.insert(tenant.to_owned(), (Instant::now(), limits));
        }
        limits
    }
}

/// One run's metering of a metered tenant's model calls.
pub struct Meter<'a> {
    pub store: &'a dyn ModelMeter,
    pub tenant: &'a str,
    pub limits: Limits,
    /// Spreads the tenant's paused tasks over the first seconds of the next minute.
    pub jitter: Duration,
    /// When the call in flight started: its tokens count in that minute.
    pub call_started: Option<OffsetDateTime>,
}

impl Meter<'_> {
    /// Counts the next call, or says until when the run must pause.
    pub async fn before_call(&mut self) -> Result<(), Halt> {
        let now = agentq::now();
        match self.store.take_model_call(self.tenant, &self.limits, now).await {
            Ok(Metered::Go) => {
                self.call_started = Some(now);
                Ok(())
            }
            Ok(Metered::WaitUntil(until)) => Err(Halt::ModelRateLimited { until: until + self.jitter }),
            Err(e) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "could not meter a model call; it goes ahead"
                );
                self.call_started = Some(now);
                Ok(())
            }
        }
    }

    /// Adds an answer's tokens to the minute its call started in.
    pub async fn answered(&mut self, usage: &Usage) {
        let Some(at) = self.call_started.take() else { return };
        let tokens = usage.input_tokens
            + usage.output_tokens
            + usage.cache_read_input_tokens
            + usage.cache_creation_input_tokens;
        if let Err(e) = self.store.count_model_tokens(self.tenant, tokens, at).await {
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "could not count a model call's tokens");
        }
    }
}
