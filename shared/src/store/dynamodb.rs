//! The DynamoDB adapter. One table, keys that say what an item is:
//!
//! | pk                 | sk                  | item                                    |
//! |--------------------|---------------------|-----------------------------------------|
//! | `TASK#<id>`        | `META`              | a task (GSI1: `TASKS#<tenant>`, task id) |
//! | `TENANT#<t>`       | `META`              | a tenant and its limits                 |
//! | `TENANT#<t>`       | `ACTIVE`            | tasks queued or running                 |
//! | `TENANT#<t>`       | `BUCKET`            | the rate-limit token bucket             |
//! | `TENANT#<t>`       | `USAGE#<YYYY-MM-DD>`| tasks finished, tokens and cost per day |
//! | `TENANT#<t>`       | `MONTH#<YYYY-MM>`   | cost per month (budgets)                |
//! | `KEY#<sha256>`     | `META`              | an API key (GSI1: `KEYS`, key id)       |
//! | `IDEM#<t>#<key>`   | `META`              | an idempotency key, 24 h                |
//! | `TASK#<id>`        | `STEP#<n>`          | a recorded model answer                 |
//! | `TASK#<id>`        | `STEP#<n>#TOOL#<u>` | a recorded tool result                  |
//!
//! Text longer than [`INLINE_LIMIT`] (a prompt, a result, a step) goes to S3, with a `*_ref`
//! attribute pointing at it.

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Admission, Admitted, Cancelled, Claim, DayUsage, Finish, IDEMPOTENCY_WINDOW, Lease, Page, Progress, RateDecision,
    RateLimiter, StepAck, StoreError, StorePing, TaskCancel, TaskCreate, TaskDeadLetter, TaskRead, TaskRun,
    TenantAdmin, TenantRead, UsageRead, bucket_take, day_of, month_of,
};
use crate::blobs::{Blobs, INLINE_LIMIT};
use crate::steps::{ModelStep, Step, ToolStep};
use crate::task::{TaskError, TaskId, TaskRecord, TaskStatus};
use crate::tenant::{ApiKey, Limits, Tenant};
use crate::usage::Usage;

const META: &str = "META";
const INDEX: &str = "gsi1";

/// Everything in a DynamoDB table (and S3, for what is too large for it).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: std::time::Duration,
    blobs: Option<std::sync::Arc<dyn Blobs>>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore").field("table", &self.table).field("blobs", &self.blobs.is_some()).finish()
    }
}

/// A task record as stored: the record plus the keys, the lease and the TTL.
#[derive(Serialize, Deserialize)]
struct TaskItem {
    pk: String,
    sk: String,
    gsi1pk: String,
    gsi1sk: String,
    #[serde(flatten)]
    record: TaskRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_owner: Option<String>,
    /// Lease expiry, epoch milliseconds, so conditions can compare it with `<`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_until: Option<i64>,
    /// DynamoDB TTL attribute, epoch seconds.
    expires_at: i64,
    /// Where the prompt is when it is too large for the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_ref: Option<String>,
    /// Where the result text is when it is too large for the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_ref: Option<String>,
}

/// A recorded step: the [`Step`] as JSON text, or a pointer to it.
#[derive(Serialize, Deserialize)]
struct StepItem {
    pk: String,
    sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_ref: Option<String>,
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct KeyItem {
    pk: String,
    sk: String,
    gsi1pk: String,
    gsi1sk: String,
    #[serde(flatten)]
    key: ApiKey,
}

#[derive(Serialize, Deserialize)]
struct TenantItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    tenant: Tenant,
}

fn task_key(id: TaskId) -> String {
    format!("TASK#{id}")
}

fn tenant_key(tenant: &str) -> String {
    format!("TENANT#{tenant}")
}

fn idem_key(tenant: &str, key: &str) -> String {
    format!("IDEM#{tenant}#{key}")
}

fn tasks_index(tenant: &str) -> String {
    format!("TASKS#{tenant}")
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn rfc3339(t: OffsetDateTime) -> AttributeValue {
    s(t.format(&time::format_description::well_known::Rfc3339).expect("a UTC time always formats"))
}

fn unavailable(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

fn attr<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v).context("serializing an attribute").map_err(unavailable)
}

fn item<T: Serialize>(v: &T) -> Result<HashMap<String, AttributeValue>, StoreError> {
    serde_dynamo::to_item(v).context("serializing an item").map_err(unavailable)
}

