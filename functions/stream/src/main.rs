//! Lambda entry point for the stream function: build the clients once, then stream.

use std::sync::Arc;

use lambda_http::{Error, service_fn};

// One thread: an instance serves one invocation at a time on a share of a vCPU, and a
// pool of threads only adds wake-ups between them (BENCHMARKS.md, "Where the CPU went").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::function_sdk_config(&config.aws_timeouts)?;
    let app = stream::App {
        store: Arc::new(agentq::runtime::wiring::store(&config, &sdk)),
        reads: Arc::new(agentq::runtime::wiring::read_throttle(&config)),
        auth: Arc::new(agentq::runtime::wiring::auth_cache(&config)),
        settings: config.stream,
    };
    lambda_http::run_with_streaming_response(service_fn(|req| {
        let (app, telemetry) = (&app, &telemetry);
        // The invocation's span covers opening the stream; the events then flow on their own.
        async move { Ok::<_, std::convert::Infallible>(telemetry.invocation(stream::handle(app, req)).await) }
    }))
    .await
}
