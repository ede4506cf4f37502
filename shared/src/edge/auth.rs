//! Who is calling: the API key in `Authorization: Bearer <key>` (or `x-api-key`) is hashed and
//! looked up. A missing, unknown or revoked key is a 401; which of the three is said, since it
//! helps the caller and tells an attacker nothing about other keys.

use lambda_http::Request;

use crate::domain::tenant::{Tenant, hash_key};
use crate::edge::http::ApiError;
use crate::store::TenantRead;

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

/// Authenticates a request.
pub async fn authenticate(store: &dyn TenantRead, req: &Request) -> Result<Caller, ApiError> {
    let key =
        presented(req).ok_or(ApiError::Unauthorized("an API key is required: send Authorization: Bearer <key>"))?;
    let record = store.api_key(&hash_key(key)).await?.ok_or(ApiError::Unauthorized("the API key is not valid"))?;
    if record.is_revoked() {
        return Err(ApiError::Unauthorized("the API key has been revoked"));
    }
    let tenant = store.tenant(&record.tenant_id).await?.ok_or(ApiError::Unauthorized("the API key is not valid"))?;
    tracing::Span::current().record("tenant_id", tracing::field::display(&tenant.tenant_id));
    Ok(Caller { tenant, key_id: record.key_id })
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
            let caller = authenticate(&store, &request(&headers)).await.unwrap();
            assert_eq!(caller.tenant.tenant_id, "acme");
        }
    }

    #[tokio::test]
    async fn missing_wrong_and_revoked_keys_are_unauthorized() {
        let (store, key, key_id) = store_with_key().await;
        for headers in [vec![], vec![("authorization", "Bearer aq_nope")], vec![("authorization", "Basic abc")]] {
            assert!(matches!(authenticate(&store, &request(&headers)).await, Err(ApiError::Unauthorized(_))));
        }
        store.revoke_key(&key_id, crate::now()).await.unwrap();
        let e = authenticate(&store, &request(&[("x-api-key", &key)])).await.unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized(m) if m.contains("revoked")));
    }
}
