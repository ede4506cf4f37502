//! Who is calling: the API key in `Authorization: Bearer <key>` (or `x-api-key`) is hashed and
//! looked up. A missing, unknown or revoked key is a 401; which of the three is said, since it
//! helps the caller and tells an attacker nothing about other keys.
//!
//! A caller found is remembered by this instance for a few seconds ([`AuthCache`],
//! `AGENTQ_AUTH_CACHE_SECS`, 5 by default), so a client polling its task costs one store read
//! (the task) instead of three: a revoked key, or a tenant's new limits, take effect within
//! that time on every instance. Unknown keys are never remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lambda_http::Request;

use crate::domain::task::{TaskId, TaskRecord};
use crate::domain::tenant::{Tenant, hash_key};
use crate::edge::http::ApiError;
use crate::store::{TaskRead, TenantRead};

/// The authenticated tenant and the key it used.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tenant: Tenant,
    /// The non-secret id of the key, for logs.
    pub key_id: String,
}

/// The key a request presents, if any.
fn presented(req: &Request) -> Option<&str> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(auth) = header("authorization") {
        let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim());
        }
    }
    header("x-api-key").filter(|k| !k.is_empty())
}

/// Callers this instance authenticated lately, by key hash.
#[derive(Debug)]
pub struct AuthCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Caller, Instant)>>,
}

/// Remembered callers beyond which expired ones are dropped.
const AUTH_CACHE_ENTRIES: usize = 10_000;

impl AuthCache {
    /// Remembers a caller for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::default() }
    }

    fn get(&self, hash: &str) -> Option<Caller> {
        let entries = self.entries.lock().expect("poisoned");
        entries.get(hash).filter(|(_, until)| *until > Instant::now()).map(|(c, _)| c.clone())
    }

    fn put(&self, hash: String, caller: &Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("poisoned");
        if entries.len() >= AUTH_CACHE_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
        }
        if entries.len() < AUTH_CACHE_ENTRIES {
            entries.insert(hash, (caller.clone(), Instant::now() + self.ttl));
        }
    }
}

/// Authenticates a request.
pub async fn authenticate(store: &dyn TenantRead, cache: &AuthCache, req: &Request) -> Result<Caller, ApiError> {
    let key =
        presented(req).ok_or(ApiError::Unauthorized("an API key is required: send Authorization: Bearer <key>"))?;
    let hash = hash_key(key);
    let caller = match cache.get(&hash) {
        Some(caller) => caller,
        None => {
            let record = store.api_key(&hash).await?.ok_or(ApiError::Unauthorized("the API key is not valid"))?;
            if record.is_revoked() {
                return Err(ApiError::Unauthorized("the API key has been revoked"));
            }
            let tenant =
                store.tenant(&record.tenant_id).await?.ok_or(ApiError::Unauthorized("the API key is not valid"))?;
            let caller = Caller { tenant, key_id: record.key_id };
            cache.put(hash, &caller);
            caller
        }
    };
    tracing::Span::current().record("tenant_id", tracing::field::display(&caller.tenant.tenant_id));
    Ok(caller)
}

/// The caller's task with the id `raw`. Another tenant's task, an unknown id and a malformed
/// one are all the same 404, so ids cannot be probed.
pub async fn owned_task(store: &dyn TaskRead, caller: &Caller, raw: &str) -> Result<TaskRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("no task with id {raw:?}"));
    let id: TaskId = raw.parse().map_err(|_| not_found())?;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let task = store.get(id).await?.ok_or_else(not_found)?;
    if task.tenant_id != caller.tenant.tenant_id {
        return Err(not_found());
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::{Limits, new_key};
    use crate::store::{MemoryStore, TenantAdmin};
    use lambda_http::Body;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = lambda_http::http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::Empty).unwrap()
    }

    async fn store_with_key() -> (MemoryStore, String, String) {
        let store = MemoryStore::new();
        let now = crate::now();
        store
            .put_tenant(&Tenant { tenant_id: "acme".into(), limits: Limits::default(), created_at: now })
            .await
            .unwrap();
        let (key, record) = new_key("acme", now);
        store.put_key(&record).await.unwrap();
        (store, key.expose().to_owned(), record.key_id)
    }

    #[tokio::test]
    async fn a_bearer_or_x_api_key_header_authenticates() {
        let (store, key, _) = store_with_key().await;
        let bearer = format!("Bearer {key}");
        for headers in [vec![("authorization", bearer.as_str())], vec![("x-api-key", key.as_str())]] {
            let caller = authenticate(&store, &AuthCache::new(Duration::ZERO), &request(&headers)).await.unwrap();
            assert_eq!(caller.tenant.tenant_id, "acme");
        }
    }

    #[tokio::test]
    async fn missing_wrong_and_revoked_keys_are_unauthorized() {
        let (store, key, key_id) = store_with_key().await;
        let fresh = AuthCache::new(Duration::ZERO);
        for headers in [vec![], vec![("authorization", "Bearer aq_nope")], vec![("authorization", "Basic abc")]] {
            assert!(matches!(authenticate(&store, &fresh, &request(&headers)).await, Err(ApiError::Unauthorized(_))));
        }
        store.revoke_key(&key_id, crate::now()).await.unwrap();
        let e = authenticate(&store, &fresh, &request(&[("x-api-key", &key)])).await.unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized(m) if m.contains("revoked")));
    }

    #[tokio::test]
    async fn a_remembered_caller_costs_no_read_until_its_time_is_up() {
        let (store, key, key_id) = store_with_key().await;
        let cache = AuthCache::new(Duration::from_millis(300));
        let req = request(&[("x-api-key", &key)]);
        authenticate(&store, &cache, &req).await.unwrap();
        store.set_down(true);
        assert!(authenticate(&store, &cache, &req).await.is_ok(), "answered from memory, no store call");
        store.set_down(false);
        store.revoke_key(&key_id, crate::now()).await.unwrap();
        assert!(authenticate(&store, &cache, &req).await.is_ok(), "a revocation waits out the cache");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(authenticate(&store, &cache, &req).await.is_err(), "and then holds");
        let unknown = request(&[("x-api-key", "aq_unknown")]);
        assert!(authenticate(&store, &cache, &unknown).await.is_err());
        assert!(cache.get(&hash_key("aq_unknown")).is_none(), "unknown keys are not remembered");
    }
}
