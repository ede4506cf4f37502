//! Sending one webhook delivery, as Standard Webhooks defines it: `POST` the JSON body with
//! `webhook-id` (the event's id, the same on every retry, so a receiver can drop duplicates),
//! `webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`, one per signing secret, space-separated while a rotation overlaps).
//! Signing is the `standardwebhooks` crate's, so receivers verify with the published libraries.
//!
//! The receiver's address goes through the outbound guard; redirects are not followed; the
//! answer's body is ignored (read to 4 KiB); the whole attempt is bounded by a short timeout.

use std::time::{Duration, Instant};

use super::{Reach, vet};

/// Where deliveries may go, and how long one may take.
#[derive(Debug, Clone, Copy)]
pub struct SendPolicy {
    pub reach: Reach,
    pub https_only: bool,
    pub timeout: Duration,
}

impl SendPolicy {
    /// Deployed: public https receivers only. `local` (the setting `make up` turns on) also
    /// allows http and a receiver on the machine itself.
    pub fn new(local: bool, timeout: Duration) -> Self {
        if local {
            Self { reach: Reach::PublicAndLoopback, https_only: false, timeout }
        } else {
            Self { reach: Reach::Public, https_only: true, timeout }
        }
    }

    /// Checks a URL a client gives (at registration or submit), before anything is stored.
    pub fn check_url(&self, raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            other => return Err(format!("must be an https URL, not {other}")),
        }
        if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
            return Err("must name a host and carry no credentials".into());
        }
        if raw.len() > 2048 {
            return Err("is longer than 2,048 characters".into());
        }
        // An address written out is checked now; a name is checked at every delivery, after
        // it resolves.
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let loopback_ok = self.reach == Reach::PublicAndLoopback && ip.is_loopback();
            if !(super::is_public_address(ip) || loopback_ok) {
                return Err("must not point at a private, loopback, link-local or metadata address".into());
            }
        }
        Ok(url)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed (words for the delivery record: no internals).
    pub error: Option<String>,
    pub latency: Duration,
}

impl Sent {
    /// The receiver took it (any 2xx).
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The `webhook-signature` header: one `v1,<sig>` per secret.
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let signed: Result<Vec<String>, String> = secrets
        .iter()
        .map(|secret| {
            standardwebhooks::Webhook::new(secret)
                .and_then(|w| w.sign(id, timestamp, body))
                .map_err(|e| format!("cannot sign: {e}"))
        })
        .collect();
    Ok(signed?.join(" "))
}

/// Posts `body` to `url`, signed with `secrets`, as delivery `id`.
pub async fn send(policy: &SendPolicy, url: &str, id: &str, secrets: &[&str], body: &[u8], now: i64) -> Sent {
    let started = Instant::now();
    let failed = |error: String| Sent { status: None, error: Some(error), latency: started.elapsed() };
    let url = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return failed(format!("not a URL: {e}")),
    };
    let addr = match vet(&url, policy.reach, policy.https_only).await {
        Ok(a) => a,
        Err(why) => return failed(format!("refused: {why}")),
    };
    let signature = match signature(secrets, id, now, body) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    // Pinned to the vetted address: no second lookup happens.
    let client = match crate::net::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(url.host_str().unwrap_or_default(), addr)
        .timeout(policy.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot build an HTTP client: {e}")),
    };
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .header(reqwest::header::USER_AGENT, "agentq-webhooks")
        .body(body.to_vec())
        .send()
        .await;
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "the receiver did not answer in time"
            } else {
                "the receiver could not be reached"
            };
            tracing::info!(error = %e, "webhook attempt failed");
            return failed(why.into());
        }
    };
    let status = response.status().as_u16();
    // The body means nothing to us; read a little so the connection can be reused.
    let mut read = 0;
    while read < 4096 {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    let error = (!(200..300).contains(&status)).then(|| format!("the receiver answered {status}"));
    Sent { status: Some(status), error, latency: started.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{header_exists, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_signature_verifies_with_the_reference_implementation() {
        let body = br#"{"type":"task.succeeded"}"#;
        let sig = signature(&[SECRET], "evt_1", 1_700_000_000, body).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", crate::now().unix_timestamp().to_string().parse().unwrap());
        let fresh = signature(&[SECRET], "evt_1", crate::now().unix_timestamp(), body).unwrap();
        headers.insert("webhook-signature", fresh.parse().unwrap());
        standardwebhooks::Webhook::new(SECRET).unwrap().verify(body, &headers).unwrap();
        assert!(sig.starts_with("v1,"));
        let two = signature(&[SECRET, "whsec_dGhlIG90aGVyIHNlY3JldA=="], "evt_1", 1, body).unwrap();
        assert_eq!(two.split(' ').count(), 2, "one signature per secret during a rotation");
    }

    #[tokio::test]
    async fn a_delivery_is_signed_and_a_2xx_delivers_it() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header_exists("webhook-signature"))
            .respond_with(ResponseTemplate::new(204))
            .mount(&server)
            .await;
        let local = SendPolicy::new(true, Duration::from_secs(2));
        let sent = send(&local, &format!("{}/hook", server.uri()), "evt_1", &[SECRET], b"{}", 1).await;
        assert!(sent.delivered(), "{sent:?}");
        let deployed = SendPolicy::new(false, Duration::from_secs(2));
        let refused = send(&deployed, &format!("{}/hook", server.uri()), "evt_1", &[SECRET], b"{}", 1).await;
        assert!(!refused.delivered() && refused.error.unwrap().contains("refused"));
    }

    #[test]
    fn urls_are_checked_before_they_are_stored() {
        let deployed = SendPolicy::new(false, Duration::from_secs(1));
        assert!(deployed.check_url("https://hooks.example.com/agentq").is_ok());
        assert!(deployed.check_url("http://hooks.example.com/agentq").is_err());
        assert!(deployed.check_url("https://user:pw@hooks.example.com/").is_err());
        assert!(deployed.check_url("not a url").is_err());
        assert!(deployed.check_url("https://169.254.169.254/latest").is_err());
        assert!(deployed.check_url("https://[::1]/hook").is_err());
        assert!(SendPolicy::new(true, Duration::from_secs(1)).check_url("http://10.0.0.8/hook").is_err());
        assert!(SendPolicy::new(true, Duration::from_secs(1)).check_url("http://127.0.0.1:9999/hook").is_ok());
    }
}
