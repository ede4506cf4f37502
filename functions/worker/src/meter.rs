//! Per-tenant model rate limits at the worker (tokens and calls per minute, `agentq tenants set
//! --tokens-per-minute --requests-per-minute`): before each model call a metered tenant's call
//! is counted against its minute, or the run stops at that step boundary and the task pauses
//! until the next minute (a delayed message, not a held worker). Tokens are added as answers
//! arrive.
//!
//! A tenant's limits come from the instance's [`TenantCache`](crate::tenants::TenantCache)
//! (read at most once per [`TENANT_TTL`](crate::tenants::TENANT_TTL)), so a change applies
//! within that time everywhere; an unmetered tenant costs no write. The meter fails open: a
//! store error lets the call go ahead (logged), as refusing would stall every task of the
//! tenant on a counter.

use std::time::Duration;

use agentq::agent::Halt;
use agentq::domain::tenant::Limits;
use agentq::domain::usage::Usage;
use agentq::store::{Metered, ModelMeter};
use time::OffsetDateTime;

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