fn from_item<'a, T: Deserialize<'a>>(item: HashMap<String, AttributeValue>) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).context("a stored item does not have the expected shape").map_err(unavailable)
}

/// Maps an SDK error: a failed condition is a [`StoreError::Conflict`], anything else keeps
/// its whole cause chain (the SDK's top line alone says only "service error").
/// Every item a query matches, following its pages.
async fn query_all(query: QueryFluentBuilder) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    query.into_paginator().items().send().try_collect().await.map_err(|e| sdk_error("Query", e))
}

fn sdk_error<E, R>(what: &'static str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if e.code() == Some("ConditionalCheckFailedException") {
        return StoreError::Conflict;
    }
    StoreError::Unavailable(anyhow::anyhow!("{what}: {}", DisplayErrorContext(&e)))
}

/// The `#name` placeholders in an expression.
fn attribute_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split('#').skip(1).map(|rest| {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        &rest[..end]
    })
}

/// An update of one item, as a transaction part. Attribute names are written `#name` in the
/// expressions and resolved here, so no reserved word (`status`, `result`…) bites.
fn update_op(
    table: &str,
    pk: String,
    sk: &str,
    update: &str,
    condition: Option<&str>,
    values: Vec<(&str, AttributeValue)>,
) -> Result<Update, StoreError> {
    let mut u = Update::builder()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .update_expression(update)
        .set_condition_expression(condition.map(str::to_owned))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::None);
    for name in attribute_names(update).chain(condition.into_iter().flat_map(attribute_names)) {
        u = u.expression_attribute_names(format!("#{name}"), name);
    }
    for (k, v) in values {
        u = u.expression_attribute_values(k, v);
    }
    u.build().context("building an update").map_err(unavailable)
}

