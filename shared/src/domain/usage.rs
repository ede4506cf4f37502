//! Token usage and its cost.
//!
//! Cost is kept as an integer count of nano-dollars so that summing many calls never drifts:
//! every list price in USD per million tokens is a whole number of nano-dollars per token
//! (e.g. $0.30/MTok = 300 n$/token), so each call's cost is exact and sums are exact.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

/// Tokens used and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Cost in nano-dollars (1e-9 USD).
    #[serde(default)]
    pub cost_nanos: u64,
}

impl Usage {
    pub fn cost_usd(&self) -> f64 {
        self.cost_nanos as f64 / 1e9
    }

    /// What this total holds beyond `counted`, field by field (never below zero): the part of
    /// a task's usage its tenant's counters have not seen yet.
    pub fn since(&self, counted: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_sub(counted.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(counted.output_tokens),
            cache_read_input_tokens: self.cache_read_input_tokens.saturating_sub(counted.cache_read_input_tokens),
            cache_creation_input_tokens: self
                .cache_creation_input_tokens
                .saturating_sub(counted.cache_creation_input_tokens),
            cost_nanos: self.cost_nanos.saturating_sub(counted.cost_nanos),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_input_tokens += o.cache_read_input_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
        self.cost_nanos += o.cost_nanos;
    }
}

/// List prices of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl Price {
    const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Self {
        Self { input, output, cache_write, cache_read }
    }

    /// The cost of `usage`'s tokens at this price, in nano-dollars.
    pub fn cost_nanos(&self, usage: &Usage) -> u64 {
        // USD per MTok × 1000 = nano-dollars per token; rounding absorbs float noise
        // (0.3 × 1000 = 300.00000000000006).
        let per_token = |usd_per_mtok: f64| (usd_per_mtok * 1000.0).round() as u64;
        usage.input_tokens * per_token(self.input)
            + usage.output_tokens * per_token(self.output)
            + usage.cache_creation_input_tokens * per_token(self.cache_write)
            + usage.cache_read_input_tokens * per_token(self.cache_read)
    }
}

/// Prices by model id. A dated id (`claude-sonnet-4-5-20250929`) takes the price of the
/// longest listed id it starts with; a Bedrock id (`us.anthropic.claude-haiku-4-5-…-v1:0`) is
/// matched without its region and vendor prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable(BTreeMap<String, Price>);

impl Default for PriceTable {
    /// Anthropic list prices (standard tier, 5-minute cache writes).
    fn default() -> Self {
        let table = [
            ("claude-opus-4-5", Price::new(5.0, 25.0, 6.25, 0.50)),
            ("claude-opus-4-1", Price::new(15.0, 75.0, 18.75, 1.50)),
            ("claude-opus-4", Price::new(15.0, 75.0, 18.75, 1.50)),
            ("claude-sonnet-4-5", Price::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-sonnet-4", Price::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-3-7-sonnet", Price::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-haiku-4-5", Price::new(1.0, 5.0, 1.25, 0.10)),
            ("claude-3-5-haiku", Price::new(0.80, 4.0, 1.0, 0.08)),
            ("claude-3-haiku", Price::new(0.25, 1.25, 0.30, 0.03)),
            // OpenAI bills cached input at a discount and has no cache-write charge.
            ("gpt-4o", Price::new(2.50, 10.0, 0.0, 1.25)),
            ("gpt-4o-mini", Price::new(0.15, 0.60, 0.0, 0.075)),
            ("gpt-4.1", Price::new(2.0, 8.0, 0.0, 0.50)),
            ("gpt-4.1-mini", Price::new(0.40, 1.60, 0.0, 0.10)),
            ("gpt-4.1-nano", Price::new(0.10, 0.40, 0.0, 0.025)),
        ];
        Self(table.into_iter().map(|(m, p)| (m.to_owned(), p)).collect())
    }
}

impl PriceTable {
    /// The defaults with `overrides` (a JSON object of model → price) laid over them.
    pub fn with_overrides(overrides: &str) -> Result<Self, serde_json::Error> {
        let extra: BTreeMap<String, Price> = serde_json::from_str(overrides)?;
        let mut table = Self::default();
        table.0.extend(extra);
        Ok(table)
    }

