//! Lambda entry point for the worker: build the clients once, then serve SQS batches.

use std::sync::Arc;

use agentq::agent::{RetryPolicy, ToolRegistry};
use agentq::llm::AnthropicModel;
use agentq::store::DynamoStore;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    agentq::telemetry::init();
    let config = agentq::Config::from_env()?;
    let api_key = config.model.api_key.clone().ok_or("configuration: ANTHROPIC_API_KEY is not set")?;
    let sdk = agentq::aws::sdk_config().await;
    let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10)).build()?;
    let m = &config.model;
    let worker = worker::Worker {
        store: Arc::new(DynamoStore::new(agentq::aws::dynamodb(&sdk), &config.table_name, config.task_retention)),
        model: Arc::new(AnthropicModel::new(http, &m.base_url, api_key, &m.model, m.max_tokens, m.timeout)),
        tools: ToolRegistry::builtin(),
        prices: config.prices.clone(),
        retry: RetryPolicy { max_attempts: m.max_attempts, cap: m.max_backoff, ..RetryPolicy::default() },
        max_receive_count: config.max_receive_count,
        deadline_margin: config.deadline_margin,
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| worker::handle(&worker, event))).await
}
