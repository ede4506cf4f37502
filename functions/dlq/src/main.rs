//! Lambda entry point for the dead-letter sweeper: build the clients once, then serve.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let sweeper = dlq::Sweeper {
        store: Arc::new(agentq::runtime::wiring::store(&config, &sdk)),
        dead: Arc::new(agentq::queue::SqsDeadLetters::new(agentq::runtime::aws::sqs(&sdk))),
        dlqs: config.dead_letter_urls.clone(),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(dlq::handle(&sweeper, event)))).await
}