/// Which parts of a cancelled transaction failed their condition.
fn failed_conditions(
    e: &SdkError<TransactWriteItemsError, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Option<Vec<bool>> {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(ex)) => {
            Some(ex.cancellation_reasons().iter().map(|r| r.code() == Some("ConditionalCheckFailed")).collect())
        }
        _ => None,
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention: std::time::Duration) -> Self {
        Self { client, table: table.into(), retention, blobs: None }
    }

    /// Keeps content too large for an item in `blobs`. Without blobs, such content is refused.
    pub fn with_blobs(mut self, blobs: std::sync::Arc<dyn Blobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Text to store under `key`: inline if small, else in S3, returning the pointer.
    async fn spill(&self, key: String, text: &str) -> Result<Option<String>, StoreError> {
        if text.len() <= INLINE_LIMIT {
            return Ok(None);
        }
        let blobs = self.blobs.as_ref().ok_or_else(|| {
            unavailable(anyhow::anyhow!("{} bytes of content and no bucket configured (AGENTQ_BUCKET)", text.len()))
        })?;
        blobs.put(&key, text.as_bytes().to_vec()).await.map_err(unavailable)?;
        Ok(Some(key))
    }

    async fn unspill(&self, key: &str) -> Result<String, StoreError> {
        let blobs = self
            .blobs
            .as_ref()
            .ok_or_else(|| unavailable(anyhow::anyhow!("content is in {key}, and no bucket is configured")))?;
        let bytes = blobs.get(key).await.map_err(unavailable)?;
        String::from_utf8(bytes).context("stored content is not UTF-8").map_err(unavailable)
    }

    /// The record of an item, with the parts kept in S3 fetched back: the result always, the
    /// prompt when `with_prompt` (only the worker needs it).
    async fn resolve(&self, item: TaskItem, with_prompt: bool) -> Result<TaskRecord, StoreError> {
        let mut record = item.record;
        if let (Some(key), Some(result)) = (&item.result_ref, record.result.as_mut()) {
            result.text = self.unspill(key).await?;
        }
        if let (true, Some(key)) = (with_prompt, &item.prompt_ref) {
            record.prompt = self.unspill(key).await?;
        }
        Ok(record)
    }

    /// Runs one conditional update on a task's record.
    async fn update(
        &self,
        id: TaskId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        returning: ReturnValue,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let u = update_op(&self.table, task_key(id), META, update, Some(condition), values)?;
        let out = self
            .client
            .update_item()
            .table_name(u.table_name)
            .set_key(Some(u.key))
            .update_expression(u.update_expression)
            .set_condition_expression(u.condition_expression)
            .set_expression_attribute_names(u.expression_attribute_names)
            .set_expression_attribute_values(u.expression_attribute_values)
            .return_values(returning)
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem", e))?;
        Ok(out.attributes)
    }

    async fn get_item(&self, pk: String, sk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        Ok(out.item)
    }

    async fn task_item(&self, id: TaskId) -> Result<Option<TaskItem>, StoreError> {
        self.get_item(task_key(id), META).await?.map(from_item).transpose()
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), TransactError> {
        // A transaction that collides with another on the same items is cancelled with
        // `TransactionConflict`: those are retried, failed conditions are not.
        for attempt in 0.. {
            let result = self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let Err(e) = result else { return Ok(()) };
            if let Some(failed) = failed_conditions(&e) {
                if failed.iter().any(|f| *f) {
                    return Err(TransactError::Condition(failed));
                }
                if attempt < 5 {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * (attempt + 1))).await;
                    continue;
                }
            }
            return Err(TransactError::Store(sdk_error("TransactWriteItems", e)));
        }
        unreachable!()
    }

    /// The tenant-counter updates that go with a task reaching `status` at `now`, having
    /// spent `usage`: one fewer active task, and the day's and month's totals.
    fn terminal_counters(
        &self,
        tenant: &str,
        status: TaskStatus,
        usage: &Usage,
        now: OffsetDateTime,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let counter = format!("#{}", status.as_str());
        let active =
            update_op(&self.table, tenant_key(tenant), "ACTIVE", "ADD #active :minus", None, vec![(":minus", n(-1))])?;
        let day = update_op(
            &self.table,
            tenant_key(tenant),
            &format!("USAGE#{}", day_of(now)),
            &format!(
                "SET #date = :date ADD {counter} :one, #input_tokens :i, #output_tokens :o, \
                 #cache_read_input_tokens :cr, #cache_creation_input_tokens :cw, #cost_nanos :c"
            ),
            None,
            vec![
                (":date", s(day_of(now))),
                (":one", n(1)),
                (":i", n(usage.input_tokens)),
                (":o", n(usage.output_tokens)),
                (":cr", n(usage.cache_read_input_tokens)),
                (":cw", n(usage.cache_creation_input_tokens)),
                (":c", n(usage.cost_nanos)),
            ],
        )?;
        let month = update_op(
            &self.table,
            tenant_key(tenant),
            &format!("MONTH#{}", month_of(now)),
            "ADD #cost_nanos :c",
            None,
            vec![(":c", n(usage.cost_nanos))],
        )?;
        Ok([active, day, month].into_iter().map(|u| TransactWriteItem::builder().update(u).build()).collect())
    }

    /// Moves a task to a terminal state with `task_update` (whose condition states when that
    /// is allowed) and the tenant's counters with it, atomically.
    async fn terminal(
        &self,
        task: &TaskRecord,
        task_update: Update,
        status: TaskStatus,
        usage: &Usage,
        now: OffsetDateTime,
        extra: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let mut items = vec![TransactWriteItem::builder().update(task_update).build()];
        items.extend(self.terminal_counters(&task.tenant_id, status, usage, now)?);
        items.extend(extra);
        self.transact(items).await.map_err(|e| match e {
            TransactError::Condition(_) => StoreError::Conflict,
            TransactError::Store(e) => e,
        })
    }

    /// The put of a step item, never over an existing one.
    async fn step_put(&self, id: TaskId, step: &Step) -> Result<Put, StoreError> {
        let sk = step.sort_key();
        let text = serde_json::to_string(step).context("serializing a step").map_err(unavailable)?;
        let data_ref = self.spill(format!("tasks/{id}/{sk}"), &text).await?;
        let item = StepItem {
            pk: task_key(id),
            data: data_ref.is_none().then_some(text),
            data_ref,
            expires_at: (crate::now() + self.retention).unix_timestamp(),
            sk,
        };
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(self::item(&item)?))
            .condition_expression("attribute_not_exists(sk)")
            .build()
            .context("building a put")
            .map_err(unavailable)
    }

    fn finish_update(&self, id: TaskId, lease: &Lease, f: &Finish) -> Result<Update, StoreError> {
        let mut set = "SET #status = :status, #step = :step, #usage = :usage, #usage_by_model = :by_model, \
                       #updated_at = :now"
            .to_owned();
        let mut values = vec![
            (":status", s(f.status.as_str())),
            (":step", n(f.step)),
            (":usage", attr(&f.usage)?),
            (":by_model", attr(&f.usage_by_model)?),
            (":now", rfc3339(f.now)),
            (":running", s(TaskStatus::Running.as_str())),
            (":owner", s(&lease.owner)),
        ];
        if let Some(result) = &f.result {
            set.push_str(", #result = :result");
            values.push((":result", attr(result)?));
        }
        if let Some(error) = &f.error {
            set.push_str(", #error = :error");
            values.push((":error", attr(error)?));
        }
        if let Some(model) = &f.model {
            set.push_str(", #model = :model");
            values.push((":model", s(model)));
        }
        set.push_str(" REMOVE #lease_owner, #lease_until");
        update_op(&self.table, task_key(id), META, &set, Some("#status = :running AND #lease_owner = :owner"), values)
    }
}

