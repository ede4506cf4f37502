//! Configuration, read once at cold start from environment variables (set by template.yaml
//! in AWS and by `make up` locally). Every setting is listed in the README's table.
//!
//! AWS endpoints are not here: the SDK reads its standard `AWS_ENDPOINT_URL_<SERVICE>`
//! settings itself, which is how the local emulators are reached.

use std::fmt;
use std::time::Duration;

use crate::usage::PriceTable;

/// A value that must never reach a log: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self { var, problem: problem.into() }
    }
}

/// How the worker reaches its model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    pub max_tokens: u32,
    /// Per-request timeout of one model call.
    pub timeout: Duration,
    /// Attempts per model call, the first included, for transient failures.
    pub max_attempts: u32,
    /// Cap of one backoff wait (before jitter).
    pub max_backoff: Duration,
}

/// Everything the functions read from their environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub table_name: String,
    pub queue_url: Option<String>,
    pub model: ModelConfig,
    pub prices: PriceTable,
    /// The task queue's `maxReceiveCount`: the worker's last chance to record an honest
    /// failure before SQS moves the message to the dead-letter queue.
    pub max_receive_count: u32,
    /// Time kept in hand before the Lambda deadline to write the task's state.
    pub deadline_margin: Duration,
    /// How long task records are kept (DynamoDB TTL).
    pub task_retention: Duration,
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
        let model = ModelConfig {
            base_url: get("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
            api_key: get("ANTHROPIC_API_KEY").map(Secret::new),
            model: get("AGENTQ_MODEL").unwrap_or_else(|| "claude-sonnet-4-5".into()),
            max_tokens: u32::try_from(number("AGENTQ_MAX_TOKENS", 4096)?)
                .map_err(|_| ConfigError::new("AGENTQ_MAX_TOKENS", "is too large"))?,
            timeout: Duration::from_secs(number("AGENTQ_MODEL_TIMEOUT_SECS", 120)?),
            max_attempts: number("AGENTQ_MODEL_MAX_ATTEMPTS", 4)?.clamp(1, 20) as u32,
            max_backoff: Duration::from_secs(number("AGENTQ_MODEL_MAX_BACKOFF_SECS", 20)?),
        };
        if prices.price(&model.model).is_none() {
            return Err(ConfigError::new(
                "AGENTQ_MODEL",
                format!("names {:?}, which has no price: add it to AGENTQ_PRICES", model.model),
            ));
        }
        Ok(Self {
            table_name,
            queue_url: get("AGENTQ_QUEUE_URL"),
            model,
            prices,
            max_receive_count: number("AGENTQ_MAX_RECEIVE_COUNT", 5)?.max(1) as u32,
            deadline_margin: Duration::from_secs(number("AGENTQ_DEADLINE_MARGIN_SECS", 10)?),
            task_retention: Duration::from_secs(number("AGENTQ_TASK_RETENTION_DAYS", 30)? * 86_400),
        })
    }

    /// The queue URL, for the functions that send.
    pub fn require_queue_url(&self) -> Result<&str, ConfigError> {
        self.queue_url.as_deref().ok_or_else(|| ConfigError::new("AGENTQ_QUEUE_URL", "is not set"))
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
        assert_eq!(c.model.model, "claude-sonnet-4-5");
        assert_eq!(c.max_receive_count, 5);
        assert!(c.require_queue_url().is_err());
    }

    #[test]
    fn a_malformed_number_names_its_variable() {
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MAX_TOKENS", "lots")]).unwrap_err();
        assert_eq!(e.var, "AGENTQ_MAX_TOKENS");
    }

    #[test]
    fn a_model_without_a_price_is_refused_at_start() {
        let e = config(&[("AGENTQ_TABLE", "t"), ("AGENTQ_MODEL", "mystery-1")]).unwrap_err();
        assert_eq!(e.var, "AGENTQ_MODEL");
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
