//! Tenants and their API keys.
//!
//! A key is `aq_` followed by 43 base64url characters (32 random bytes from the OS, 256 bits).
//! It is shown once, at creation; the store keeps only its SHA-256 (a fast hash is right for a
//! secret with this much entropy: there is nothing to brute-force) and a short display prefix.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::domain::secret::Secret;

/// What a tenant may do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Submissions per second, refilled continuously.
    pub rate_per_sec: f64,
    /// Submissions allowed in a burst (the bucket's size).
    pub burst: u32,
    /// Tasks queued or running at once.
    pub max_running: u32,
    /// Spend per calendar month (UTC), in nano-dollars; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_nanos: Option<u64>,
    /// What a submit over `max_running` gets: a 429, or its task held in line.
    #[serde(default)]
    pub over_cap: OverCap,
    /// Its share of the workers while tenants compete for them: a tenant of weight 3 gets
    /// about three deliveries for every one of a tenant of weight 1 while both have a backlog
    /// (its messages go out under `weight` fairness keys; see [`fairness_key`]).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Model tokens (input, output and cache) its tasks may use per minute; `None` is
    /// unlimited. A task over it pauses at its next model call until the next minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Model calls its tasks may make per minute; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
}

/// The largest weight a tenant can be given.
pub const MAX_WEIGHT: u32 = 16;

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Limits {
    /// Whether the tenant's tasks need their model use counted (it has a per-minute limit).
    pub fn meters_models(&self) -> bool {
        self.tokens_per_minute.is_some() || self.requests_per_minute.is_some()
    }
}

/// The fairness key (SQS `MessageGroupId`) of a task's message: the tenant's id for its first
/// lane, `<tenant>#<lane>` for the others. A tenant of weight `w` spreads its tasks over `w`
/// lanes, and the event source shares deliveries evenly across keys, so the tenant gets `w`
/// shares.
pub fn fairness_key(tenant_id: &str, lane: u32) -> String {
    if lane == 0 { tenant_id.to_owned() } else { format!("{tenant_id}#{lane}") }
}

/// The lane of a new task of a tenant of `weight`: spread evenly by the task's random bits.
pub fn lane_for(random: u128, weight: u32) -> u32 {
    (random % u128::from(weight.clamp(1, MAX_WEIGHT))) as u32
}

/// What happens to a task submitted while its tenant is at its running cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverCap {
    /// Refused: `429 concurrency_limited`.
    #[default]
    Reject,
    /// Accepted and held `queued`, with no message and no slot, until one frees; started in
    /// submission order.
    Hold,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_sec: 5.0,
            burst: 20,
            max_running: 50,
            monthly_budget_nanos: None,
            over_cap: OverCap::Reject,
            weight: 1,
            tokens_per_minute: None,
            requests_per_minute: None,
        }
    }
}

/// A tenant: who owns tasks, and the limits they run under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub tenant_id: String,
    pub limits: Limits,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A stored API key: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// A non-secret id derived from the hash, used to revoke the key.
    pub key_id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The key's first characters, for people to tell keys apart.
    pub prefix: String,
    pub tenant_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A tenant name that is not usable as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant name is 1 to 64 characters of a-z, 0-9, '-' and '_'")]
pub struct InvalidTenant;

/// Checks a tenant name.
pub fn tenant_id(name: &str) -> Result<String, InvalidTenant> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { Ok(name.to_owned()) } else { Err(InvalidTenant) }
}

/// SHA-256 of a presented key, hex: what the store is searched by.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key for `tenant_id`: the plaintext (show it once) and its stored form.
pub fn new_key(tenant_id: &str, now: OffsetDateTime) -> (Secret, ApiKey) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    let plaintext = format!("aq_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_key(&plaintext);
    let record = ApiKey {
        key_id: hash[..16].to_owned(),
        prefix: plaintext[..11].to_owned(),
        hash,
        tenant_id: tenant_id.to_owned(),
        created_at: now,
        revoked_at: None,
    };
    (Secret::new(plaintext), record)
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}…) tenant {}", self.key_id, self.prefix, self.tenant_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_stored_only_as_a_hash() {
        let (a, rec) = new_key("acme", crate::now());
        let (b, _) = new_key("acme", crate::now());
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("aq_") && a.expose().len() == 46);
        assert_eq!(rec.hash, hash_key(a.expose()));
        assert!(!serde_json::to_string(&rec).unwrap().contains(a.expose()), "the record never holds the key");
        assert!(a.expose().starts_with(&rec.prefix));
        assert_eq!(rec.key_id.len(), 16);
    }

    #[test]
    fn a_weighted_tenant_spreads_its_tasks_over_as_many_fairness_keys() {
        let keys: std::collections::BTreeSet<String> =
            (0..300u128).map(|r| fairness_key("acme", lane_for(r * 7919, 3))).collect();
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["acme", "acme#1", "acme#2"]);
        assert_eq!(lane_for(12345, 1), 0, "weight 1 is the tenant's own key");
        assert!(lane_for(u128::MAX, 1000) < MAX_WEIGHT);
    }

    #[test]
    fn limits_stored_before_weights_existed_read_as_weight_one() {
        let old = r#"{"rate_per_sec":5.0,"burst":20,"max_running":50}"#;
        let l: Limits = serde_json::from_str(old).unwrap();
        assert_eq!(l, Limits::default());
        assert!(!serde_json::to_string(&l).unwrap().contains("weight"));
    }

    #[test]
    fn tenant_names_are_slugs() {
        assert!(tenant_id("acme-corp_2").is_ok());
        for bad in ["", "Acme", "a b", "x/y", &"a".repeat(65)] {
            assert!(tenant_id(bad).is_err(), "{bad}");
        }
    }
}
