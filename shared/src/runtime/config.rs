//! Configuration, read once at cold start from environment variables (set by template.yaml
//! in AWS and by `make up` locally). Every setting is listed in the README's table.
//!
//! AWS region, keys and endpoints are not here: they are the SDK's standard variables
//! (`AWS_ENDPOINT_URL_<SERVICE>` is how the local emulators are reached), read by
//! `runtime::aws`.

use std::time::Duration;

use crate::domain::secret::Secret;
pub use crate::domain::task::TaskLimits;
use crate::domain::tooldef::{HttpToolSpec, McpServerSpec};
use crate::domain::usage::PriceTable;

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self { var, problem: problem.into() }
    }
}

/// Which API a model is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    OpenAi,
    Bedrock,
}

/// One entry of the model chain: `anthropic:claude-sonnet-4-5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub provider: Provider,
    pub model: String,
}

impl std::str::FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (provider, model) = s.trim().split_once(':').ok_or_else(|| format!("{s:?} is not provider:model"))?;
        let provider = match provider {
            "anthropic" => Provider::Anthropic,
            "openai" => Provider::OpenAi,
            "bedrock" => Provider::Bedrock,
            other => return Err(format!("unknown provider {other:?} (anthropic, openai or bedrock)")),
        };
        if model.is_empty() {
            return Err(format!("{s:?} names no model"));
        }
        Ok(Self { provider, model: model.to_owned() })
    }
}

/// How the worker reaches its models.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The chain, in fallback order.
    pub chain: Vec<ModelSpec>,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub openai_base_url: String,
    pub openai_api_key: Option<Secret>,
    pub max_tokens: u32,
    /// Per-request timeout of one model call.
    pub timeout: Duration,
    /// Attempts per model call, the first included, for transient failures.
    pub max_attempts: u32,
    /// Cap of one backoff wait (before jitter).
    pub max_backoff: Duration,
    /// Mark prompt-cache breakpoints in Anthropic requests (`AGENTQ_PROMPT_CACHING`, on).
    pub prompt_caching: bool,
    /// Consecutive unusable calls that open a model's circuit, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

/// The tools a deployment offers.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    /// Hosts `http_get` may fetch; empty means the tool is not offered.
    pub http_get_hosts: Vec<String>,
    pub http_get_max_bytes: usize,
    pub http_get_timeout: Duration,
    /// Tools served by the operator's HTTP endpoints.
    pub http_tools: Vec<HttpToolSpec>,
    /// Key of the HMAC signature on HTTP tool calls.
    pub signing_secret: Option<Secret>,
    /// HTTP tools may run unsigned (`AGENTQ_ALLOW_UNSIGNED_TOOLS=true`); otherwise a deployment
    /// with HTTP tools and no secret refuses to start.
    pub allow_unsigned: bool,
    /// Remote MCP servers whose tools are offered (`AGENTQ_MCP_SERVERS`).
    pub mcp_servers: Vec<McpServerSpec>,
    /// How long an instance keeps a server's tool list (`AGENTQ_MCP_TOOLS_TTL_SECS`).
    pub mcp_tools_ttl: Duration,
    /// MCP servers on this machine may be reached (the local-only `AGENTQ_WEBHOOKS_ALLOW_LOCAL`).
    pub mcp_allow_local: bool,
    /// Values MCP headers name as `{"secret": KEY}`: the deployment secret's other keys, or
    /// locally the environment variables of those names.
    pub named_secrets: std::collections::BTreeMap<String, Secret>,
}

/// Timeouts of every AWS call, well under the shortest function timeout (the API's 10 s), so
/// a service that accepts a connection and never answers cannot hang a function until Lambda
/// kills it between two writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    pub connect: Duration,
    /// One attempt of a call.
    pub attempt: Duration,
    /// A whole call, its retries included.
    pub operation: Duration,
}

impl AwsTimeouts {
    /// For the command-line tools and the local stack's helpers, which make slow calls
    /// (creating tables, reading whole queues) and have no function timeout to stay under.
    pub const TOOLS: Self =
        Self { connect: Duration::from_secs(5), attempt: Duration::from_secs(60), operation: Duration::from_secs(120) };
}

