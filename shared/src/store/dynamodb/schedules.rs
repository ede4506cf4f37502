//! Schedules (`TENANT#<t>` / `SCHEDULE#<id>`): the record as JSON text, a version that every
//! write checks and bumps, and while active the open index's `SCHEDULES` partition keyed by
//! the next tick, which is how the dispatcher finds the due ones in one query.

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, Select};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{DynamoStore, OPEN_INDEX, from_item, item, millis, n, query_all, s, sdk_error, tenant_key, unavailable};
use crate::domain::schedule::{ScheduleRecord, ScheduleState};
use crate::store::{ScheduleStore, StoreError};

/// The open index's partition of active schedules.
const DUE: &str = "SCHEDULES";

fn schedule_key(id: &str) -> String {
    format!("SCHEDULE#{id}")
}

#[derive(Serialize, Deserialize)]
struct ScheduleItem {
    pk: String,
    sk: String,
    tenant_id: String,
    data: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due_at: Option<i64>,
}

impl ScheduleItem {
    fn of(schedule: &ScheduleRecord, version: u64) -> Result<Self, StoreError> {
        let next = schedule.next_run_at.filter(|_| schedule.state == ScheduleState::Active);
        let stored = ScheduleRecord { version, ..schedule.clone() };
        Ok(Self {
            pk: tenant_key(&schedule.tenant_id),
            sk: schedule_key(&schedule.schedule_id),
            tenant_id: schedule.tenant_id.clone(),
            data: serde_json::to_string(&stored).context("serializing a schedule").map_err(unavailable)?,
            version,
            open_pk: next.map(|_| DUE.to_owned()),
            due_at: next.map(millis),
        })
    }

    fn record(self) -> Result<ScheduleRecord, StoreError> {
        let mut record: ScheduleRecord =
            serde_json::from_str(&self.data).context("a stored schedule").map_err(unavailable)?;
        record.version = self.version;
        Ok(record)
    }
}

#[async_trait]
impl ScheduleStore for DynamoStore {
    async fn create_schedule(&self, schedule: &ScheduleRecord, max: usize) -> Result<bool, StoreError> {
        let count = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :sch)")
            .expression_attribute_values(":pk", s(tenant_key(&schedule.tenant_id)))
            .expression_attribute_values(":sch", s("SCHEDULE#"))
            .select(Select::Count)
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?
            .count as usize;
        if count >= max {
            return Ok(false);
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(&ScheduleItem::of(schedule, 1)?)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(true)
    }

    async fn schedule(&self, tenant: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let found = self.get_item(tenant_key(tenant), &schedule_key(id)).await?;
        found.map(|i| from_item::<ScheduleItem>(i)?.record()).transpose()
    }

    async fn schedules(&self, tenant: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
        let items = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :sch)")
                .expression_attribute_values(":pk", s(tenant_key(tenant)))
                .expression_attribute_values(":sch", s("SCHEDULE#")),
        )
        .await?;
        items.into_iter().map(|i| from_item::<ScheduleItem>(i)?.record()).collect()
    }

    async fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(&ScheduleItem::of(schedule, schedule.version + 1)?)?))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", n(schedule.version))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    async fn delete_schedule(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(tenant_key(tenant)))
            .key("sk", s(schedule_key(id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem", e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_INDEX)
            .key_condition_expression("open_pk = :p AND due_at <= :now")
            .expression_attribute_values(":p", s(DUE))
            .expression_attribute_values(":now", n(millis(now)))
            .limit(limit as i32)
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        Ok(out
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| {
                let text = |k: &str| match i.get(k) {
                    Some(AttributeValue::S(v)) => Some(v.clone()),
                    _ => None,
                };
                Some((text("tenant_id")?, text("sk")?.strip_prefix("SCHEDULE#")?.to_owned()))
            })
            .collect())
    }
}
