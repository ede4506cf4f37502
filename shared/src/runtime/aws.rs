//! AWS clients, built once per cold start and shared by every invocation.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_smithy_async::rt::sleep::TokioSleep;
use aws_smithy_async::time::SystemTimeSource;
use aws_types::sdk_config::SharedCredentialsProvider;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::runtime::config::{AwsTimeouts, ConfigError};

/// The SDK configuration from the standard sources (environment, profile files, SSO, web
/// identity, container and instance credentials), for the command-line tools and the local
/// stack's helpers, which run where a developer's profile may be what holds the keys. Every
/// call is bounded by `timeouts` and goes over the process's one TLS stack ([`crate::net`]).
pub async fn sdk_config(timeouts: &AwsTimeouts) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::net::sdk_client())
        .timeout_config(timeout_config(timeouts))
        .load()
        .await
}

/// The SDK configuration of a function, from the environment Lambda gives every function
/// and nothing else: the region (`AWS_REGION`), the credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), endpoints (`AWS_ENDPOINT_URL_<SERVICE>`, then
/// `AWS_ENDPOINT_URL`: how the local emulators are reached, with no code here knowing about
/// them) and `AWS_MAX_ATTEMPTS`.
///
/// Not [`sdk_config`]: its chain of sources (profile files, SSO, STS web identity, ECS and
/// instance metadata) never finds anything in Lambda, which always sets the environment's
/// keys, yet it is ~500 KiB of code in every function and reads the file system at each cold
/// start (BENCHMARKS.md, "the SDK's configuration from the environment"). A setting missing
/// here is a clear error at start rather than a failed first request.
pub fn function_sdk_config(timeouts: &AwsTimeouts) -> Result<SdkConfig, ConfigError> {
    function_sdk_config_from(timeouts, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

fn function_sdk_config_from(
    timeouts: &AwsTimeouts,
    env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Result<SdkConfig, ConfigError> {
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| ConfigError::new("AWS_REGION", "is not set (Lambda sets it; `make up` sets it locally)"))?;
    let key = |var: &'static str| {
        env(var)
            .ok_or_else(|| ConfigError::new(var, "is not set (Lambda sets it; locally, export it or run `make up`)"))
    };
    // Read once: Lambda sets them for the life of the instance and never changes them.
    let credentials = Credentials::new(
        key("AWS_ACCESS_KEY_ID")?,
        key("AWS_SECRET_ACCESS_KEY")?,
        env("AWS_SESSION_TOKEN"),
        None,
        "environment",
    );
    let attempts = match env("AWS_MAX_ATTEMPTS") {
        None => RetryConfig::standard().max_attempts(),
        Some(n) => n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ConfigError::new("AWS_MAX_ATTEMPTS", format!("is {n:?}, not a whole number of at least 1"))
        })?,
    };
    let ignore_endpoints = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .timeout_config(timeout_config(timeouts))
        .http_client(crate::net::sdk_client())
        .sleep_impl(TokioSleep::new())
        .time_source(SystemTimeSource::new());
    if !ignore_endpoints {
        builder.set_endpoint_url(env("AWS_ENDPOINT_URL"));
    }
    Ok(builder.service_config(EnvServiceConfig { env: Box::new(env), ignore_endpoints }).build())
}

fn timeout_config(timeouts: &AwsTimeouts) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(timeouts.connect)
        .operation_attempt_timeout(timeouts.attempt)
        .operation_timeout(timeouts.operation)
        .build()
}

/// A variable's value by its name: the process's environment, or a test's.
type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A client's own settings, which it asks for by their variable's name when it is built (so
/// far only `AWS_ENDPOINT_URL`): the service's variable first (`AWS_ENDPOINT_URL_DYNAMODB`,
/// `AWS_ENDPOINT_URL_SECRETS_MANAGER`), then the general one, as the SDK's own loader does.
struct EnvServiceConfig {
    env: EnvLookup,
    ignore_endpoints: bool,
}

impl std::fmt::Debug for EnvServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvServiceConfig").field("ignore_endpoints", &self.ignore_endpoints).finish_non_exhaustive()
    }
}

