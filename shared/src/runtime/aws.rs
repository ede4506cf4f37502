//! AWS clients, built once per cold start and shared by every invocation.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::runtime::config::AwsTimeouts;

/// The SDK configuration from the standard sources: region, credentials, and endpoints such
/// as `AWS_ENDPOINT_URL_DYNAMODB` (how the local emulators are reached, with no code here
/// knowing about them), with every call bounded by `timeouts`.
pub async fn sdk_config(timeouts: &AwsTimeouts) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeouts.connect)
        .operation_attempt_timeout(timeouts.attempt)
        .operation_timeout(timeouts.operation)
        .build();
    aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts).load().await
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

pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(config).interceptor(CountRequests).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::from(config).interceptor(CountRequests).build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// S3 with path-style addressing when `AGENTQ_S3_PATH_STYLE=true` (LocalStack), from config
/// rather than by guessing.
pub fn s3(config: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf =
        aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).interceptor(CountRequests).build();
    aws_sdk_s3::Client::from_conf(conf)
}
