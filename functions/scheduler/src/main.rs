//! Lambda entry point for the scheduler: build the clients once, then serve the clock.

use std::sync::Arc;

use agentq::runtime::wiring;
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let scheduler = scheduler::Scheduler {
        store: Arc::new(wiring::store(&config, &sdk)),
        queue: Arc::new(wiring::queue(&config, &sdk)?),
        allowed: wiring::allowed(&config),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(scheduler::handle(&scheduler, event))))
        .await
}