enum TransactError {
    /// Which parts' conditions failed.
    Condition(Vec<bool>),
    Store(StoreError),
}

#[async_trait]
impl TaskCreate for DynamoStore {
    async fn admit(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let prompt_ref = self.spill(format!("tasks/{}/prompt", task.task_id), &task.prompt).await?;
        let mut stored = task.clone();
        if prompt_ref.is_some() {
            stored.prompt = String::new();
        }
        let record = TaskItem {
            pk: task_key(task.task_id),
            sk: META.into(),
            gsi1pk: tasks_index(&task.tenant_id),
            gsi1sk: task.task_id.to_string(),
            record: stored,
            lease_owner: None,
            lease_until: None,
            expires_at: (task.created_at + self.retention).unix_timestamp(),
            prompt_ref,
            result_ref: None,
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item(&record)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("building a put")
            .map_err(unavailable)?;
        let active = update_op(
            &self.table,
            tenant_key(&task.tenant_id),
            "ACTIVE",
            "ADD #active :one",
            Some("attribute_not_exists(#active) OR #active < :max"),
            vec![(":one", n(1)), (":max", n(admission.max_running))],
        )?;
        let mut items =
            vec![TransactWriteItem::builder().put(put).build(), TransactWriteItem::builder().update(active).build()];
        if let Some(idem) = admission.idempotency {
            let now = task.created_at.unix_timestamp();
            let expires = (task.created_at + IDEMPOTENCY_WINDOW).unix_timestamp();
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(idem_key(&task.tenant_id, idem.key)))
                .item("sk", s(META))
                .item("task_id", s(task.task_id.to_string()))
                .item("request_hash", s(idem.request_hash))
                .item("expires_at", n(expires))
                // An expired key is free again even before TTL deletes it.
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", n(now))
                .build()
                .context("building a put")
                .map_err(unavailable)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self.transact(items).await {
            Ok(()) => Ok(Admitted::Created),
            Err(TransactError::Store(e)) => Err(e),
            Err(TransactError::Condition(failed)) => {
                if failed.get(2).copied().unwrap_or(false) {
                    let idem = admission.idempotency.expect("a third part exists only with a key");
                    let stored = self.get_item(idem_key(&task.tenant_id, idem.key), META).await?;
                    let field = |name: &str| match stored.as_ref().and_then(|i| i.get(name)) {
                        Some(AttributeValue::S(v)) => Some(v.clone()),
                        _ => None,
                    };
                    return match (field("request_hash"), field("task_id").and_then(|t| t.parse().ok())) {
                        (Some(hash), Some(id)) if hash == idem.request_hash => Ok(Admitted::Replayed(id)),
                        (Some(_), _) => Ok(Admitted::KeyReused),
                        // It expired or vanished between our write and our read: try again.
                        _ => Err(StoreError::Conflict),
                    };
                }
                if failed.get(1).copied().unwrap_or(false) {
                    return Ok(Admitted::ConcurrencyLimited { max: admission.max_running });
                }
                Err(StoreError::Conflict)
            }
        }
    }

    async fn fail_unqueued(
        &self,
        task: &TaskRecord,
        error: &TaskError,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let update = update_op(
            &self.table,
            task_key(task.task_id),
            META,
            "SET #status = :failed, #error = :error, #updated_at = :now",
            Some("#status = :queued"),
            vec![
                (":failed", s(TaskStatus::Failed.as_str())),
                (":queued", s(TaskStatus::Queued.as_str())),
                (":error", attr(error)?),
                (":now", rfc3339(now)),
            ],
        )?;
        // The key is freed so the client's retry with it creates a task that runs.
        let extra = idempotency_key
            .map(|k| {
                Delete::builder()
                    .table_name(&self.table)
                    .key("pk", s(idem_key(&task.tenant_id, k)))
                    .key("sk", s(META))
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build())
                    .context("building a delete")
                    .map_err(unavailable)
            })
            .transpose()?
            .into_iter()
            .collect();
        self.terminal(task, update, TaskStatus::Failed, &Usage::default(), now, extra).await
    }
}

