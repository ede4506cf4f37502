//! Tenants' limits as this instance last read them, for the two things the worker asks of a
//! tenant: whether its model calls are metered (before a run) and whether it holds work in
//! a line (after a task gives its slot back). One read per tenant per [`TENANT_TTL`] per
//! instance answers both; without it, every task's end read the tenant's item only to learn
//! that it holds nothing, one strongly consistent read a task for the default tenant.
//!
//! A change of limits applies within [`TENANT_TTL`] everywhere. For a tenant that has just
//! switched to `over_cap: hold`, that means an instance may end tasks for up to that long
//! without starting held ones; the submit that holds a task and the reconciler's minute start
//! them meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentq::domain::tenant::{Limits, OverCap};
use agentq::store::TenantRead;
use tokio::time::Instant;

/// How long an instance keeps a tenant's limits before reading them again.
pub const TENANT_TTL: Duration = Duration::from_secs(30);

/// A tenant's limits (none: no such tenant), and when they were read.
type Entry = (Instant, Option<Limits>);

/// The last-read limits of each tenant seen by this instance (clones share it).
#[derive(Default, Clone)]
pub struct TenantCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl TenantCache {
    /// The tenant's limits, read at most every [`TENANT_TTL`]. A failed read answers what was
    /// read before, if anything (logged).
    async fn limits(&self, store: &dyn TenantRead, tenant: &str) -> Option<Limits> {
        let cached = self.entries.lock().ok().and_then(|e| e.get(tenant).copied());
        if let Some((at, limits)) = cached
            && at.elapsed() < TENANT_TTL
        {
            return limits;
        }
        let limits = match store.tenant(tenant).await {
            Ok(t) => t.map(|t| t.limits),
            Err(e) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "could not read the tenant's limits; using what this instance read before"
                );
                return cached.and_then(|(_, l)| l);
            }
        };
        if let Ok(mut e) = self.entries.lock() {
            e.insert(tenant.to_owned(), (Instant::now(), limits));
        }
        limits
    }

    /// The tenant's limits, when it has per-minute model limits.
    pub async fn metered(&self, store: &dyn TenantRead, tenant: &str) -> Option<Limits> {
        self.limits(store, tenant).await.filter(Limits::meters_models)
    }

    /// Whether the tenant keeps tasks over its cap in a line (`over_cap: hold`), so a freed
    /// slot may start one. Unknown (no such tenant, or never read and unreadable): no.
    pub async fn holds(&self, store: &dyn TenantRead, tenant: &str) -> bool {
        self.limits(store, tenant).await.is_some_and(|l| l.over_cap == OverCap::Hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentq::domain::tenant::Tenant;
    use agentq::store::{MemoryStore, TenantAdmin as _};

    fn tenant(id: &str, limits: Limits) -> Tenant {
        Tenant { tenant_id: id.to_owned(), limits, created_at: agentq::now() }
    }

    #[tokio::test]
    async fn a_tenant_is_read_once_for_both_questions_within_its_time() {
        let store = MemoryStore::default();
        let holding = Limits { over_cap: OverCap::Hold, requests_per_minute: Some(60), ..Limits::default() };
        store.put_tenant(&tenant("t", holding)).await.unwrap();
        let cache = TenantCache::default();
        assert!(cache.metered(&store, "t").await.is_some());
        // Changed after the read: this instance answers what it read until the time is up.
        store.put_tenant(&tenant("t", Limits::default())).await.unwrap();
        assert!(cache.holds(&store, "t").await, "the cached limits answer");
    }

    #[tokio::test]
    async fn a_tenant_that_rejects_over_its_cap_or_does_not_exist_holds_nothing() {
        let store = MemoryStore::default();
        store.put_tenant(&tenant("plain", Limits::default())).await.unwrap();
        let cache = TenantCache::default();
        assert!(!cache.holds(&store, "plain").await);
        assert!(!cache.holds(&store, "nobody").await);
        assert!(cache.metered(&store, "plain").await.is_none(), "no per-minute limits: not metered");
    }
}
