//! Outbound HTTPS, one TLS stack for the whole process: rustls with the ring provider, for
//! reqwest (model, tool, webhook and MCP calls) and for the AWS SDK alike.
//!
//! Why not the crates' defaults: reqwest's `rustls` feature and the SDK's default HTTPS
//! client both bring aws-lc, a C library of 1.3 MiB in every binary and minutes of each cold
//! build, beside what ring already does for them. reqwest without a provider asks rustls for
//! the process default, so every reqwest client is built through here, which installs it
//! first (clippy's `disallowed-methods` keeps it that way).
//!
//! The SDK sends its requests through reqwest too ([`sdk_client`]), not through its own hyper
//! client: that one always compiles HTTP/2 in (h2, 0.75 MiB of every binary), which no AWS
//! endpoint we call needs, and reqwest is in every binary already.

use std::collections::HashMap;
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

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

/// The AWS SDK's HTTP client: reqwest on rustls with ring, HTTP/1.1, no redirects followed
/// (the SDK must see a 301 from S3 itself).
pub fn sdk_client() -> SharedHttpClient {
    SharedHttpClient::new(SdkHttp::default())
}

/// One reqwest client per pair of timeouts the SDK asks for (one per service's settings, so
/// a handful in a process), each with its own connection pool.
#[derive(Debug, Default)]
struct SdkHttp {
    connectors: Mutex<HashMap<Timeouts, SharedHttpConnector>>,
}

/// A connector's connect and read timeouts.
type Timeouts = (Option<Duration>, Option<Duration>);

impl HttpClient for SdkHttp {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(PoisonError::into_inner);
        connectors.entry(key).or_insert_with(|| SharedHttpConnector::new(SdkConnector::new(settings))).clone()
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("reqwest", None))
    }
}

/// Sends the SDK's requests, or says why it cannot (a client that could not be built).
#[derive(Debug, Clone)]
struct SdkConnector(Result<reqwest::Client, String>);

impl SdkConnector {
    fn new(settings: &HttpConnectorSettings) -> Self {
        let mut builder = builder().redirect(reqwest::redirect::Policy::none());
        if let Some(timeout) = settings.connect_timeout() {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(timeout) = settings.read_timeout() {
            builder = builder.read_timeout(timeout);
        }
        Self(builder.build().map_err(|e| format!("the AWS SDK's HTTP client could not be built: {e}")))
    }
}

impl HttpConnector for SdkConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = match &self.0 {
            Ok(client) => client.clone(),
            Err(why) => return HttpConnectorFuture::ready(Err(ConnectorError::other(why.clone().into(), None))),
        };
        let request = match request.try_into_http1x().map_err(|e| ConnectorError::user(e.into())).and_then(|r| {
            reqwest::Request::try_from(r.map(reqwest::Body::wrap)).map_err(|e| ConnectorError::user(e.into()))
        }) {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(e)),
        };
        HttpConnectorFuture::new(async move {
            let response = client.execute(request).await.map_err(connector_error)?;
            let response: http::Response<reqwest::Body> = response.into();
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// What the SDK's retry policy should make of a failed send: a timeout, and anything that
/// went wrong on the wire (a refused connection, a pooled one the server had closed, a reset,
/// a body cut short), are worth another attempt, as the SDK's own client classes them; a
/// request that could not be built is not.
fn connector_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_builder() {
        ConnectorError::user(e.into())
    } else if e.is_connect() {
        ConnectorError::io(e.into()).never_connected()
    } else {
        ConnectorError::io(e.into())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::error::SdkError;
    use aws_sdk_dynamodb::types::AttributeValue;
    use wiremock::matchers::{header, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// A DynamoDB client sending to `endpoint` through [`super::sdk_client`]: `attempts`
    /// attempts, each read given 300 ms.
    fn dynamodb_at(endpoint: &str, attempts: u32) -> aws_sdk_dynamodb::Client {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(endpoint)
            .http_client(super::sdk_client())
            .retry_config(RetryConfig::standard().with_max_attempts(attempts).with_initial_backoff(Duration::ZERO))
            .timeout_config(TimeoutConfig::builder().read_timeout(Duration::from_millis(300)).build())
            .build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }

    async fn get(client: &aws_sdk_dynamodb::Client) -> Result<Option<String>, String> {
        match client.get_item().table_name("t").key("pk", AttributeValue::S("a".into())).send().await {
            Ok(out) => Ok(out.item().and_then(|i| i.get("pk")?.as_s().ok().cloned())),
            Err(SdkError::DispatchFailure(f)) => Err(match f.as_connector_error() {
                Some(c) if c.is_timeout() => "timeout".into(),
                Some(c) if c.is_io() => "io".into(),
                other => format!("{other:?}"),
            }),
            Err(SdkError::ServiceError(e)) => Err(format!("status {}", e.raw().status().as_u16())),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[tokio::test]
    async fn the_sdks_requests_go_out_through_reqwest_and_their_answers_come_back_whole() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header("x-amz-target", "DynamoDB_20120810.GetItem"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/x-amz-json-1.0")
                    .set_body_string(r#"{"Item": {"pk": {"S": "a"}}}"#),
            )
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(get(&dynamodb_at(&server.uri(), 1)).await, Ok(Some("a".into())));
        let sent = &server.received_requests().await.unwrap()[0];
        let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["TableName"], "t", "the request's body went out whole");
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_is_a_timeout_the_sdk_tries_again() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .expect(2)
            .mount(&server)
            .await;
        assert_eq!(get(&dynamodb_at(&server.uri(), 2)).await, Err("timeout".into()));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_failure_the_sdk_may_try_again() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(get(&dynamodb_at(&format!("http://{closed}"), 2)).await, Err("io".into()));
    }

    #[tokio::test]
    async fn a_redirect_is_the_sdks_to_see_not_followed() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(301).insert_header("location", "http://127.0.0.1:9/elsewhere"))
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(get(&dynamodb_at(&server.uri(), 1)).await, Err("status 301".into()));
    }

    #[test]
    fn a_client_built_here_runs_on_ring_the_process_provider() {
        let _client = super::client();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        let ring = rustls::crypto::ring::default_provider();
        let suites = |p: &rustls::crypto::CryptoProvider| p.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        assert_eq!(suites(installed), suites(&ring));
    }
}
