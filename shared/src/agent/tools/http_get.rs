//! `http_get`: fetch a URL for the model, guarded so a prompt cannot turn the worker into a
//! proxy into the network it runs in (SSRF).
//!
//! - Only hosts on the configured allowlist (`example.com`, or `*.example.com` for its
//!   subdomains), over http or https.
//! - The host is resolved here and every address checked **after** resolution: loopback,
//!   private, link-local (the cloud metadata service at 169.254.169.254 included), CGNAT,
//!   multicast, documentation and reserved ranges are refused, IPv6 too (IPv4-mapped and NAT64
//!   forms are unwrapped). The connection then goes to the address that was checked, not to a
//!   second lookup, so DNS rebinding cannot slip a private address in between.
//! - Redirects are followed by hand, at most three, each hop checked like the first.
//! - A time limit for the whole fetch and a size limit on the body (a longer body is cut, and
//!   the result says so).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolError};
use crate::llm::ToolSpec;
pub use crate::outbound::is_public_address;

/// What `http_get` may reach.
#[derive(Debug, Clone)]
pub struct HttpGetPolicy {
    /// Hosts that may be fetched: exact names, or `*.example.com` for subdomains.
    pub allowed_hosts: Vec<String>,
    pub max_bytes: usize,
    pub timeout: Duration,
    pub max_redirects: usize,
    /// Which resolved addresses may be contacted: [`is_public_address`] outside tests.
    pub address_filter: fn(IpAddr) -> bool,
}

impl HttpGetPolicy {
    pub fn new(allowed_hosts: Vec<String>) -> Self {
        Self {
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
            address_filter: is_public_address,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
            Some(parent) => host.strip_suffix(parent).is_some_and(|sub| sub.ends_with('.')),
            None => *allowed == host,
        })
    }
}

pub struct HttpGet {
    spec: ToolSpec,
    policy: HttpGetPolicy,
}

impl HttpGet {
    pub const NAME: &str = "http_get";

    pub fn new(policy: HttpGetPolicy) -> Self {
        let hosts = policy.allowed_hosts.join(", ");
        Self {
            spec: ToolSpec {
                name: Self::NAME.into(),
                description: format!(
                    "Fetches a web page or API response with HTTP GET and returns its status and body \
                     (at most {} bytes). Only these hosts may be fetched: {hosts}.",
                    policy.max_bytes
                ),
                input_schema: json!({
                    "type": "object",
                    "properties": {"url": {"type": "string", "description": "an http or https URL", "maxLength": 2048}},
                    "required": ["url"],
                    "additionalProperties": false
                }),
            },
            policy,
        }
    }

