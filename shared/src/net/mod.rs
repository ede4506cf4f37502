//! Outbound HTTPS, one TLS stack for the whole process: rustls with the ring provider, for
//! reqwest (model, tool, webhook and MCP calls) and for the AWS SDK alike.
//!
//! Why not the crates' defaults: reqwest's `rustls` feature and the SDK's default HTTPS
//! client both bring aws-lc, a C library of 1.3 MiB in every binary and minutes of each cold
//! build, beside what ring already does for them. reqwest without a provider asks rustls for
//! the process default, so every reqwest client is built through here, which installs it
//! first (clippy's `disallowed-methods` keeps it that way).

use std::sync::Once;

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Makes ring the process's rustls provider, once; later calls do nothing. Needed before any
/// reqwest client is built, including those other crates build for us (the OTLP exporter's).
pub fn install_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only if another provider is already the default, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client builder whose TLS provider is in place.
#[allow(clippy::disallowed_methods)] // the one place allowed to call it
pub fn builder() -> reqwest::ClientBuilder {
    install_tls();
    reqwest::Client::builder()
}

/// A reqwest client with the defaults, as `reqwest::Client::new()` builds it (and, like it,
/// panicking only if the system's root certificates cannot be read).
pub fn client() -> reqwest::Client {
    builder().build().expect("an HTTP client with rustls and the system's roots")
}

/// The AWS SDK's HTTPS client: hyper and rustls with ring, the system's root certificates.
pub fn sdk_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_built_here_runs_on_ring_the_process_provider() {
        let _client = super::client();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        let ring = rustls::crypto::ring::default_provider();
        let suites = |p: &rustls::crypto::CryptoProvider| p.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        assert_eq!(suites(installed), suites(&ring));
    }
}
