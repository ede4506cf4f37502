//! Circuit state shared by every instance (`BREAKER#<model>` / `META`): until when a model's
//! circuit is open, written by the instance that opened it, expiring an hour after.

use async_trait::async_trait;

use super::{DynamoStore, META, n, number, s};
use crate::llm::BreakerBoard;

fn breaker_key(model: &str) -> String {
    format!("BREAKER#{model}")
}

#[async_trait]
impl BreakerBoard for DynamoStore {
    async fn open_until(&self, model: &str) -> anyhow::Result<Option<i64>> {
        // A second's staleness is fine here: eventually consistent, half the read's price.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(breaker_key(model)))
            .key("sk", s(META))
            .send()
            .await?;
        Ok(number(out.item.as_ref(), "open_until_ms"))
    }

    async fn open(&self, model: &str, until_ms: i64) -> anyhow::Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(breaker_key(model)))
            .item("sk", s(META))
            .item("open_until_ms", n(until_ms))
            .item("expires_at", n(until_ms / 1000 + 3600))
            .send()
            .await?;
        Ok(())
    }
}