#[async_trait]
impl TaskRead for DynamoStore {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        match self.task_item(id).await? {
            Some(item) => Ok(Some(self.resolve(item, false).await?)),
            None => Ok(None),
        }
    }

    async fn steps(&self, id: TaskId) -> Result<Vec<Step>, StoreError> {
        let items = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :step)")
                .expression_attribute_values(":pk", s(task_key(id)))
                .expression_attribute_values(":step", s("STEP#"))
                .consistent_read(true),
        )
        .await?;
        let mut steps = Vec::with_capacity(items.len());
        for i in items {
            let item: StepItem = from_item(i)?;
            let text = match (item.data, item.data_ref) {
                (Some(text), _) => text,
                (None, Some(key)) => self.unspill(&key).await?,
                (None, None) => return Err(unavailable(anyhow::anyhow!("step {} has no data", item.sk))),
            };
            steps.push(serde_json::from_str(&text).context("a stored step").map_err(unavailable)?);
        }
        Ok(steps)
    }

    async fn list(
        &self,
        tenant: &str,
        status: Option<TaskStatus>,
        limit: usize,
        after: Option<TaskId>,
    ) -> Result<Page, StoreError> {
        let mut tasks = Vec::new();
        let mut start = after.map(|id| {
            HashMap::from([
                ("pk".to_owned(), s(task_key(id))),
                ("sk".to_owned(), s(META)),
                ("gsi1pk".to_owned(), s(tasks_index(tenant))),
                ("gsi1sk".to_owned(), s(id.to_string())),
            ])
        });
        // A status filter applies after DynamoDB's limit, so a page is filled by reading on,
        // a generous batch at a time; the cursor is the last task returned, so whatever a
        // batch held beyond the page is read again next time, not lost.
        let batch = if status.is_some() { limit.max(100) } else { limit + 1 };
        let mut more = false;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(tasks_index(tenant)))
                .scan_index_forward(false)
                .limit(batch as i32)
                .set_exclusive_start_key(start.take());
            if let Some(status) = status {
                q = q
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            let out = q.send().await.map_err(|e| sdk_error("Query", e))?;
            for i in out.items.unwrap_or_default() {
                if tasks.len() == limit {
                    more = true;
                    break;
                }
                tasks.push(self.resolve(from_item::<TaskItem>(i)?, false).await?);
            }
            start = out.last_evaluated_key;
            if more || start.is_none() {
                break;
            }
        }
        let next = if more || start.is_some() { tasks.last().map(|t| t.task_id) } else { None };
        Ok(Page { tasks, next })
    }
}

