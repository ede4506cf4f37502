//! Lambda entry point for the reconciler: build the clients once, then serve the schedule.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::telemetry::traces::init();
    let config = agentq::Config::from_env()?;
    let sdk = agentq::aws::sdk_config(&config.aws_timeouts).await;
    let reconciler = reconciler::Reconciler {
        store: Arc::new(agentq::wiring::store(&config, &sdk)),
        queue: Arc::new(agentq::wiring::queue(&config, &sdk)?),
        settings: reconciler::Settings::from(&config),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        telemetry.invocation(reconciler::handle(&reconciler, event))
    }))
    .await
}
