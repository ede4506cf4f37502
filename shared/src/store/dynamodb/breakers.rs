//! Circuit state shared by every instance (`BREAKER#<model>` / `META`): until when a model's
//! circuit is open and until when the provider holds calls (its last 429's `Retry-After`),
//! each written by the instance that found it, the item expiring an hour after.

use async_trait::async_trait;

use super::{DynamoStore, META, n, number, s};
use crate::llm::{BreakerBoard, SharedCircuit};

fn breaker_key(model: &str) -> String {
    format!("BREAKER#{model}")
}

#[async_trait]
impl BreakerBoard for DynamoStore {
    async fn shared(&self, model: &str) -> anyhow::Result<SharedCircuit> {
        // A second's staleness is fine here: eventually consistent, half the read's price.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(breaker_key(model)))
            .key("sk", s(META))
            .send()
            .await?;
        Ok(SharedCircuit {
            open_until_ms: number(out.item.as_ref(), "open_until_ms"),
            throttled_until_ms: number(out.item.as_ref(), "throttled_until_ms"),
        })
    }

    async fn open(&self, model: &str, until_ms: i64) -> anyhow::Result<()> {
        self.set(model, "open_until_ms", until_ms).await
    }

    async fn throttle(&self, model: &str, until_ms: i64) -> anyhow::Result<()> {
        self.set(model, "throttled_until_ms", until_ms).await
    }
}

impl DynamoStore {
    /// Sets one of the model's times, leaving the other as it is.
    async fn set(&self, model: &str, attribute: &str, until_ms: i64) -> anyhow::Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(breaker_key(model)))
            .key("sk", s(META))
            .update_expression("SET #at = :until, expires_at = :expires")
            .expression_attribute_names("#at", attribute)
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":expires", n(until_ms / 1000 + 3600))
            .send()
            .await?;
        Ok(())
    }
}
