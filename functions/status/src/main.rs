//! Lambda entry point for the status function: build the clients once, then serve.

use std::sync::Arc;

use lambda_http::{Error, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let app = status::App {
        store: Arc::new(agentq::runtime::wiring::store(&config, &sdk)),
        reads: Arc::new(agentq::runtime::wiring::read_throttle(&config)),
        auth: Arc::new(agentq::runtime::wiring::auth_cache(&config)),
        webhooks: agentq::runtime::wiring::send_policy(&config),
    };
    lambda_http::run(service_fn(|req| {
        let (app, telemetry) = (&app, &telemetry);
        async move { Ok::<_, std::convert::Infallible>(telemetry.invocation(status::handle(app, req)).await) }
    }))
    .await
}