impl LoadServiceConfig for EnvServiceConfig {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        if self.ignore_endpoints && key.env() == "AWS_ENDPOINT_URL" {
            return None;
        }
        let service = key.service_id().to_ascii_uppercase().replace(' ', "_");
        (self.env)(&format!("{}_{service}", key.env())).or_else(|| (self.env)(key.env()))
    }
}

/// Counts every request a client sends (each attempt: retries are billed too) into the
/// invocation's metrics (`AwsRequests` by service), so requests per task are measured, not
/// estimated.
#[derive(Debug)]
struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            crate::observe::metrics::count_request(m.service(), m.name());
        }
        Ok(())
    }
}

/// DynamoDB and SQS answer every request with a few KB of JSON at most, and each call is
/// bounded by its attempt timeout ([`AwsTimeouts`]), so the SDK's stalled-stream protection
/// (a throughput watch on every body, meant for long transfers) only costs CPU there: ~8 % of
/// a request's (`cargo run --profile profiling -p agentq-shared --example request_cpu`,
/// BENCHMARKS.md). S3, which moves large bodies, keeps it.
pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(config)
        .stalled_stream_protection(aws_sdk_dynamodb::config::StalledStreamProtectionConfig::disabled())
        .interceptor(CountRequests)
        .interceptor(CountCapacity)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// SQS as the functions use it (see [`dynamodb`] for stalled-stream protection).
pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::from(config)
        .stalled_stream_protection(aws_sdk_sqs::config::StalledStreamProtectionConfig::disabled())
        .interceptor(CountRequests)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// S3 with path-style addressing when `AGENTQ_S3_PATH_STYLE=true` (LocalStack), from config
