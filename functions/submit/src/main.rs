//! Lambda entry point for the submit function: build the clients once, then serve.

use std::sync::Arc;

use agentq::runtime::wiring;
use lambda_http::{Error, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let app = submit::App {
        store: Arc::new(wiring::store(&config, &sdk)),
        queue: Arc::new(wiring::queue(&config, &sdk)?),
        model_configured: wiring::model_configured(&config),
        allowed: wiring::allowed(&config),
        auth: Arc::new(wiring::auth_cache(&config)),
        webhooks: wiring::send_policy(&config),
        tools: wiring::tool_schemas(&config)?,
    };
    lambda_http::run(service_fn(|req| {
        let (app, telemetry) = (&app, &telemetry);
        async move { Ok::<_, std::convert::Infallible>(telemetry.invocation(submit::handle(app, req)).await) }
    }))
    .await
}