    /// Checks a URL and returns the address to connect to.
    async fn vet(&self, url: &reqwest::Url) -> Result<SocketAddr, ToolError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError(format!("refused: only http and https URLs may be fetched, not {}", url.scheme())));
        }
        let host = url.host_str().ok_or_else(|| ToolError("refused: the URL has no host".into()))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.policy.host_allowed(bare) {
            return Err(ToolError(format!("refused: {host} is not on the allowlist of hosts")));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| ToolError(format!("cannot resolve {host}: {e}")))?
                .collect(),
        };
        // Every address must be public: a name that also resolves inside could be made to.
        if let Some(bad) = addrs.iter().find(|a| !(self.policy.address_filter)(a.ip())) {
            return Err(ToolError(format!("refused: {host} resolves to {}, which is not a public address", bad.ip())));
        }
        addrs.into_iter().next().ok_or_else(|| ToolError(format!("{host} has no address")))
    }

    async fn fetch(&self, mut url: reqwest::Url) -> Result<String, ToolError> {
        for hop in 0..=self.policy.max_redirects {
            let addr = self.vet(&url).await?;
            let host = url.host_str().unwrap_or_default().to_owned();
            // Pin the connection to the vetted address; no second lookup happens.
            let client = crate::net::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .build()
                .map_err(|e| ToolError(format!("cannot build the HTTP client: {e}")))?;
            let mut response =
                client.get(url.clone()).send().await.map_err(|e| ToolError(format!("fetching {url} failed: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ToolError(format!("{url} answered {status} without a Location")))?;
                url = url.join(location).map_err(|e| ToolError(format!("bad redirect to {location:?}: {e}")))?;
                if hop == self.policy.max_redirects {
                    break;
                }
                continue;
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut body = Vec::new();
            let mut cut = false;
            while let Some(chunk) =
                response.chunk().await.map_err(|e| ToolError(format!("reading {url} failed: {e}")))?
            {
                let room = self.policy.max_bytes - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    cut = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            let mut text = format!("HTTP {status}\ncontent-type: {content_type}\n\n{}", String::from_utf8_lossy(&body));
            if cut {
                text.push_str(&format!("\n[cut: the body is longer than {} bytes]", self.policy.max_bytes));
            }
            return if status.is_success() { Ok(text) } else { Err(ToolError(text)) };
        }
        Err(ToolError(format!("refused: more than {} redirects", self.policy.max_redirects)))
    }
}

#[async_trait]
impl Tool for HttpGet {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, input: &Value, _: &ToolContext) -> Result<String, ToolError> {
        let raw = input["url"].as_str().unwrap_or_default();
        let url = reqwest::Url::parse(raw).map_err(|e| ToolError(format!("not a URL: {raw:?} ({e})")))?;
        tokio::time::timeout(self.policy.timeout, self.fetch(url))
            .await
            .map_err(|_| ToolError(format!("the fetch took longer than {:?}", self.policy.timeout)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public_address(ip(a)), "{a} passed as public");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public_address(ip(a)), "{a} refused");
        }
    }

    #[test]
    fn the_allowlist_matches_hosts_and_wildcard_subdomains() {
        let p = HttpGetPolicy::new(vec!["example.com".into(), "*.docs.rs".into()]);
        assert!(p.host_allowed("example.com") && p.host_allowed("EXAMPLE.com."));
        assert!(!p.host_allowed("evil-example.com") && !p.host_allowed("sub.example.com"));
        assert!(p.host_allowed("serde.docs.rs") && !p.host_allowed("docs.rs") && !p.host_allowed("xdocs.rs"));
    }

    async fn get(policy: HttpGetPolicy, url: &str) -> Result<String, ToolError> {
        HttpGet::new(policy).call(&json!({"url": url}), &ToolContext::default()).await
    }

    fn refused(r: Result<String, ToolError>) -> String {
        let e = r.expect_err("the fetch should have been refused").0;
        assert!(e.starts_with("refused"), "{e}");
        e
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_even_when_allowlisted() {
        let hosts = ["127.0.0.1", "169.254.169.254", "[::1]", "::1", "10.0.0.1", "localhost"];
        let policy = HttpGetPolicy::new(hosts.iter().map(|h| h.to_string()).collect());
        for url in
            ["http://127.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://10.0.0.1/"]
        {
            let e = refused(get(policy.clone(), url).await);
            assert!(e.contains("not a public address"), "{url}: {e}");
        }
        // A name that resolves to loopback is refused after resolution.
        let e = refused(get(policy, "http://localhost:9/").await);
        assert!(e.contains("not a public address"), "{e}");
    }

    #[tokio::test]
    async fn hosts_off_the_allowlist_and_other_schemes_are_refused() {
        let policy = HttpGetPolicy::new(vec!["example.com".into()]);
        assert!(refused(get(policy.clone(), "https://example.org/").await).contains("allowlist"));
        assert!(refused(get(policy, "file:///etc/passwd").await).contains("http"));
    }

    /// A policy that lets the test server on loopback through, and nothing else internal.
    fn test_policy() -> HttpGetPolicy {
        let mut p = HttpGetPolicy::new(vec!["127.0.0.1".into(), "169.254.169.254".into(), "10.0.0.1".into()]);
        p.address_filter = |ip| ip == IpAddr::from([127, 0, 0, 1]) || is_public_address(ip);
        p
    }

    #[tokio::test]
    async fn a_redirect_to_an_internal_address_is_refused() {
        let server = MockServer::start().await;
        for (from, to) in [
            ("/meta", "http://169.254.169.254/latest/meta-data/"),
            ("/private", "http://10.0.0.1/admin"),
            ("/away", "https://example.net/"),
        ] {
            Mock::given(method("GET"))
                .and(path(from))
                .respond_with(ResponseTemplate::new(302).insert_header("location", to))
                .mount(&server)
                .await;
        }
        for from in ["/meta", "/private", "/away"] {
            refused(get(test_policy(), &format!("{}{from}", server.uri())).await);
        }
    }

    #[tokio::test]
    async fn redirects_are_followed_three_times_at_most() {
        let server = MockServer::start().await;
        // /r0 → /r1 → /r2 → /r3 → /r4 (200): from /r1 it takes three hops, from /r0 four.
        for i in 0..4 {
            Mock::given(method("GET"))
                .and(path(format!("/r{i}")))
                .respond_with(ResponseTemplate::new(302).insert_header("location", format!("/r{}", i + 1)))
                .mount(&server)
                .await;
        }
        Mock::given(method("GET"))
            .and(path("/r4"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        assert!(get(test_policy(), &format!("{}/r1", server.uri())).await.is_ok(), "three redirects are fine");
        assert!(refused(get(test_policy(), &format!("{}/r0", server.uri())).await).contains("more than 3 redirects"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_and_says_so() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(5000)))
            .mount(&server)
            .await;
        let mut policy = test_policy();
        policy.max_bytes = 1000;
        let text = get(policy, &server.uri()).await.unwrap();
        assert!(text.starts_with("HTTP 200"));
        assert!(text.contains(&"x".repeat(1000)) && !text.contains(&"x".repeat(1001)));
        assert!(text.ends_with("[cut: the body is longer than 1000 bytes]"));
    }
}
