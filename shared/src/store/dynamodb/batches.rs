//! Batches (`BATCH#<id>` / `META`, expiring with the tasks), their idempotency keys (the
//! tasks' `IDEM#` items, with a `batch_id`), many tasks admitted in a few transactions, and
//! the rate limit taken for many requests at once.

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    COUNTERS, DynamoStore, Expr, META, TaskItem, TransactError, contention_pause, from_item, idem_key, item, millis, n,
    number, s, sdk_error, task_key, tenant_key, unavailable,
};
use crate::domain::batch::BatchRecord;
use crate::domain::task::{TaskId, TaskRecord, TaskStatus};
use crate::store::{AdmittedMany, BatchKey, BatchStore, IDEMPOTENCY_WINDOW, Idempotency, StoreError};

/// Tasks per transaction (one write each: a task's first event is derived from its item),
/// well within DynamoDB's 100 actions and 4 MB.
const ADMIT_CHUNK: usize = 25;

/// Reads of the count before a batch gives up taking slots (it moved under each one).
const TAKE_ATTEMPTS: u32 = 8;

fn batch_key(id: &str) -> String {
    format!("BATCH#{id}")
}

#[derive(Serialize, Deserialize)]
struct BatchItem {
    pk: String,
    sk: String,
    tenant_id: String,
    /// The record as JSON text (a thousand items are one attribute).
    data: String,
    expires_at: i64,
}

impl DynamoStore {
    /// Takes up to `want` of the tenant's running slots at once, as many as are free, with
    /// one conditional update of its count; how many it took (0: at the cap).
    ///
    /// Like a single submit's slot, apart from the transaction that stores the tasks: every
    /// submit of the tenant moves that count with plain updates, and a transaction holding
    /// it would be cancelled by them (`TransactionConflict`) until it gave up.
    async fn take_slots(
        &self,
        tenant: &str,
        max_running: u32,
        want: usize,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        for attempt in 0..TAKE_ATTEMPTS {
            let active = number(self.get_item(tenant_key(tenant), COUNTERS).await?.as_ref(), "active").unwrap_or(0);
            let k = ((i64::from(max_running) - active).max(0) as usize).min(want);
            if k == 0 {
                return Ok(0);
            }
            let take = Expr::default()
                .add("#active :k")
                .set("#updated_ms = :now_ms")
                .when("attribute_not_exists(#active) OR #active <= :limit")
                .val(":k", n(k))
                .val(":now_ms", n(millis(now)))
                .val(":limit", n(i64::from(max_running) - k as i64))
                .on(&self.table, tenant_key(tenant), COUNTERS)?;
            match self.update_contended(take).await {
                Ok(()) => return Ok(k),
                // The count moved under us (other submits): look again.
                Err(StoreError::Conflict) => tokio::time::sleep(contention_pause(attempt)).await,
                Err(e) => return Err(e),
            }
        }
        Ok(0)
    }

    /// Stores `tasks` (their slots taken) in one transaction. Slots
    /// of tasks not stored are given back; a transaction whose answer was lost is looked up
    /// by its first task (stored: done; unknown: the slots are kept, as for one submit).
    async fn create_many(&self, tasks: &[TaskRecord]) -> Result<(), StoreError> {
        let tenant = &tasks[0].tenant_id;
        let items = match self.new_tasks_writes(tasks).await {
            Ok(items) => items,
            Err(e) => {
                self.give_slots_back(tenant, tasks.len()).await;
                return Err(e);
            }
        };
        let failed = match self.transact(items).await {
            Ok(()) => return Ok(()),
            Err(TransactError::Store(StoreError::Unavailable(e))) => match self.task_item(tasks[0].task_id).await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => StoreError::Unavailable(e),
                Err(_) => return Err(StoreError::Unavailable(e)),
            },
            Err(e) => e.into(),
        };
        self.give_slots_back(tenant, tasks.len()).await;
        Err(failed)
    }

    /// The writes that store `tasks`: each one's item (long prompts are stored first).
    async fn new_tasks_writes(&self, tasks: &[TaskRecord]) -> Result<Vec<TransactWriteItem>, StoreError> {
        // A chunk's at once: at most `ADMIT_CHUNK`.
        let puts = futures::future::try_join_all(tasks.iter().map(|task| self.new_task_put(task))).await?;
        Ok(puts.into_iter().map(|put| TransactWriteItem::builder().put(put).build()).collect())
    }
}