/// Everything the functions read from their environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub table_name: String,
    /// The default-priority queue.
    pub queue_url: Option<String>,
    pub queue_url_high: Option<String>,
    pub queue_url_low: Option<String>,
    /// The dead-letter queues (the sweeper and `agentq dlq`).
    pub dead_letter_urls: Vec<String>,
    pub model: ModelConfig,
    pub prices: PriceTable,
    /// The task queue's `maxReceiveCount`: the worker's last chance to record an honest
    /// failure before SQS moves the message to the dead-letter queue.
    pub max_receive_count: u32,
    /// Time kept in hand before the Lambda deadline to write the task's state.
    pub deadline_margin: Duration,
    /// How long task records are kept (DynamoDB TTL).
    pub task_retention: Duration,
    /// The bucket for content too large for a DynamoDB item.
    pub bucket: Option<String>,
    /// Path-style S3 addressing (LocalStack needs it).
    pub s3_path_style: bool,
    pub tools: ToolConfig,
    /// Budget of a task that names none, in nano-dollars.
    pub default_max_cost_nanos: Option<u64>,
    /// First and largest wait before a task whose models were all down is tried again.
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    /// What a client reads when every model stayed down through every delivery.
    pub unavailable_message: String,
    /// How long after the invocation's deadline a held message becomes visible again.
    pub visibility_slack: Duration,
    pub aws_timeouts: AwsTimeouts,
    pub task_limits: TaskLimits,
    /// How long an open task may go unchanged before the reconciler looks at it.
    pub reconcile_after: Duration,
    /// A Secrets Manager secret with the model keys and the tool signing secret, read once at
    /// cold start (`wiring::load_secrets`); plain variables serve local runs.
    pub secrets_arn: Option<String>,
    /// How long an instance remembers an authenticated key (the delay before a revocation
    /// takes effect).
    pub auth_cache: Duration,
    /// Reads (status, list, steps, usage) per second and burst, per tenant and instance.
    pub reads_per_sec: f64,
    pub read_burst: u32,
    pub webhooks: WebhookConfig,
    pub stream: StreamConfig,
    pub approval: ApprovalConfig,
}

/// Which tool calls wait for a person, and for how long (docs/approvals.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalConfig {
    /// Tools whose every call needs approval, in every task: `AGENTQ_APPROVAL_TOOLS` and the
    /// HTTP tools configured with `"approval": "always"`.
    pub tools: Vec<String>,
    /// How long a task waits for decisions when it names no timeout; then its pending calls
    /// are rejected.
    pub timeout: Duration,
}

/// How an event stream (`GET /v1/tasks/{id}/stream`) runs (docs/streams.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// How often the task's log is read for new events.
    pub poll: Duration,
    /// The longest a stream stays open; the client then reconnects with `Last-Event-ID`.
    pub max_life: Duration,
    /// A comment line is sent when nothing else has been for this long, so proxies keep the
    /// connection open.
    pub keep_alive: Duration,
}

