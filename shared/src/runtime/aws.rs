//! AWS clients, built once per cold start and shared by every invocation.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

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

pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// S3 with path-style addressing when `AGENTQ_S3_PATH_STYLE=true` (LocalStack), from config
/// rather than by guessing.
pub fn s3(config: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).build();
    aws_sdk_s3::Client::from_conf(conf)
}
