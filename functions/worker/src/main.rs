//! Lambda entry point for the worker: build the clients once, then serve SQS batches.

use std::sync::Arc;

use agentq::queue::SqsRequeue;
use agentq::runtime::wiring;
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let mut config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    // The model keys and the tool signing secret, from Secrets Manager when deployed.
    wiring::load_secrets(&mut config, &sdk).await?;
    let http = wiring::http_client()?;
    let store = Arc::new(wiring::store(&config, &sdk));
    let worker = worker::Worker {
        // A model one instance finds down, every instance skips.
        models: wiring::model_chain(&config, &http, &sdk)?.with_board(store.clone()),
        store,
        tools: wiring::tool_registry(&config, &http)?,
        prices: config.prices.clone(),
        queue: Arc::new(wiring::queue(&config, &sdk)?),
        requeue: Arc::new(SqsRequeue::new(agentq::runtime::aws::sqs(&sdk)).knowing(wiring::queue_urls(&config)?.all())),
        settings: worker::WorkerSettings::from(&config),
        tenants: worker::TenantCache::default(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(worker::handle(&worker, event)))).await
}