/// rather than by guessing.
pub fn s3(config: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf =
        aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).interceptor(CountRequests).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Asks DynamoDB for the capacity each request consumes (`ReturnConsumedCapacity: INDEXES`,
/// which costs nothing) and counts it into the invocation's metrics (`DynamoDbWriteUnits`,
/// `DynamoDbReadUnits`), so the bench measures what a task costs rather than estimating it
/// from item sizes. At DEBUG (`agentq::runtime::aws=debug`) each request's units are logged
/// with the part its table and each index took: where a task's bill goes. (A write refused by
/// its condition consumes units too, and is not seen.)
///
/// A transaction's table units are counted as at least two per action: DynamoDB bills two
/// write units per action and KB, and reports that; DynamoDB Local reports only twice its
/// largest item (a transaction of three small puts: 2 units, not 6), so without this floor
/// every local figure would hide most of what transactions cost. In AWS the floor never binds.
#[derive(Debug)]
struct CountCapacity;

/// For each operation the stores use: ask for the total on its input, read it off its output
/// as read or write units.
macro_rules! capacity_of {
    ($input:expr, $output:expr, $floor:expr, $($op:ident :: $in:ident / $out:ident => $write:literal, $units:expr);+ $(;)?) => {{
        use aws_sdk_dynamodb::operation::*;
        if let Some(input) = $input {
            $(if let Some(i) = input.downcast_mut::<$op::$in>() {
                i.return_consumed_capacity = Some(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Indexes);
            })+
        }
        if let Some(output) = $output {
            $(if let Some(o) = output.downcast_ref::<$op::$out>() {
                let consumed: fn(&$op::$out) -> Vec<&Consumed> = $units;
                return Some(($write, units(stringify!($out), &consumed(o), $floor)));
            })+
        }
        None
    }};
}

type Consumed = aws_sdk_dynamodb::types::ConsumedCapacity;

fn total(c: &Option<Consumed>) -> Vec<&Consumed> {
    c.iter().collect()
}

fn sum(c: &Option<Vec<Consumed>>) -> Vec<&Consumed> {
    c.iter().flatten().collect()
}

/// How many actions the transaction being sent holds (kept between serialization and the
/// answer, which no longer carries the input).
#[derive(Debug, Clone, Copy)]
struct TransactActions(usize);

impl aws_smithy_types::config_bag::Storable for TransactActions {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

/// The units of `consumed` (one entry per table a request touched), the table's part at least
/// `floor`, logged at DEBUG by where they went: the table, and each global secondary index.
fn units(operation: &str, consumed: &[&Consumed], floor: f64) -> f64 {
    let table: f64 = consumed.iter().filter_map(|c| c.table.as_ref()?.capacity_units).sum();
    let total = consumed.iter().filter_map(|c| c.capacity_units).sum::<f64>() + (floor - table).max(0.0);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let table = table.max(floor);
        let mut indexes = std::collections::BTreeMap::<&str, f64>::new();
        for (name, c) in consumed.iter().flat_map(|c| c.global_secondary_indexes.iter().flatten()) {
            *indexes.entry(name).or_default() += c.capacity_units.unwrap_or(0.0);
        }
        tracing::debug!(operation, total, table, ?indexes, "dynamodb capacity");
    }
    total
}

/// Marks `input` to return its consumed capacity; reads `output`'s: (is a write, units), a
/// transaction's table units at least `floor`.
fn capacity(
    input: Option<&mut aws_smithy_runtime_api::client::interceptors::context::Input>,
    output: Option<&aws_smithy_runtime_api::client::interceptors::context::Output>,
    floor: f64,
) -> Option<(bool, f64)> {
    capacity_of!(input, output, floor,
        get_item::GetItemInput / GetItemOutput => false, |o| total(&o.consumed_capacity);
        query::QueryInput / QueryOutput => false, |o| total(&o.consumed_capacity);
        scan::ScanInput / ScanOutput => false, |o| total(&o.consumed_capacity);
        batch_get_item::BatchGetItemInput / BatchGetItemOutput => false, |o| sum(&o.consumed_capacity);
        transact_get_items::TransactGetItemsInput / TransactGetItemsOutput => false, |o| sum(&o.consumed_capacity);
        put_item::PutItemInput / PutItemOutput => true, |o| total(&o.consumed_capacity);
        update_item::UpdateItemInput / UpdateItemOutput => true, |o| total(&o.consumed_capacity);
        delete_item::DeleteItemInput / DeleteItemOutput => true, |o| total(&o.consumed_capacity);
        batch_write_item::BatchWriteItemInput / BatchWriteItemOutput => true, |o| sum(&o.consumed_capacity);
        transact_write_items::TransactWriteItemsInput / TransactWriteItemsOutput => true, |o| sum(&o.consumed_capacity);
    )
}

impl Intercept for CountCapacity {
    fn name(&self) -> &'static str {
        "CountCapacity"
    }

    fn modify_before_serialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextMut<
            '_,
        >,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input_mut();
        if let Some(t) =
            input.downcast_ref::<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput>()
        {
            cfg.interceptor_state().store_put(TransactActions(t.transact_items().len()));
        }
        capacity(Some(input), None, 0.0);
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let floor = cfg.load::<TransactActions>().map_or(0.0, |a| 2.0 * a.0 as f64);
        if let Some((write, units)) = context.output_or_error().ok().and_then(|o| capacity(None, Some(o), floor)) {
            crate::observe::metrics::count_capacity(write, units);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::types::{AttributeValue, Capacity, ConsumedCapacity};
    use wiremock::matchers::{header, header_regex, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::{function_sdk_config_from, units};
    use crate::runtime::config::AwsTimeouts;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    const LAMBDA: &[(&str, &str)] =
        &[("AWS_REGION", "eu-west-1"), ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "secret")];

    #[test]
    fn a_function_without_a_region_or_keys_fails_at_start_naming_the_setting() {
        let missing = |vars: &[(&str, &str)]| function_sdk_config_from(&AwsTimeouts::TOOLS, env(vars)).unwrap_err().var;
        assert_eq!(missing(&LAMBDA[1..]), "AWS_REGION");
        assert_eq!(missing(&[LAMBDA[0], LAMBDA[2]]), "AWS_ACCESS_KEY_ID");
        assert_eq!(missing(&LAMBDA[..2]), "AWS_SECRET_ACCESS_KEY");
        let bad = [LAMBDA, &[("AWS_MAX_ATTEMPTS", "0")]].concat();
        assert_eq!(missing(&bad), "AWS_MAX_ATTEMPTS");
        let sdk = function_sdk_config_from(
            &AwsTimeouts::TOOLS,
            env(&[("AWS_DEFAULT_REGION", "us-west-2"), LAMBDA[1], LAMBDA[2]]),
        )
        .unwrap();
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("us-west-2"), "AWS_DEFAULT_REGION stands in for AWS_REGION");
    }

    /// Where a DynamoDB client built from `vars` sends a request, and with which keys.
    async fn dynamodb_request(vars: &[(&str, &str)], server: &MockServer) -> Option<String> {
        Mock::given(method("POST"))
            .and(header("x-amz-target", "DynamoDB_20120810.GetItem"))
            .and(header_regex("authorization", "Credential=AKIDEXAMPLE/[0-9]+/eu-west-1/dynamodb/"))
            .and(header("x-amz-security-token", "token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/x-amz-json-1.0")
                    .set_body_string("{}"),
            )
            .mount(server)
            .await;
        let vars = [LAMBDA, &[("AWS_SESSION_TOKEN", "token")], vars].concat();
        let sdk = function_sdk_config_from(&AwsTimeouts::TOOLS, env(&vars)).unwrap();
        let client = super::dynamodb(&sdk);
        let sent = client.get_item().table_name("t").key("pk", AttributeValue::S("a".into())).send().await;
        sent.ok().map(|_| "answered".to_owned())
    }

    #[tokio::test]
    async fn a_functions_requests_go_to_its_services_endpoint_signed_with_the_environments_keys() {
        let (dynamodb, general) = (MockServer::start().await, MockServer::start().await);
        let vars = [("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.uri()), ("AWS_ENDPOINT_URL", general.uri())];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(dynamodb_request(&vars, &dynamodb).await.as_deref(), Some("answered"));
        assert_eq!(dynamodb.received_requests().await.unwrap().len(), 1, "the service's own endpoint wins");
        assert!(general.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_a_services_endpoint_the_general_one_is_used_unless_endpoints_are_ignored() {
        let general = MockServer::start().await;
        let uri = general.uri();
        assert_eq!(dynamodb_request(&[("AWS_ENDPOINT_URL", &uri)], &general).await.as_deref(), Some("answered"));
        assert_eq!(general.received_requests().await.unwrap().len(), 1);
        let vars = [("AWS_ENDPOINT_URL", uri.as_str()), ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")];
        let sdk = function_sdk_config_from(&AwsTimeouts::TOOLS, env(&[LAMBDA, &vars].concat())).unwrap();
        assert_eq!(sdk.endpoint_url(), None, "an ignored endpoint is not the client's");
    }

    fn consumed(table: f64, index: f64) -> ConsumedCapacity {
        ConsumedCapacity::builder()
            .table_name("t")
            .capacity_units(table + index)
            .table(Capacity::builder().capacity_units(table).build())
            .global_secondary_indexes("open", Capacity::builder().capacity_units(index).build())
            .build()
    }

    #[test]
    fn a_transaction_counts_at_least_two_units_per_action_on_its_table() {
        // Three small puts as DynamoDB Local reports them (2 units), and an index write.
        assert_eq!(units("TransactWriteItemsOutput", &[&consumed(2.0, 1.0)], 6.0), 7.0);
        // As DynamoDB reports them, the floor changes nothing.
        assert_eq!(units("TransactWriteItemsOutput", &[&consumed(8.0, 1.0)], 6.0), 9.0);
        assert_eq!(units("PutItemOutput", &[&consumed(1.0, 0.0)], 0.0), 1.0);
    }
}
