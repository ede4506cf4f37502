//! Lambda entry point for the worker: build the clients once, then serve SQS batches.

use std::sync::Arc;

use agentq::agent::RetryPolicy;
use agentq::queue::SqsRequeue;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::telemetry::traces::init();
    let config = agentq::Config::from_env()?;
    let sdk = agentq::aws::sdk_config().await;
    let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10)).build()?;
    let m = &config.model;
    let worker = worker::Worker {
        store: Arc::new(agentq::wiring::store(&config, &sdk)),
        models: agentq::wiring::model_chain(&config, &http, &sdk)?,
        tools: agentq::wiring::tool_registry(&config, &http)?,
        prices: config.prices.clone(),
        retry: RetryPolicy { max_attempts: m.max_attempts, cap: m.max_backoff, ..RetryPolicy::default() },
        requeue: Arc::new(SqsRequeue::new(agentq::aws::sqs(&sdk))),
        max_receive_count: config.max_receive_count,
        deadline_margin: config.deadline_margin,
        default_max_cost_nanos: config.default_max_cost_nanos,
        retry_delay: config.retry_delay,
        retry_max_delay: config.retry_max_delay,
        unavailable_message: config.unavailable_message.clone(),
        visibility_slack: config.visibility_slack,
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(worker::handle(&worker, event)))).await
}
