//! Builds the model chain and the tool registry from configuration, once per cold start.

use std::sync::Arc;

use crate::agent::ToolRegistry;
use crate::agent::tools::{HttpGet, HttpGetPolicy, HttpTool, McpPolicy, McpSource, SchemaError};
use crate::domain::secret::Secret;
use crate::domain::tooldef::{HeaderSource, McpServerSpec};
use crate::llm::{AnthropicModel, BedrockModel, BreakerPolicy, Model, ModelChain, OpenAiModel};
use crate::outbound::Reach;
use crate::queue::QueueUrls;
use crate::runtime::config::{Config, ConfigError, Provider};

/// Reads the secret named by `AGENTQ_SECRETS_ARN` (a JSON object with any of
/// `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `AGENTQ_TOOL_SIGNING_SECRET`) into `config`, once,
/// at cold start. Deployed, the keys live there and never in a function's environment; without
/// the setting (local runs), the plain variables stand.
pub async fn load_secrets(config: &mut Config, sdk: &aws_config::SdkConfig) -> Result<(), ConfigError> {
    let Some(arn) = config.secrets_arn.clone() else { return Ok(()) };
    let fail = |problem: String| ConfigError::new("AGENTQ_SECRETS_ARN", problem);
    let out =
        aws_sdk_secretsmanager::Client::new(sdk).get_secret_value().secret_id(&arn).send().await.map_err(|e| {
            fail(format!("could not be read: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e)))
        })?;
    let text = out.secret_string.ok_or_else(|| fail("holds no secret string".into()))?;
    let values: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).map_err(|_| {
        fail(
            "is not a JSON object of strings (keys ANTHROPIC_API_KEY, OPENAI_API_KEY, AGENTQ_TOOL_SIGNING_SECRET)"
                .into(),
        )
    })?;
    for (name, value) in values {
        let secret = Some(Secret::new(value.clone()));
        match name.as_str() {
            "ANTHROPIC_API_KEY" => config.model.api_key = secret,
            "OPENAI_API_KEY" => config.model.openai_api_key = secret,
            "AGENTQ_TOOL_SIGNING_SECRET" => config.tools.signing_secret = secret,
            // Any other key may be named by an MCP server's header (`{"secret": KEY}`).
            _ => {
                config.tools.named_secrets.insert(name, Secret::new(value));
            }
        }
    }
    Ok(())
}

/// The HTTP client of the model and tool calls, shared so connections are pooled. It never
/// follows a redirect: a model request carries the provider's key, a tool request its
/// signature, and neither may be replayed to wherever a `Location` points.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    crate::net::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The queue of each priority. High and low fall back to the default queue when they have
/// none of their own.
pub fn queue_urls(config: &Config) -> Result<QueueUrls, ConfigError> {
    let default = config.queue_url.clone().ok_or_else(|| ConfigError::new("AGENTQ_QUEUE_URL", "is not set"))?;
    Ok(QueueUrls {
        high: config.queue_url_high.clone().unwrap_or_else(|| default.clone()),
        low: config.queue_url_low.clone().unwrap_or_else(|| default.clone()),
        default,
    })
}

/// The queues tasks are sent to, one per priority.
pub fn queue(config: &Config, sdk: &aws_config::SdkConfig) -> Result<crate::queue::SqsQueue, ConfigError> {
    Ok(crate::queue::SqsQueue::new(crate::runtime::aws::sqs(sdk), queue_urls(config)?))
}

/// Where webhook deliveries may go and how long one may take.
pub fn send_policy(config: &Config) -> crate::outbound::webhook::SendPolicy {
    crate::outbound::webhook::SendPolicy::new(config.webhooks.allow_local, config.webhooks.timeout)
}

/// The queue webhook deliveries wait in.
pub fn delivery_queue(
    config: &Config,
    sdk: &aws_config::SdkConfig,
) -> Result<crate::queue::SqsDeliveryQueue, ConfigError> {
    let url =
        config.webhooks.queue_url.clone().ok_or_else(|| ConfigError::new("AGENTQ_WEBHOOK_QUEUE_URL", "is not set"))?;
    Ok(crate::queue::SqsDeliveryQueue::new(crate::runtime::aws::sqs(sdk), url))
}

/// The task store: the table, and the bucket for large content when one is configured.
pub fn store(config: &Config, sdk: &aws_config::SdkConfig) -> crate::store::DynamoStore {
    let store =
        crate::store::DynamoStore::new(crate::runtime::aws::dynamodb(sdk), &config.table_name, config.task_retention)
            .with_reconcile_after(config.reconcile_after);
    match &config.bucket {
        Some(bucket) => store.with_blobs(Arc::new(crate::store::blobs::S3Blobs::new(
            crate::runtime::aws::s3(sdk, config.s3_path_style),
            bucket,
        ))),
        None => store,
    }
}

/// The chain of `AGENTQ_MODELS`, each model behind its own circuit breaker.
///
/// `http` is shared so connections are pooled; `sdk` is only used for Bedrock.
pub fn model_chain(
    config: &Config,
    http: &reqwest::Client,
    sdk: &aws_config::SdkConfig,
) -> Result<ModelChain, ConfigError> {
    let m = &config.model;
    let bedrock =
        m.chain.iter().any(|s| s.provider == Provider::Bedrock).then(|| aws_sdk_bedrockruntime::Client::new(sdk));
    let models = m
        .chain
        .iter()
        .map(|spec| -> Result<Arc<dyn Model>, ConfigError> {
            Ok(match spec.provider {
                Provider::Anthropic => {
                    let key = m.api_key.clone().ok_or(ConfigError {
                        var: "ANTHROPIC_API_KEY",
                        problem: format!("is not set, and the chain has {}", spec.model),
                    })?;
                    let model =
                        AnthropicModel::new(http.clone(), &m.base_url, key, &spec.model, m.max_tokens, m.timeout);
                    Arc::new(model.with_prompt_caching(m.prompt_caching))
                }
                Provider::OpenAi => Arc::new(OpenAiModel::new(
                    http.clone(),
                    &m.openai_base_url,
                    m.openai_api_key.clone(),
                    &spec.model,
                    m.max_tokens,
                    m.timeout,
                )),
                Provider::Bedrock => {
                    Arc::new(BedrockModel::new(bedrock.clone().expect("built above"), &spec.model, m.max_tokens))
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelChain::new(models, BreakerPolicy { threshold: m.breaker_threshold, cooldown: m.breaker_cooldown }))
}

/// Everything the functions check at cold start that needs no AWS call: the configuration
/// parses, each model of the chain has its key, the tools' schemas compile. `make up` runs it
/// before starting anything, so a broken setting fails in seconds with the function's own
/// words instead of as a gateway that never becomes healthy.
pub fn preflight(config: &Config) -> Result<(), String> {
    let m = &config.model;
    if m.api_key.is_none()
        && let Some(spec) = m.chain.iter().find(|s| s.provider == Provider::Anthropic)
    {
        return Err(format!("configuration: ANTHROPIC_API_KEY is not set, and the chain has {}", spec.model));
    }
    let http = http_client().map_err(|e| e.to_string())?;
    tool_registry(config, &http).map(drop).map_err(|e| e.to_string())
}

/// What a request may choose from: the chain's models and the deployment's tools, named from
/// the configuration alone, the tools not built (a test holds the names equal to those of the
/// tools built), so a function that needs only the names, the scheduler, links no schema
/// validator (BENCHMARKS.md, "Init time and package size"). A tool whose schema does not
/// compile stops the submit and worker functions at start, not this.
pub fn allowed(config: &Config) -> crate::domain::task::Allowed {
    let t = &config.tools;
    let mut tools: Vec<String> = ToolRegistry::BUILTIN.iter().map(|name| name.to_string()).collect();
    if !t.http_get_hosts.is_empty() {
        tools.push(HttpGet::NAME.to_owned());
    }
    tools.extend(t.http_tools.iter().map(|spec| spec.name.clone()));
    crate::domain::task::Allowed { models: model_ids(config), tools, mcp_servers: t.mcp_servers.clone() }
}

/// Whether a model endpoint is configured, so tasks can run (`/ready` reports it).
pub fn model_configured(config: &Config) -> bool {
    reqwest::Url::parse(&config.model.base_url).is_ok_and(|u| u.scheme().starts_with("http"))
}

/// The instance's memory of authenticated callers.
pub fn auth_cache(config: &Config) -> crate::edge::auth::AuthCache {
    crate::edge::auth::AuthCache::new(config.auth_cache)
}

/// Each tenant's read budget on this instance.
pub fn read_throttle(config: &Config) -> crate::edge::throttle::ReadThrottle {
    crate::edge::throttle::ReadThrottle::new(config.reads_per_sec, config.read_burst)
}

/// The model ids a request may name.
pub fn model_ids(config: &Config) -> Vec<String> {
    config.model.chain.iter().map(|m| m.model.clone()).collect()
}

/// The built-ins, `http_get` when hosts are allowed, and the configured HTTP tools. HTTP
/// tools need the signing secret, unless `AGENTQ_ALLOW_UNSIGNED_TOOLS=true`.
pub fn tool_registry(config: &Config, http: &reqwest::Client) -> Result<ToolRegistry, ConfigError> {
    tools(config, http, true)
}

/// The deployment's tools for their names and schemas only, never run: no signing secret is
/// needed, and their HTTP client trusts no certificate (reading the system's roots was a quarter
/// of submit's cold start, BENCHMARKS.md), so the submit path can check a request's tools and
/// a reviewer's edited input.
pub fn tool_schemas(config: &Config) -> Result<ToolRegistry, ConfigError> {
    let never_sends = crate::net::builder()
        .tls_certs_only(Vec::new())
        .build()
        .map_err(|e| ConfigError::new("AGENTQ_HTTP_TOOLS", format!("an HTTP client could not be built: {e}")))?;
    tools(config, &never_sends, false)
}

fn tools(config: &Config, http: &reqwest::Client, signing: bool) -> Result<ToolRegistry, ConfigError> {
    let t = &config.tools;
    if signing && !t.http_tools.is_empty() && t.signing_secret.is_none() && !t.allow_unsigned {
        return Err(ConfigError::new(
            "AGENTQ_TOOL_SIGNING_SECRET",
            "is not set, and AGENTQ_HTTP_TOOLS defines tools: their calls could not be told from a forgery \
             (set the secret, or AGENTQ_ALLOW_UNSIGNED_TOOLS=true to run them unsigned)",
        ));
    }
    let schema = |e: SchemaError| ConfigError::new("AGENTQ_HTTP_TOOLS", e.to_string());
    let mut registry = ToolRegistry::builtin();
    if !t.http_get_hosts.is_empty() {
        let mut policy = HttpGetPolicy::new(t.http_get_hosts.clone());
        policy.max_bytes = t.http_get_max_bytes;
        policy.timeout = t.http_get_timeout;
        registry = registry.with(HttpGet::new(policy)).map_err(schema)?;
    }
    for spec in &t.http_tools {
        registry =
            registry.with(HttpTool::new(spec.clone(), http.clone(), t.signing_secret.clone())).map_err(schema)?;
    }
    let reach = if t.mcp_allow_local { Reach::PublicAndLoopback } else { Reach::Public };
    let policy = McpPolicy { reach, list_ttl: t.mcp_tools_ttl };
    for server in &t.mcp_servers {
        // Only a registry that runs tools needs the headers' secrets.
        let headers = if signing { mcp_headers(server, &t.named_secrets)? } else { Vec::new() };
        registry = registry.with_source(McpSource::new(server.clone(), headers, policy));
    }
    Ok(registry)
}

/// A server's headers with the secrets they name read.
fn mcp_headers(
    server: &McpServerSpec,
    secrets: &std::collections::BTreeMap<String, Secret>,
) -> Result<Vec<(String, Secret)>, ConfigError> {
    server
        .headers
        .iter()
        .map(|(name, source)| match source {
            HeaderSource::Value(v) => Ok((name.clone(), Secret::new(v.clone()))),
            HeaderSource::Secret { secret } => {
                secrets.get(secret).map(|s| (name.clone(), s.clone())).ok_or_else(|| {
                    ConfigError::new(
                        "AGENTQ_MCP_SERVERS",
                        format!(
                            "server {}: header {name} names the secret {secret:?}, which neither the deployment's \
                         secret (AGENTQ_SECRETS_ARN) nor the environment holds",
                            server.name
                        ),
                    )
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_a_request_may_choose_from_are_those_of_the_tools_built() {
        let tools = r#"[{"name":"lookup","description":"d","input_schema":{"type":"object"},"url":"https://x/y"}]"#;
        let servers = r#"[{"name": "gh", "url": "https://mcp.example.com/mcp"}]"#;
        let vars: &[(&str, &str)] = &[
            ("AGENTQ_TABLE", "t"),
            ("AGENTQ_MODELS", "anthropic:claude-sonnet-4-5,openai:gpt-4o"),
            ("AGENTQ_HTTP_TOOLS", tools),
            ("AGENTQ_HTTP_GET_ALLOWED_HOSTS", "example.com"),
            ("AGENTQ_MCP_SERVERS", servers),
        ];
        for n in [1, 3, vars.len()] {
            let config =
                Config::from_lookup(|k| vars[..n].iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string()))
                    .unwrap();
            let built = tool_schemas(&config).unwrap().names();
            assert_eq!(allowed(&config).tools, built, "with the first {n} settings");
        }
        assert_eq!(ToolRegistry::builtin().names(), ToolRegistry::BUILTIN);
    }

    #[test]
    fn http_tools_without_a_signing_secret_refuse_to_start_unless_allowed() {
        let tools = r#"[{"name":"lookup","description":"d","input_schema":{"type":"object"},"url":"https://x/y"}]"#;
        let config = |allow: bool| {
            Config::from_lookup(|k| match k {
                "AGENTQ_TABLE" => Some("t".into()),
                "AGENTQ_HTTP_TOOLS" => Some(tools.into()),
                "AGENTQ_ALLOW_UNSIGNED_TOOLS" => allow.then(|| "true".into()),
                _ => None,
            })
            .unwrap()
        };
        let http = http_client().unwrap();
        let e = tool_registry(&config(false), &http).unwrap_err();
        assert_eq!(e.var, "AGENTQ_TOOL_SIGNING_SECRET");
        assert!(tool_registry(&config(true), &http).unwrap().knows("lookup"));
    }
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn the_model_and_tool_client_never_follows_a_redirect() {
        let server = MockServer::start().await;
        let elsewhere = format!("{}/stolen", server.uri());
        Mock::given(path("/v1/messages"))
            .respond_with(ResponseTemplate::new(307).insert_header("location", elsewhere.as_str()))
            .mount(&server)
            .await;
        let r = http_client()
            .unwrap()
            .post(format!("{}/v1/messages", server.uri()))
            .header("x-api-key", "sk-secret")
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 307);
        let paths: Vec<String> =
            server.received_requests().await.unwrap().iter().map(|r| r.url.path().to_owned()).collect();
        assert_eq!(paths, ["/v1/messages"], "the key went nowhere else");
    }
}
