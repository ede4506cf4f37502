//! AWS clients, built once per cold start and shared by every invocation.

use aws_config::{BehaviorVersion, SdkConfig};

/// The SDK configuration from the standard sources: region, credentials, and endpoints such
/// as `AWS_ENDPOINT_URL_DYNAMODB` (how the local emulators are reached, with no code here
/// knowing about them).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}
