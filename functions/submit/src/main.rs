//! Lambda entry point for the submit function: build the clients once, then serve.

use std::sync::Arc;

use lambda_http::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = agentq::observe::telemetry::traces::init();
    let config = agentq::runtime::config::Config::from_env()?;
    let sdk = agentq::runtime::aws::sdk_config(&config.aws_timeouts).await;
    let allowed = agentq::domain::task::Allowed {
        models: agentq::runtime::wiring::model_ids(&config),
        tools: agentq::runtime::wiring::tool_names(&config)?,
    };
    let app = submit::App {
        store: Arc::new(agentq::runtime::wiring::store(&config, &sdk)),
        queue: Arc::new(agentq::runtime::wiring::queue(&config, &sdk)?),
        model_configured: reqwest::Url::parse(&config.model.base_url).is_ok_and(|u| u.scheme().starts_with("http")),
        allowed,
    };
    lambda_http::run(service_fn(|req| {
        let (app, telemetry) = (&app, &telemetry);
        async move { Ok::<_, std::convert::Infallible>(telemetry.invocation(submit::handle(app, req)).await) }
    }))
    .await
}