#[async_trait]
impl TaskCancel for DynamoStore {
    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Cancelled, StoreError> {
        // Each branch is a conditional write; losing a race to the worker's claim (queued →
        // running) or finish just sends us round again with the new state.
        for _ in 0..5 {
            let Some(item) = self.task_item(id).await? else { return Ok(Cancelled::NotFound) };
            let task = item.record;
            match task.status {
                s if s.is_terminal() => return Ok(Cancelled::AlreadyFinished(s)),
                TaskStatus::Queued => {
                    let update = update_op(
                        &self.table,
                        task_key(id),
                        META,
                        "SET #status = :cancelled, #updated_at = :now, #error = :error",
                        Some("#status = :queued"),
                        vec![
                            (":cancelled", s(TaskStatus::Cancelled.as_str())),
                            (":queued", s(TaskStatus::Queued.as_str())),
                            (":now", rfc3339(now)),
                            (":error", attr(&cancelled_error())?),
                        ],
                    )?;
                    match self.terminal(&task, update, TaskStatus::Cancelled, &task.usage, now, vec![]).await {
                        Ok(()) => return Ok(Cancelled::Now),
                        Err(StoreError::Conflict) => continue,
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    let r = self
                        .update(
                            id,
                            "SET #cancel_requested = :yes, #updated_at = :now",
                            "#status = :running",
                            vec![
                                (":yes", AttributeValue::Bool(true)),
                                (":running", s(TaskStatus::Running.as_str())),
                                (":now", rfc3339(now)),
                            ],
                            ReturnValue::None,
                        )
                        .await;
                    match r {
                        Ok(_) => return Ok(Cancelled::Requested),
                        Err(StoreError::Conflict) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(StoreError::Conflict)
    }
}

/// The error a cancelled task shows.
pub fn cancelled_error() -> TaskError {
    TaskError::new("cancelled", "the task was cancelled at the client's request")
}

#[async_trait]
impl TaskRun for DynamoStore {
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError> {
        let claimed = self
            .update(
                id,
                "SET #status = :running, #lease_owner = :owner, #lease_until = :until, #updated_at = :now ADD #attempts :one",
                "attribute_exists(#pk) AND (#status = :queued OR (#status = :running AND #lease_until < :now_ms))",
                vec![
                    (":running", s(TaskStatus::Running.as_str())),
                    (":queued", s(TaskStatus::Queued.as_str())),
                    (":owner", s(&lease.owner)),
                    (":until", n(millis(lease.until))),
                    (":now", rfc3339(now)),
                    (":now_ms", n(millis(now))),
                    (":one", n(1)),
                ],
                ReturnValue::AllNew,
            )
            .await;
        match claimed {
            Ok(Some(item)) => match self.resolve(from_item::<TaskItem>(item)?, true).await {
                Ok(record) => Ok(Claim::Claimed(Box::new(record))),
                Err(e) => {
                    // Claimed but unreadable (its prompt object is gone, say): give it back
                    // rather than hold it until the lease runs out.
                    let why = TaskError::new("store_error", "the task's stored content could not be read");
                    if let Err(release) = self.release(id, lease, &why, now).await {
                        tracing::error!(
                            error = format!("{:#}", anyhow::Error::from(release)),
                            "could not release an unreadable task"
                        );
                    }
                    Err(e)
                }
            },
            Ok(None) => Err(unavailable(anyhow::anyhow!("UpdateItem returned no attributes"))),
            // Why the condition failed decides what the caller does; one read tells.
            Err(StoreError::Conflict) => {
                let Some(item) = self.task_item(id).await? else { return Ok(Claim::NotFound) };
                Ok(match item.record.status {
                    s if s.is_terminal() => Claim::Terminal(s),
                    _ => Claim::Leased {
                        until: item
                            .lease_until
                            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
                            .unwrap_or(now),
                    },
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn progress(&self, id: TaskId, lease: &Lease, p: &Progress) -> Result<StepAck, StoreError> {
        let mut set =
            "SET #step = :step, #usage = :usage, #usage_by_model = :by_model, #lease_until = :until, #updated_at = :now"
                .to_owned();
        let mut values = vec![
            (":step", n(p.step)),
            (":usage", attr(&p.usage)?),
            (":by_model", attr(&p.usage_by_model)?),
            (":until", n(millis(p.lease_until))),
            (":now", rfc3339(p.now)),
            (":running", s(TaskStatus::Running.as_str())),
            (":owner", s(&lease.owner)),
        ];
        if let Some(model) = &p.model {
            set.push_str(", #model = :model");
            values.push((":model", s(model)));
        }
        let after =
            self.update(id, &set, "#status = :running AND #lease_owner = :owner", values, ReturnValue::AllNew).await?;
        let cancel = after.and_then(|i| i.get("cancel_requested").cloned()) == Some(AttributeValue::Bool(true));
        Ok(if cancel { StepAck::CancelRequested } else { StepAck::Continue })
    }

    async fn finish(&self, task: &TaskRecord, lease: &Lease, f: &Finish) -> Result<(), StoreError> {
        let mut f = f.clone();
        let mut result_ref = None;
        if let Some(result) = f.result.as_mut() {
            result_ref = self.spill(format!("tasks/{}/result", task.task_id), &result.text).await?;
            if result_ref.is_some() {
                result.text = String::new();
            }
        }
        let mut update = self.finish_update(task.task_id, lease, &f)?;
        if let Some(key) = result_ref {
            // The pointer is written with the rest of the terminal state.
            update.update_expression = update.update_expression.replacen("SET ", "SET #result_ref = :result_ref, ", 1);
            update
                .expression_attribute_names
                .get_or_insert_with(HashMap::new)
                .insert("#result_ref".into(), "result_ref".into());
            update.expression_attribute_values.get_or_insert_with(HashMap::new).insert(":result_ref".into(), s(key));
        }
        self.terminal(task, update, f.status, &f.usage, f.now, vec![]).await
    }

    async fn record_model_step(&self, id: TaskId, lease: &Lease, step: &ModelStep) -> Result<(), StoreError> {
        let put = self.step_put(id, &Step::Model(step.clone())).await?;
        let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(task_key(id)))
            .key("sk", s(META))
            .condition_expression("#status = :running AND #lease_owner = :owner")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#lease_owner", "lease_owner")
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()))
            .expression_attribute_values(":owner", s(&lease.owner))
            .build()
            .context("building a condition check")
            .map_err(unavailable)?;
        let items = vec![
            TransactWriteItem::builder().condition_check(check).build(),
            TransactWriteItem::builder().put(put).build(),
        ];
        self.transact(items).await.map_err(|e| match e {
            TransactError::Condition(_) => StoreError::Conflict,
            TransactError::Store(e) => e,
        })
    }

    async fn record_tool_step(&self, id: TaskId, step: &ToolStep) -> Result<(), StoreError> {
        let put = self.step_put(id, &Step::Tool(step.clone())).await?;
        let result = self
            .client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .set_condition_expression(put.condition_expression)
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e));
        match result {
            // Recorded already (by a run that then died): the first result stands.
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, id: TaskId, lease: &Lease, why: &TaskError, now: OffsetDateTime) -> Result<(), StoreError> {
        self.update(
            id,
            "SET #status = :queued, #updated_at = :now, #last_error = :why REMOVE #lease_owner, #lease_until",
            "#status = :running AND #lease_owner = :owner AND attribute_not_exists(#cancel_requested)",
            vec![
                (":queued", s(TaskStatus::Queued.as_str())),
                (":running", s(TaskStatus::Running.as_str())),
                (":owner", s(&lease.owner)),
                (":now", rfc3339(now)),
                (":why", attr(why)?),
            ],
            ReturnValue::None,
        )
        .await
        .map(drop)
    }
}

#[async_trait]
impl TaskDeadLetter for DynamoStore {
    async fn fail_undelivered(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.task_item(id).await? else { return Ok(false) };
        let task = item.record;
        if task.status.is_terminal() {
            return Ok(false);
        }
        // Whatever state it is in, it is not the one its runner left, if it left one; the
        // condition pins the state we saw so a task that moves meanwhile is not overwritten.
        let update = update_op(
            &self.table,
            task_key(id),
            META,
            "SET #status = :failed, #error = :error, #updated_at = :now REMOVE #lease_owner, #lease_until",
            Some("#status = :seen"),
            vec![
                (":failed", s(TaskStatus::Failed.as_str())),
                (":error", attr(error)?),
                (":now", rfc3339(now)),
                (":seen", s(task.status.as_str())),
            ],
        )?;
        match self.terminal(&task, update, TaskStatus::Failed, &task.usage, now, vec![]).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn requeue(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.task_item(id).await? else { return Ok(false) };
        if item.record.status != TaskStatus::Failed {
            return Ok(false);
        }
        let update = update_op(
            &self.table,
            task_key(id),
            META,
            "SET #status = :queued, #updated_at = :now REMOVE #error",
            Some("#status = :failed"),
            vec![
                (":queued", s(TaskStatus::Queued.as_str())),
                (":failed", s(TaskStatus::Failed.as_str())),
                (":now", rfc3339(now)),
            ],
        )?;
        let active = update_op(
            &self.table,
            tenant_key(&item.record.tenant_id),
            "ACTIVE",
            "ADD #active :one",
            None,
            vec![(":one", n(1))],
        )?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().update(active).build(),
        ];
        match self.transact(items).await {
            Ok(()) => Ok(true),
            Err(TransactError::Condition(_)) => Ok(false),
            Err(TransactError::Store(e)) => Err(e),
        }
    }
}

#[async_trait]
impl StorePing for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.client.describe_table().table_name(&self.table).send().await.map_err(|e| sdk_error("DescribeTable", e))?;
        Ok(())
    }
}

#[async_trait]
impl TenantRead for DynamoStore {
    async fn api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let found = self.get_item(format!("KEY#{hash}"), META).await?;
        Ok(found.map(from_item::<KeyItem>).transpose()?.map(|k| k.key))
    }

    async fn tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError> {
        let found = self.get_item(tenant_key(tenant_id), META).await?;
        Ok(found.map(from_item::<TenantItem>).transpose()?.map(|t| t.tenant))
    }
}

#[async_trait]
impl TenantAdmin for DynamoStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let record = TenantItem { pk: tenant_key(&tenant.tenant_id), sk: META.into(), tenant: tenant.clone() };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(&record)?))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let record = KeyItem {
            pk: format!("KEY#{}", key.hash),
            sk: META.into(),
            gsi1pk: "KEYS".into(),
            gsi1sk: key.key_id.clone(),
            key: key.clone(),
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(&record)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let items = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("gsi1pk = :keys")
                .expression_attribute_values(":keys", s("KEYS")),
        )
        .await?;
        let mut keys = Vec::new();
        for i in items {
            let key = from_item::<KeyItem>(i)?.key;
            if tenant.is_none_or(|t| t == key.tenant_id) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn revoke_key(&self, key_id: &str, now: OffsetDateTime) -> Result<Option<ApiKey>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INDEX)
            .key_condition_expression("gsi1pk = :keys AND gsi1sk = :id")
            .expression_attribute_values(":keys", s("KEYS"))
            .expression_attribute_values(":id", s(key_id))
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        let Some(found) = out.items.unwrap_or_default().into_iter().next() else { return Ok(None) };
        let mut key = from_item::<KeyItem>(found)?.key;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("KEY#{}", key.hash)))
            .key("sk", s(META))
            .update_expression("SET revoked_at = if_not_exists(revoked_at, :now)")
            .expression_attribute_values(":now", rfc3339(now))
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem", e))?;
        key.revoked_at.get_or_insert(now);
        Ok(Some(key))
    }
}

