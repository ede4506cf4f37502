//! Lambda entry point for the status function: build the clients once, then serve.

use std::sync::Arc;

use lambda_http::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::telemetry::traces::init();
    let config = agentq::Config::from_env()?;
    let sdk = agentq::aws::sdk_config(&config.aws_timeouts).await;
    let app = status::App {
        store: Arc::new(agentq::wiring::store(&config, &sdk)),
        reads: Arc::new(agentq::throttle::ReadThrottle::new(config.reads_per_sec, config.read_burst)),
    };
    lambda_http::run(service_fn(|req| {
        let (app, telemetry) = (&app, &telemetry);
        async move { Ok::<_, std::convert::Infallible>(telemetry.invocation(status::handle(app, req)).await) }
    }))
    .await
}
