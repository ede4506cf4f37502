//! Lambda entry point for the notifier: build the clients once, then serve stream and queue
//! batches.

use std::sync::Arc;

use agentq::queue::SqsRequeue;
use agentq::runtime::wiring;
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let notifier = notifier::Notifier {
        store: Arc::new(wiring::store(&config, &sdk)),
        queue: Arc::new(wiring::delivery_queue(&config, &sdk)?),
        requeue: Arc::new(
            SqsRequeue::new(agentq::runtime::aws::sqs(&sdk)).knowing(config.webhooks.queue_url.as_deref()),
        ),
        policy: wiring::send_policy(&config),
        schedule: config.webhooks.retry,
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(notifier::handle(&notifier, event))))
        .await
}