#[async_trait]
impl RateLimiter for DynamoStore {
    async fn take(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<RateDecision, StoreError> {
        // Read, refill, and write back only if nobody wrote in between (the condition on the
        // version we read): every instance of every function shares one bucket, and no two
        // can spend the same token.
        for attempt in 0..8 {
            let current = self.get_item(tenant_key(tenant), "BUCKET").await?;
            let number = |name: &str| match current.as_ref().and_then(|i| i.get(name)) {
                Some(AttributeValue::N(v)) => v.parse::<f64>().ok(),
                _ => None,
            };
            let (tokens, updated) = (number("tokens"), number("updated_ms"));
            let now_ms = millis(now).max(updated.unwrap_or(0.0) as i64);
            let (decision, level) = bucket_take(
                limits,
                tokens.unwrap_or(f64::from(limits.burst)),
                updated.unwrap_or(now_ms as f64) as i64,
                now_ms,
            );
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(tenant_key(tenant)))
                .item("sk", s("BUCKET"))
                .item("tokens", n(level))
                .item("updated_ms", n(now_ms));
            put = match updated {
                Some(v) => put
                    .condition_expression("updated_ms = :seen AND tokens = :tokens")
                    .expression_attribute_values(":seen", n(v as i64))
                    .expression_attribute_values(":tokens", n(tokens.unwrap_or_default())),
                None => put.condition_expression("attribute_not_exists(pk)"),
            };
            match put.send().await.map_err(|e| sdk_error("PutItem", e)) {
                Ok(_) => return Ok(decision),
                Err(StoreError::Conflict) => {
                    tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(1..=10 * (attempt + 1)))).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }
}

#[async_trait]
impl UsageRead for DynamoStore {
    async fn month_cost(&self, tenant: &str, month: &str) -> Result<u64, StoreError> {
        let found = self.get_item(tenant_key(tenant), &format!("MONTH#{month}")).await?;
        Ok(match found.as_ref().and_then(|i| i.get("cost_nanos")) {
            Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
            _ => 0,
        })
    }