/// How webhooks are delivered (docs/webhooks.md).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// Receivers on this machine over plain http may be registered (`make up` turns it on;
    /// never in a deployment).
    pub allow_local: bool,
    /// One attempt's time limit.
    pub timeout: Duration,
    /// Attempts and the delays between them.
    pub retry: crate::domain::webhooks::RetrySchedule,
    /// The queue deliveries wait in, and its dead-letter queue.
    pub queue_url: Option<String>,
    pub dead_letter_url: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads settings through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => {
                    v.trim().parse().map_err(|_| ConfigError::new(var, format!("must be a whole number, got {v:?}")))
                }
            }
        };
        let table_name = get("AGENTQ_TABLE").ok_or_else(|| ConfigError::new("AGENTQ_TABLE", "is not set"))?;
        let prices = match get("AGENTQ_PRICES") {
            None => PriceTable::default(),
            Some(json) => PriceTable::with_overrides(&json)
                .map_err(|e| ConfigError::new("AGENTQ_PRICES", format!("is not a valid price table: {e}")))?,
        };
        let chain_text = get("AGENTQ_MODELS").unwrap_or_else(|| {
            format!("anthropic:{}", get("AGENTQ_MODEL").unwrap_or_else(|| "claude-sonnet-4-5".into()))
        });
        let chain = chain_text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse::<ModelSpec>().map_err(|e| ConfigError::new("AGENTQ_MODELS", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if chain.is_empty() {
            return Err(ConfigError::new("AGENTQ_MODELS", "names no model"));
        }
        let usd = |var: &'static str| -> Result<Option<u64>, ConfigError> {
            get(var)
                .map(|v| match v.trim().parse::<f64>() {
                    Ok(x) if x > 0.0 && x.is_finite() => Ok((x * 1e9).round() as u64),
                    _ => Err(ConfigError::new(var, format!("must be a positive number of dollars, got {v:?}"))),
                })
                .transpose()
        };
        let http_tools = match (get("AGENTQ_HTTP_TOOLS"), get("AGENTQ_HTTP_TOOLS_FILE")) {
            (Some(json), _) => serde_json::from_str(&json)
                .map_err(|e| ConfigError::new("AGENTQ_HTTP_TOOLS", format!("is not a valid tool list: {e}")))?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::new("AGENTQ_HTTP_TOOLS_FILE", format!("{path}: {e}")))?;
                serde_json::from_str(&text).map_err(|e| {
                    ConfigError::new("AGENTQ_HTTP_TOOLS_FILE", format!("{path} is not a valid tool list: {e}"))
                })?
            }
            (None, None) => Vec::new(),
        };
        let mcp_servers: Vec<McpServerSpec> = match get("AGENTQ_MCP_SERVERS") {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| ConfigError::new("AGENTQ_MCP_SERVERS", format!("is not a valid server list: {e}")))?,
            None => Vec::new(),
        };
        let mut named_secrets = std::collections::BTreeMap::new();
        for (i, server) in mcp_servers.iter().enumerate() {
            server.check().map_err(|m| ConfigError::new("AGENTQ_MCP_SERVERS", m))?;
            if mcp_servers[..i].iter().any(|s| s.name == server.name) {
                return Err(ConfigError::new("AGENTQ_MCP_SERVERS", format!("server {} is listed twice", server.name)));
            }
            for source in server.headers.values() {
                if let crate::domain::tooldef::HeaderSource::Secret { secret } = source
                    && let Some(value) = get(secret)
                {
                    named_secrets.insert(secret.clone(), Secret::new(value));
                }
            }
        }
        let mut approval_tools: Vec<String> = get("AGENTQ_APPROVAL_TOOLS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        approval_tools.extend(
            http_tools
                .iter()
                .filter(|t: &&HttpToolSpec| t.approval == crate::domain::tooldef::Approval::Always)
                .map(|t| t.name.clone()),
        );
        let approval = ApprovalConfig {
            tools: approval_tools,
            timeout: Duration::from_secs(
                number("AGENTQ_APPROVAL_TIMEOUT_SECS", 86_400)?
                    .clamp(crate::domain::approval::MIN_TIMEOUT_SECS, crate::domain::approval::MAX_TIMEOUT_SECS),
            ),
        };
        let tools = ToolConfig {
            http_get_hosts: get("AGENTQ_HTTP_GET_ALLOWED_HOSTS")
                .map(|h| h.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            http_get_max_bytes: number("AGENTQ_HTTP_GET_MAX_BYTES", 1024 * 1024)? as usize,
            http_get_timeout: Duration::from_secs(number("AGENTQ_HTTP_GET_TIMEOUT_SECS", 10)?),
            http_tools,
            signing_secret: get("AGENTQ_TOOL_SIGNING_SECRET").map(Secret::new),
            allow_unsigned: get("AGENTQ_ALLOW_UNSIGNED_TOOLS").is_some_and(|v| v == "true" || v == "1"),
            mcp_servers,
            mcp_tools_ttl: Duration::from_secs(number("AGENTQ_MCP_TOOLS_TTL_SECS", 300)?),
            mcp_allow_local: get("AGENTQ_WEBHOOKS_ALLOW_LOCAL").is_some_and(|v| v == "true" || v == "1"),
            named_secrets,
        };

        let model = ModelConfig {
            chain,
            base_url: get("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
            api_key: get("ANTHROPIC_API_KEY").map(Secret::new),
            openai_base_url: get("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            openai_api_key: get("OPENAI_API_KEY").map(Secret::new),
            max_tokens: u32::try_from(number("AGENTQ_MAX_TOKENS", 4096)?)
                .map_err(|_| ConfigError::new("AGENTQ_MAX_TOKENS", "is too large"))?,
            timeout: Duration::from_secs(number("AGENTQ_MODEL_TIMEOUT_SECS", 120)?),
            max_attempts: number("AGENTQ_MODEL_MAX_ATTEMPTS", 4)?.clamp(1, 20) as u32,
            max_backoff: Duration::from_secs(number("AGENTQ_MODEL_MAX_BACKOFF_SECS", 20)?),
            prompt_caching: get("AGENTQ_PROMPT_CACHING").is_none_or(|v| v != "false" && v != "0"),
            breaker_threshold: number("AGENTQ_BREAKER_THRESHOLD", 5)?.max(1) as u32,
            breaker_cooldown: Duration::from_secs(number("AGENTQ_BREAKER_COOLDOWN_SECS", 30)?),
        };
        // Cost must be known to the cent: a model without a price is a deployment error.
        if let Some(m) = model.chain.iter().find(|m| prices.price(&m.model).is_none()) {
            return Err(ConfigError::new(
                "AGENTQ_MODELS",
                format!("names {:?}, which has no price: add it to AGENTQ_PRICES", m.model),
            ));
        }
        Ok(Self {
            table_name,
            queue_url: get("AGENTQ_QUEUE_URL"),
            queue_url_high: get("AGENTQ_QUEUE_URL_HIGH"),
            queue_url_low: get("AGENTQ_QUEUE_URL_LOW"),
            dead_letter_urls: get("AGENTQ_DLQ_URLS")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            model,
            prices,
            max_receive_count: number("AGENTQ_MAX_RECEIVE_COUNT", 5)?.max(1) as u32,
            deadline_margin: Duration::from_secs(number("AGENTQ_DEADLINE_MARGIN_SECS", 10)?),
            task_retention: Duration::from_secs(number("AGENTQ_TASK_RETENTION_DAYS", 30)? * 86_400),
            bucket: get("AGENTQ_BUCKET"),
            s3_path_style: get("AGENTQ_S3_PATH_STYLE").is_some_and(|v| v == "true" || v == "1"),
            tools,
            default_max_cost_nanos: usd("AGENTQ_DEFAULT_MAX_COST_USD")?,
            retry_delay: Duration::from_secs(number("AGENTQ_RETRY_DELAY_SECS", 30)?),
            retry_max_delay: Duration::from_secs(number("AGENTQ_RETRY_MAX_DELAY_SECS", 900)?.min(43_200)),
            visibility_slack: Duration::from_secs(number("AGENTQ_VISIBILITY_SLACK_SECS", 30)?),
            unavailable_message: get("AGENTQ_UNAVAILABLE_MESSAGE").unwrap_or_else(|| {
                "The AI models are unavailable right now. Please submit the task again later.".into()
            }),
            aws_timeouts: AwsTimeouts {
                connect: Duration::from_millis(number("AGENTQ_AWS_CONNECT_TIMEOUT_MS", 1_000)?.max(1)),
                attempt: Duration::from_millis(number("AGENTQ_AWS_ATTEMPT_TIMEOUT_MS", 2_500)?.max(1)),
                operation: Duration::from_millis(number("AGENTQ_AWS_OPERATION_TIMEOUT_MS", 5_000)?.max(1)),
            },
            task_limits: TaskLimits {
                max_attempts: number("AGENTQ_MAX_TASK_ATTEMPTS", 100)?.clamp(1, u64::from(u32::MAX)) as u32,
                max_run: Duration::from_secs(number("AGENTQ_MAX_TASK_RUN_SECS", 6 * 3600)?.max(1)),
                max_queued: Duration::from_secs(number("AGENTQ_MAX_QUEUED_SECS", 4 * 86_400)?.max(1)),
                max_tool_calls_per_step: number("AGENTQ_MAX_TOOL_CALLS_PER_STEP", 16)?.max(1) as usize,
                max_tool_output_bytes: number("AGENTQ_MAX_TOOL_OUTPUT_BYTES", 4 * 1024 * 1024)?.max(1) as usize,
            },
            reconcile_after: Duration::from_secs(number("AGENTQ_RECONCILE_AFTER_SECS", 900)?.max(1)),
            secrets_arn: get("AGENTQ_SECRETS_ARN"),
            auth_cache: Duration::from_secs(number("AGENTQ_AUTH_CACHE_SECS", 5)?.min(60)),
            reads_per_sec: number("AGENTQ_READS_PER_SEC", 20)?.max(1) as f64,
            read_burst: number("AGENTQ_READ_BURST", 40)?.clamp(1, u64::from(u32::MAX)) as u32,
            webhooks: WebhookConfig {
                allow_local: get("AGENTQ_WEBHOOKS_ALLOW_LOCAL").is_some_and(|v| v == "true" || v == "1"),
                timeout: Duration::from_secs(number("AGENTQ_WEBHOOK_TIMEOUT_SECS", 10)?.clamp(1, 30)),
                retry: crate::domain::webhooks::RetrySchedule {
                    max_attempts: number("AGENTQ_WEBHOOK_MAX_ATTEMPTS", 12)?.clamp(1, 1000) as u32,
                    scale_percent: number("AGENTQ_WEBHOOK_RETRY_SCALE_PERCENT", 100)?.clamp(1, 100) as u32,
                },
                queue_url: get("AGENTQ_WEBHOOK_QUEUE_URL"),
                dead_letter_url: get("AGENTQ_WEBHOOK_DLQ_URL"),
            },
            stream: StreamConfig {
                poll: Duration::from_millis(number("AGENTQ_STREAM_POLL_MS", 500)?.clamp(50, 10_000)),
                max_life: Duration::from_secs(number("AGENTQ_STREAM_MAX_SECS", 300)?.clamp(1, 900)),
                keep_alive: Duration::from_secs(15),
            },
            approval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_table_is_required_and_everything_else_has_a_default() {
        assert_eq!(config(&[]).unwrap_err().var, "AGENTQ_TABLE");
        let c = config(&[("AGENTQ_TABLE", "t")]).unwrap();
        assert_eq!(c.model.base_url, "https://api.anthropic.com");
        assert_eq!(c.model.chain, [ModelSpec { provider: Provider::Anthropic, model: "claude-sonnet-4-5".into() }]);
        assert_eq!(c.max_receive_count, 5);
        assert!(c.queue_url.is_none());
    }

    #[test]
    fn a_malformed_number_names_its_variable() {
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MAX_TOKENS", "lots")]).unwrap_err();
        assert_eq!(e.var, "AGENTQ_MAX_TOKENS");
    }

    #[test]
    fn the_model_chain_is_read_in_order() {
        let c = config(&[
            ("AGENTQ_TABLE", "t"),
            (
                "AGENTQ_MODELS",
                "anthropic:claude-sonnet-4-5, openai:gpt-4o-mini,bedrock:anthropic.claude-haiku-4-5-20251001-v1:0",
            ),
        ])
        .unwrap();
        let providers: Vec<_> = c.model.chain.iter().map(|m| m.provider).collect();
        assert_eq!(providers, [Provider::Anthropic, Provider::OpenAi, Provider::Bedrock]);
        assert_eq!(c.model.chain[2].model, "anthropic.claude-haiku-4-5-20251001-v1:0");
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MODELS", "azure:gpt")]).unwrap_err();
        assert!(e.problem.contains("unknown provider"), "{e}");
    }

    #[test]
    fn http_tools_and_budgets_are_read() {
        let c = config(&[
            ("AGENTQ_TABLE", "t"),
            ("AGENTQ_TOOL_SIGNING_SECRET", "s"),
            ("AGENTQ_DEFAULT_MAX_COST_USD", "0.50"),
            ("AGENTQ_HTTP_GET_ALLOWED_HOSTS", "example.com, *.docs.rs"),
            (
                "AGENTQ_HTTP_TOOLS",
                r#"[{"name":"lookup","description":"d","input_schema":{"type":"object"},"url":"https://x/y"}]"#,
            ),
        ])
        .unwrap();
        assert_eq!(c.default_max_cost_nanos, Some(500_000_000));
        assert_eq!(c.tools.http_get_hosts, ["example.com", "*.docs.rs"]);
        assert_eq!(c.tools.http_tools[0].name, "lookup");
        assert_eq!(c.tools.http_tools[0].timeout_secs, 30);
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_HTTP_TOOLS", "[{}]")]).unwrap_err();
        assert_eq!(e.var, "AGENTQ_HTTP_TOOLS");
    }

    #[test]
    fn mcp_servers_are_read_checked_and_their_named_secrets_taken_from_the_environment() {
        let servers = r#"[{"name": "gh", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": {"secret": "GH_TOKEN"}}}]"#;
        let c = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MCP_SERVERS", servers), ("GH_TOKEN", "Bearer ghp")]).unwrap();
        assert_eq!(c.tools.mcp_servers[0].name, "gh");
        assert_eq!(c.tools.named_secrets["GH_TOKEN"].expose(), "Bearer ghp");
        assert_eq!(c.tools.mcp_tools_ttl, Duration::from_secs(300));
        assert!(!format!("{c:?}").contains("ghp"), "a header's secret never prints");
        let twice = r#"[{"name": "gh", "url": "https://a"}, {"name": "gh", "url": "https://b"}]"#;
        for bad in [twice, r#"[{"name": "a b", "url": "https://a"}]"#, "{}"] {
            let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MCP_SERVERS", bad)]).unwrap_err();
            assert_eq!(e.var, "AGENTQ_MCP_SERVERS", "{bad}");
        }
    }

    #[test]
    fn a_model_without_a_price_is_refused_at_start() {
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MODEL", "mystery-1")]).unwrap_err();
        assert_eq!(e.var, "AGENTQ_MODELS");
        let ok = config(&[
            ("AGENTQ_TABLE", "t"),
            ("AGENTQ_MODEL", "mystery-1"),
            ("AGENTQ_PRICES", r#"{"mystery-1":{"input":1,"output":1,"cache_write":1,"cache_read":1}}"#),
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let c = config(&[("AGENTQ_TABLE", "t"), ("ANTHROPIC_API_KEY", "sk-very-secret")]).unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
