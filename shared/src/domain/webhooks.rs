//! Webhooks: endpoints a tenant registers (or a task names) to be told of its tasks' events,
//! the secrets that sign the deliveries (Standard Webhooks), the schedule of retries, and the
//! record of every attempt.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::events::{EventKind, TaskEvent};
use crate::domain::secret::Secret;
use crate::domain::task::{FieldError, RequestError, TaskId};

/// How long a rotated-out secret still signs deliveries beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A new id, `prefix_<ULID>`, later than every other this process made: endpoints and
/// attempts sort by id in the order they were made, even within a millisecond.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut generator = GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let next = generator.get_or_insert_with(ulid::Generator::new).generate().unwrap_or_else(|_| ulid::Ulid::generate());
    format!("{prefix}_{next}")
}

/// A new signing secret: `whsec_` and 24 random bytes, base64 (the Standard Webhooks form).
pub fn new_secret() -> Secret {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    Secret::new(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// An endpoint a tenant registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `wh_<ULID>`.
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    /// The event types it wants; empty for all.
    #[serde(default)]
    pub events: Vec<EventKind>,
    /// The secret that signs its deliveries (kept, since signing needs it; shown once).
    pub secret: String,
    /// The secret it had before the last rotation, still signing beside the new one until
    /// `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub previous_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Endpoint {
    /// A new endpoint of `tenant`, with a new secret.
    pub fn new(tenant: &str, url: String, events: Vec<EventKind>, now: OffsetDateTime) -> Self {
        Self {
            id: new_id("wh"),
            tenant_id: tenant.to_owned(),
            url,
            events,
            secret: new_secret().expose().to_owned(),
            previous_secret: None,
            previous_until: None,
            created_at: now,
        }
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// The secrets that sign a delivery at `now`: the current one, and the previous one while
    /// its overlap lasts.
    pub fn signing_secrets(&self, now: OffsetDateTime) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_until)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }

    /// A new secret; the old one keeps signing for [`ROTATION_OVERLAP`].
    pub fn rotate(&mut self, now: OffsetDateTime) {
        self.previous_secret = Some(std::mem::replace(&mut self.secret, new_secret().expose().to_owned()));
        self.previous_until = Some(now + ROTATION_OVERLAP);
    }
}

/// The body of `POST /v1/webhooks`: `{"url", "events"?: ["task.succeeded", …]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRequest {
    pub url: String,
    /// Empty for every event.
    pub events: Vec<EventKind>,
}

impl EndpointRequest {
    /// Parses a JSON body, naming every field that is wrong. The URL is checked only for being
    /// a string here: the deployment's outbound rules are the caller's to apply.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(RequestError::Invalid(vec![FieldError::new("", "the body must be a JSON object")]));
        };
        let mut errors = Vec::new();
        let url = match fields.remove("url") {
            Some(serde_json::Value::String(u)) => Some(u),
            Some(_) => {
                errors.push(FieldError::new("url", "must be a string"));
                None
            }
            None => {
                errors.push(FieldError::new("url", "is required"));
                None
            }
        };
        let mut events = Vec::new();
        match fields.remove("events") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    match serde_json::from_value::<EventKind>(item.clone()) {
                        Ok(kind) if !events.contains(&kind) => events.push(kind),
                        Ok(_) => {}
                        Err(_) => errors.push(FieldError::new(
                            "events",
                            format!(
                                "{item} is not an event type; known: {}",
                                EventKind::ALL.map(EventKind::as_str).join(", ")
                            ),
                        )),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new("events", "must be an array of event types")),
        }
        let mut unknown: Vec<_> = fields.keys().cloned().collect();
        unknown.sort();
        errors.extend(unknown.into_iter().map(|k| FieldError::new(k, "is not a known field")));
        match (url, errors.is_empty()) {
            (Some(url), true) => Ok(Self { url, events }),
            _ => Err(RequestError::Invalid(errors)),
        }
    }
}

/// The webhook a task named on submit: its URL and the secret the 202 returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskWebhook {
    pub url: String,
    pub secret: String,
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// An endpoint the tenant registered.
    Endpoint { id: String },
    /// The task's own webhook.
    Task,
}

impl Target {
    /// A short name for keys and logs: the endpoint id, or `task`.
    pub fn name(&self) -> &str {
        match self {
            Self::Endpoint { id } => id,
            Self::Task => "task",
        }
    }
}

