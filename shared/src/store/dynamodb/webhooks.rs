//! Webhook endpoints (`TENANT#<t>` / `WEBHOOK#<id>`) and delivery attempts (`TASK#<id>` /
//! `DLV#<seq>#<target>#<attempt id>`, expiring with the task).

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{DynamoStore, from_item, query_all, s, sdk_error, task_key, tenant_key, unavailable};
use crate::domain::task::TaskId;
use crate::domain::webhooks::{Attempt, Endpoint};
use crate::store::{AttemptPage, StoreError, WebhookStore, attempt_key};

fn endpoint_key(id: &str) -> String {
    format!("WEBHOOK#{id}")
}

#[derive(Serialize, Deserialize)]
struct EndpointItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    endpoint: Endpoint,
}

/// A recorded attempt: the [`Attempt`] as JSON text.
#[derive(Serialize, Deserialize)]
struct AttemptItem {
    pk: String,
    sk: String,
    data: String,
    expires_at: i64,
}

#[async_trait]
impl WebhookStore for DynamoStore {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let record = EndpointItem {
            pk: tenant_key(&endpoint.tenant_id),
            sk: endpoint_key(&endpoint.id),
            endpoint: endpoint.clone(),
        };
        self.put(&record).await
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
        let items = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :wh)")
                .expression_attribute_values(":pk", s(tenant_key(tenant)))
                .expression_attribute_values(":wh", s("WEBHOOK#")),
        )
        .await?;
        let mut endpoints: Vec<Endpoint> =
            items.into_iter().map(|i| from_item::<EndpointItem>(i).map(|e| e.endpoint)).collect::<Result<_, _>>()?;
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(endpoints)
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let found = self.get_item(tenant_key(tenant), &endpoint_key(id)).await?;
        Ok(found.map(from_item::<EndpointItem>).transpose()?.map(|e| e.endpoint))
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(tenant_key(tenant)))
            .key("sk", s(endpoint_key(id)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem", e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    async fn record_attempt(&self, task: TaskId, attempt: &Attempt) -> Result<(), StoreError> {
        let record = AttemptItem {
            pk: task_key(task),
            sk: attempt_key(attempt),
            data: serde_json::to_string(attempt).context("serializing an attempt").map_err(unavailable)?,
            expires_at: (crate::now() + self.retention).unix_timestamp(),
        };
        self.put(&record).await
    }

    async fn attempts(&self, task: TaskId, after: Option<&str>, limit: usize) -> Result<AttemptPage, StoreError> {
        let start: Option<HashMap<_, _>> =
            after.map(|sk| HashMap::from([("pk".to_owned(), s(task_key(task))), ("sk".to_owned(), s(sk))]));
        let out = self
            .under_task(task, "DLV#")
            .set_exclusive_start_key(start)
            // One more than asked tells whether more follow.
            .limit(limit as i32 + 1)
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        let mut attempts = Vec::new();
        for i in out.items.unwrap_or_default().into_iter().take(limit + 1) {
            let item: AttemptItem = from_item(i)?;
            attempts
                .push(serde_json::from_str::<Attempt>(&item.data).context("a stored attempt").map_err(unavailable)?);
        }
        let more = attempts.len() > limit;
        attempts.truncate(limit);
        let next = if more { attempts.last().map(attempt_key) } else { None };
        Ok(AttemptPage { attempts, next })
    }
}
