//! Lambda entry point for the notifier: build the clients once, then serve stream and queue
//! batches.

use std::sync::Arc;

use agentq::queue::SqsRequeue;
use agentq::runtime::wiring;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::sdk_config(&config.aws_timeouts).await;
    let notifier = notifier::Notifier {
        store: Arc::new(wiring::store(&config, &sdk)),
        queue: Arc::new(wiring::delivery_queue(&config, &sdk)?),
        requeue: Arc::new(SqsRequeue::new(agentq::runtime::aws::sqs(&sdk))),
        policy: wiring::send_policy(&config),
        schedule: config.webhooks.retry,
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| telemetry.invocation(notifier::handle(&notifier, event))))
        .await
}
