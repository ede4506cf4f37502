//! A per-instance rate limit on reads, per tenant: one tenant polling hard cannot take an
//! instance's whole share of the store from the others. It is kept in memory (a read is far
//! too cheap to pay a shared counter's write for), so the deployment-wide ceiling is this
//! limit times the instances Lambda runs; API Gateway's throttling bounds the sum.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::domain::tenant::Limits;
use crate::store::{Gcra, RateDecision};

/// Tenants' read budgets on this instance.
#[derive(Debug)]
pub struct ReadThrottle {
    gcra: Gcra,
    /// Theoretical arrival time per tenant, microseconds.
    tats: Mutex<HashMap<String, i64>>,
    /// The burst, for the `RateLimit-Limit` header.
    pub burst: u32,
    pub per_sec: f64,
}

impl ReadThrottle {
    pub fn new(per_sec: f64, burst: u32) -> Self {
        let limits = Limits { rate_per_sec: per_sec, burst, ..Limits::default() };
        Self { gcra: Gcra::new(&limits), tats: Mutex::default(), burst, per_sec }
    }

    /// Takes one read for `tenant` at `now`.
    pub fn take(&self, tenant: &str, now: OffsetDateTime) -> RateDecision {
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        let mut tats = self.tats.lock().expect("poisoned");
        // Tenants idle long enough to be full again are forgotten, so the map stays small.
        if tats.len() > 10_000 {
            tats.retain(|_, tat| *tat > now_us);
        }
        let (next, decision) = self.gcra.decide(tats.get(tenant).copied(), now_us);
        if let Some(tat) = next {
            tats.insert(tenant.to_owned(), tat);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenants_reads_do_not_spend_anothers() {
        let t = ReadThrottle::new(1.0, 2);
        let now = crate::now();
        assert!(t.take("noisy", now).allowed && t.take("noisy", now).allowed);
        assert!(!t.take("noisy", now).allowed);
        assert!(t.take("quiet", now).allowed);
    }
}