#[async_trait]
impl BatchStore for DynamoStore {
    async fn admit_many(&self, tasks: &[TaskRecord], max_running: u32) -> Result<AdmittedMany, StoreError> {
        let Some(first) = tasks.first() else { return Ok(AdmittedMany { admitted: 0, interrupted: false }) };
        let tenant = first.tenant_id.as_str();
        let mut admitted = 0;
        while admitted < tasks.len() {
            let chunk = &tasks[admitted..];
            let stored = async {
                let k = self.take_slots(tenant, max_running, chunk.len().min(ADMIT_CHUNK), first.created_at).await?;
                if k > 0 {
                    self.create_many(&chunk[..k]).await?;
                }
                Ok::<_, StoreError>(k)
            };
            match stored.await {
                Ok(0) => break,
                Ok(k) => admitted += k,
                Err(e) => {
                    // Tasks already stored are answered as stored (their messages go out): a
                    // 503 for them would have the client submit them twice.
                    if admitted > 0 {
                        tracing::warn!(
                            error = format!("{:#}", anyhow::Error::from(e)),
                            admitted,
                            "a batch stopped part way; the rest is refused"
                        );
                        return Ok(AdmittedMany { admitted, interrupted: true });
                    }
                    return Err(e);
                }
            }
        }
        Ok(AdmittedMany { admitted, interrupted: false })
    }

    async fn reserve_batch_key(
        &self,
        tenant: &str,
        key: Idempotency<'_>,
        batch_id: &str,
        now: OffsetDateTime,
    ) -> Result<BatchKey, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(idem_key(tenant, key.key)))
            .item("sk", s(META))
            .item("batch_id", s(batch_id))
            .item("request_hash", s(key.request_hash))
            .item("expires_at", n((now + IDEMPOTENCY_WINDOW).unix_timestamp()))
            // An expired key is free again even before TTL deletes it.
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(now.unix_timestamp()))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e));
        match put {
            Ok(_) => Ok(BatchKey::Reserved),
            Err(StoreError::Conflict) => Ok(match self.stored_key(tenant, key.key, "batch_id").await? {
                Some((hash, Some(id))) if hash == key.request_hash => BatchKey::Replayed(id),
                _ => BatchKey::KeyReused,
            }),
            Err(e) => Err(e),
        }
    }

    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        let record = BatchItem {
            pk: batch_key(&batch.batch_id),
            sk: META.into(),
            tenant_id: batch.tenant_id.clone(),
            data: serde_json::to_string(batch).context("serializing a batch").map_err(unavailable)?,
            expires_at: (batch.created_at + self.retention).unix_timestamp(),
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item(&record)?))
            .build()
            .context("building a put")
            .map_err(unavailable)?;
        self.client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let Some(found) = self.get_item(batch_key(batch_id), META).await? else { return Ok(None) };
        let stored: BatchItem = from_item(found)?;
        if stored.tenant_id != tenant {
            return Ok(None);
        }
        serde_json::from_str(&stored.data).context("a stored batch").map(Some).map_err(unavailable)
    }

    async fn tasks(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>, StoreError> {
        self.read_many(ids, None).await?.into_iter().map(|i| from_item::<TaskItem>(i).map(|t| t.record)).collect()
    }

    async fn statuses(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskStatus)>, StoreError> {
        let items = self.read_many(ids, Some("pk, #status")).await?;
        Ok(items
            .iter()
            .filter_map(|i| {
                let id = match i.get("pk") {
                    Some(AttributeValue::S(pk)) => pk.strip_prefix("TASK#")?.parse().ok()?,
                    _ => return None,
                };
                let status = match i.get("status") {
                    Some(AttributeValue::S(s)) => serde_json::from_value(serde_json::Value::String(s.clone())).ok()?,
                    _ => return None,
                };
                Some((id, status))
            })
            .collect())
    }
}

impl DynamoStore {
    /// The task items with these ids (those that exist), `projection` of them if given:
    /// BatchGetItem reads at most 100 keys a call, and what it leaves is asked again.
    pub(super) async fn read_many(
        &self,
        ids: &[TaskId],
        projection: Option<&str>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let keys: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|id| HashMap::from([("pk".to_owned(), s(task_key(*id))), ("sk".to_owned(), s(META))]))
                .collect();
            let mut wanted = KeysAndAttributes::builder().set_keys(Some(keys)).consistent_read(true);
            if let Some(p) = projection {
                wanted = wanted.projection_expression(p).expression_attribute_names("#status", "status");
            }
            let mut request = Some(wanted.build().context("building a batch read").map_err(unavailable)?);
            let mut attempt = 0;
            while let Some(keys) = request.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchGetItem", e))?;
                found.extend(out.responses.unwrap_or_default().remove(&self.table).unwrap_or_default());
                request = out.unprocessed_keys.unwrap_or_default().remove(&self.table);
                if request.is_some() {
                    tokio::time::sleep(contention_pause(attempt)).await;
                    attempt += 1;
                }
            }
        }
        Ok(found)
    }
}