    async fn days(&self, tenant: &str, from: &str, to: &str) -> Result<Vec<DayUsage>, StoreError> {
        let items = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(tenant_key(tenant)))
                .expression_attribute_values(":from", s(format!("USAGE#{from}")))
                .expression_attribute_values(":to", s(format!("USAGE#{to}"))),
        )
        .await?;
        Ok(items.iter().map(day_usage).collect())
    }
}

fn day_usage(item: &HashMap<String, AttributeValue>) -> DayUsage {
    let num = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
        _ => 0,
    };
    DayUsage {
        date: match item.get("date") {
            Some(AttributeValue::S(d)) => d.clone(),
            _ => String::new(),
        },
        succeeded: num("succeeded"),
        failed: num("failed"),
        cancelled: num("cancelled"),
        usage: Usage {
            input_tokens: num("input_tokens"),
            output_tokens: num("output_tokens"),
            cache_read_input_tokens: num("cache_read_input_tokens"),
            cache_creation_input_tokens: num("cache_creation_input_tokens"),
            cost_nanos: num("cost_nanos"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_in_expressions() {
        let names: Vec<_> = attribute_names("SET #status = :s, #lease_until = :u REMOVE #a_b").collect();
        assert_eq!(names, ["status", "lease_until", "a_b"]);
    }
}