/// One delivery to make: an event of a task, to a target. The message that carries it names
/// only these; the event and the endpoint are read when it is sent, so a rotated secret or a
/// removed endpoint is honoured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryJob {
    pub tenant_id: String,
    pub task_id: TaskId,
    pub seq: u32,
    pub target: Target,
}

/// The body of a delivery, as Standard Webhooks defines it.
pub fn payload(event: &TaskEvent) -> serde_json::Value {
    serde_json::json!({
        "type": event.kind.as_str(),
        "timestamp": event.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "data": event.data,
    })
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// `att_<ULID>`, in time order.
    pub id: String,
    /// 1 for the first.
    pub attempt: u32,
    pub event_id: String,
    pub seq: u32,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub target: Target,
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: u64,
    pub delivered: bool,
    /// When the next attempt is due, if this one failed and attempts remain.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// This one failed and was the last: the delivery is in the dead-letter queue until it is
    /// redriven.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

/// How many attempts a delivery gets, and how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts in all (the webhook queue's `maxReceiveCount`), after which the delivery is
    /// dead-lettered. The default 12 spans about 40 hours.
    pub max_attempts: u32,
    /// The delays, in percent (100 in a deployment; tests shorten them).
    pub scale_percent: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self { max_attempts: 12, scale_percent: 100 }
    }
}

impl RetrySchedule {
    /// When the attempt after the `n`th (from 1) is due, if there is one.
    pub fn after(&self, n: u32) -> Option<Duration> {
        (n < self.max_attempts).then(|| retry_delay(n, f64::from(self.scale_percent) / 100.0))
    }
}

/// How long after the `n`th failed attempt (from 1) the next one is made: 30 s, 2 min,
/// 10 min, 30 min, 1 h, 2 h, 4 h, then every 8 h.
pub fn retry_delay(n: u32, scale: f64) -> Duration {
    const SCHEDULE: [u64; 8] = [30, 120, 600, 1_800, 3_600, 7_200, 14_400, 28_800];
    let secs = SCHEDULE[(n.max(1) as usize - 1).min(SCHEDULE.len() - 1)];
    Duration::from_secs_f64(secs as f64 * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_in_the_standard_webhooks_form() {
        let s = new_secret();
        let raw = s.expose().strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(raw).unwrap().len(), 24);
        assert_ne!(new_secret().expose(), s.expose());
    }

    #[test]
    fn a_rotated_secret_keeps_signing_through_its_overlap_only() {
        let now = crate::now();
        let mut e = Endpoint::new("acme", "https://example.com/hook".into(), vec![], now);
        let old = e.secret.clone();
        e.rotate(now);
        assert_ne!(e.secret, old);
        assert_eq!(e.signing_secrets(now), [e.secret.as_str(), old.as_str()]);
        assert_eq!(e.signing_secrets(now + ROTATION_OVERLAP + Duration::from_secs(1)), [e.secret.as_str()]);
    }

    #[test]
    fn an_endpoint_wants_all_events_or_those_it_names() {
        let now = crate::now();
        let all = Endpoint::new("acme", "https://x".into(), vec![], now);
        let ends = Endpoint::new("acme", "https://x".into(), vec![EventKind::Succeeded, EventKind::Failed], now);
        assert!(all.wants(EventKind::Step));
        assert!(ends.wants(EventKind::Failed) && !ends.wants(EventKind::Step));
    }

    #[test]
    fn an_endpoint_request_names_every_wrong_field() {
        let ok = EndpointRequest::parse(br#"{"url":"https://x","events":["task.failed","task.failed"]}"#).unwrap();
        assert_eq!(ok.events, [EventKind::Failed]);
        let Err(RequestError::Invalid(errors)) = EndpointRequest::parse(br#"{"events":["task.done"],"secret":"x"}"#)
        else {
            panic!("invalid")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "events", "secret"]);
        assert!(matches!(EndpointRequest::parse(b"[1"), Err(RequestError::NotJson(_))));
    }

    #[test]
    fn retries_grow_to_every_eight_hours() {
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(n, 1.0).as_secs()).collect();
        assert_eq!(delays, [30, 120, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 28_800, 28_800]);
        assert_eq!(retry_delay(1, 0.01), Duration::from_millis(300));
        let schedule = RetrySchedule::default();
        let total: u64 = (1..schedule.max_attempts).map(|n| schedule.after(n).unwrap().as_secs()).sum();
        assert_eq!(total / 3600, 39, "twelve attempts over about 40 hours");
        assert_eq!(schedule.after(12), None, "the twelfth is the last");
    }
}
