//! Per-tenant model use per minute (`TENANT#<t>` / `MODELS`): the minute it counts, the calls
//! started and the tokens answered in it. One conditional update counts a call; a new minute
//! starts the counts again, so the item never grows and needs no reset.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use time::OffsetDateTime;

use super::{DynamoStore, Expr, n, tenant_key};
use crate::domain::tenant::Limits;
use crate::store::{Metered, ModelMeter, StoreError, meter_allows, minute_of, minute_start};

const SK: &str = "MODELS";

#[async_trait]
impl ModelMeter for DynamoStore {
    async fn take_model_call(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<Metered, StoreError> {
        let minute = minute_of(now);
        // The same minute, under both limits: one more call.
        let more = Expr::default()
            .add("#calls :one")
            .when("#minute = :minute AND #calls < :max_calls AND #tokens < :max_tokens")
            .val(":one", n(1))
            .val(":minute", n(minute))
            .val(":max_calls", n(limits.requests_per_minute.map_or(i64::MAX, i64::from)))
            .val(":max_tokens", n(limits.tokens_per_minute.map_or(i64::MAX, |t| t.min(i64::MAX as u64) as i64)));
        match self.send_update(more.on(&self.table, tenant_key(tenant), SK)?, ReturnValue::None).await {
            Ok(_) => return Ok(Metered::Go),
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
        // A minute not yet counted: this call is its first.
        let fresh = Expr::default()
            .set("#minute = :minute")
            .set("#calls = :one")
            .set("#tokens = :zero")
            .set("#expires_at = :expires")
            .when("attribute_not_exists(#minute) OR #minute < :minute")
            .val(":one", n(1))
            .val(":zero", n(0))
            .val(":minute", n(minute))
            .val(":expires", n((minute + 60) * 60));
        let first_call = meter_allows(limits, 0, 0);
        match self.send_update(fresh.on(&self.table, tenant_key(tenant), SK)?, ReturnValue::None).await {
            Ok(_) if first_call => Ok(Metered::Go),
            // This minute is counted and full (or a racing call just started it).
            Ok(_) | Err(StoreError::Conflict) => Ok(Metered::WaitUntil(minute_start(minute + 1))),
            Err(e) => Err(e),
        }
    }

    async fn count_model_tokens(&self, tenant: &str, tokens: u64, at: OffsetDateTime) -> Result<(), StoreError> {
        let add = Expr::default()
            .add("#tokens :tokens")
            .when("#minute = :minute")
            .val(":tokens", n(tokens.min(i64::MAX as u64) as i64))
            .val(":minute", n(minute_of(at)));
        match self.send_update(add.on(&self.table, tenant_key(tenant), SK)?, ReturnValue::None).await {
            // The minute is over: its count no longer decides anything.
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