    pub fn price(&self, model: &str) -> Option<&Price> {
        let lookup = |name: &str| {
            self.0.get(name).or_else(|| {
                self.0
                    .iter()
                    .filter(|(id, _)| name.starts_with(id.as_str()))
                    .max_by_key(|(id, _)| id.len())
                    .map(|(_, p)| p)
            })
        };
        lookup(model).or_else(|| {
            let mut bare = model;
            for prefix in ["global.", "us.", "eu.", "apac.", "us-gov."] {
                bare = bare.strip_prefix(prefix).unwrap_or(bare);
            }
            let bare = bare.split_once('.').map_or(bare, |(_, rest)| rest);
            (bare != model).then(|| lookup(bare)).flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: read,
            cache_creation_input_tokens: write,
            cost_nanos: 0,
        }
    }

    #[test]
    fn sonnet_cost_matches_the_list_price_exactly() {
        let p = PriceTable::default();
        let price = p.price("claude-sonnet-4-5").unwrap();
        // 1M input at $3 + 1M output at $15 + 1M cache read at $0.30 + 1M write at $3.75.
        let nanos = price.cost_nanos(&tokens(1_000_000, 1_000_000, 1_000_000, 1_000_000));
        assert_eq!(nanos, 22_050_000_000);
        assert_eq!(price.cost_nanos(&tokens(1, 0, 0, 0)), 3_000);
    }

    #[test]
    fn a_dated_model_id_takes_its_family_price() {
        let p = PriceTable::default();
        assert_eq!(p.price("claude-sonnet-4-5-20250929"), p.price("claude-sonnet-4-5"));
        assert_eq!(p.price("claude-opus-4-1-20250805"), p.price("claude-opus-4-1"));
        assert!(p.price("gpt-unknown").is_none());
        assert_eq!(p.price("us.anthropic.claude-haiku-4-5-20251001-v1:0"), p.price("claude-haiku-4-5"));
        assert_eq!(p.price("anthropic.claude-3-haiku-20240307-v1:0"), p.price("claude-3-haiku"));
        assert_eq!(p.price("gpt-4o-mini-2024-07-18"), p.price("gpt-4o-mini"));
    }

    #[test]
    fn overrides_replace_and_extend_the_defaults() {
        let p = PriceTable::with_overrides(
            r#"{"claude-sonnet-4-5":{"input":1,"output":2,"cache_write":3,"cache_read":4},
                "local-llama":{"input":0,"output":0,"cache_write":0,"cache_read":0}}"#,
        )
        .unwrap();
        assert_eq!(p.price("claude-sonnet-4-5").unwrap().input, 1.0);
        assert!(p.price("local-llama").is_some());
        assert!(p.price("claude-haiku-4-5").is_some());
    }

    #[test]
    fn usage_since_a_count_is_what_the_count_has_not_seen() {
        let mut total = tokens(10, 5, 0, 2);
        total.cost_nanos = 100;
        let mut counted = tokens(4, 5, 0, 3);
        counted.cost_nanos = 60;
        let mut delta = tokens(6, 0, 0, 0);
        delta.cost_nanos = 40;
        assert_eq!(total.since(&counted), delta);
        assert_eq!(total.since(&total), Usage::default());
    }

    #[test]
    fn usage_adds_field_by_field() {
        let mut a = tokens(1, 2, 3, 4);
        a.cost_nanos = 10;
        a += a;
        assert_eq!(
            a,
            Usage {
                input_tokens: 2,
                output_tokens: 4,
                cache_read_input_tokens: 6,
                cache_creation_input_tokens: 8,
                cost_nanos: 20
            }
        );
    }
}
