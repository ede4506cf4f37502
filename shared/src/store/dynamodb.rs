//! The DynamoDB adapter. One table, keys that say what an item is: a task's record lives at
//! `pk = TASK#<id>, sk = META`.

use std::collections::HashMap;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Claim, Finish, Lease, Progress, StoreError, StorePing, TaskCreate, TaskRead, TaskRun};
use crate::task::{TaskError, TaskId, TaskRecord, TaskStatus};

const META: &str = "META";

/// Tasks in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: std::time::Duration,
}

/// A task record as stored: the record plus the keys, the lease and the TTL.
#[derive(Serialize, Deserialize)]
struct TaskItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    record: TaskRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_owner: Option<String>,
    /// Lease expiry, epoch milliseconds, so conditions can compare it with `<`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_until: Option<i64>,
    /// DynamoDB TTL attribute, epoch seconds.
    expires_at: i64,
}

fn task_key(id: TaskId) -> String {
    format!("TASK#{id}")
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

fn attr<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v).context("serializing an attribute").map_err(StoreError::Unavailable)
}

/// Maps an SDK error: a failed condition is a [`StoreError::Conflict`], anything else keeps
/// its whole cause chain (the SDK's top line alone says only "service error").
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

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention: std::time::Duration) -> Self {
        Self { client, table: table.into(), retention }
    }

    /// Runs one conditional update on a task's record. Attribute names are written `#name`
    /// in the expressions and resolved here, so no reserved word (`status`, `result`…) bites.
    async fn update(
        &self,
        id: TaskId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        returning: ReturnValue,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(task_key(id)))
            .key("sk", s(META))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(returning);
        for name in attribute_names(update).chain(attribute_names(condition)) {
            req = req.expression_attribute_names(format!("#{name}"), name);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        let out = req.send().await.map_err(|e| sdk_error("UpdateItem", e))?;
        Ok(out.attributes)
    }
}

/// The `#name` placeholders in an expression.
fn attribute_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split('#').skip(1).map(|rest| {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        &rest[..end]
    })
}

fn record_of(item: HashMap<String, AttributeValue>) -> Result<TaskRecord, StoreError> {
    let item: TaskItem = serde_dynamo::from_item(item)
        .context("a stored task does not match the record's shape")
        .map_err(StoreError::Unavailable)?;
    Ok(item.record)
}

#[async_trait]
impl TaskCreate for DynamoStore {
    async fn create(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let expires = task.created_at + self.retention;
        let item = TaskItem {
            pk: task_key(task.task_id),
            sk: META.into(),
            record: task.clone(),
            lease_owner: None,
            lease_until: None,
            expires_at: expires.unix_timestamp(),
        };
        let item = serde_dynamo::to_item(&item).context("serializing a task").map_err(StoreError::Unavailable)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    async fn fail_unqueued(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<(), StoreError> {
        self.update(
            id,
            "SET #status = :failed, #error = :error, #updated_at = :now",
            "#status = :queued",
            vec![
                (":failed", s(TaskStatus::Failed.as_str())),
                (":queued", s(TaskStatus::Queued.as_str())),
                (":error", attr(error)?),
                (":now", rfc3339(now)),
            ],
            ReturnValue::None,
        )
        .await
        .map(drop)
    }
}

#[async_trait]
impl TaskRead for DynamoStore {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(task_key(id)))
            .key("sk", s(META))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        out.item.map(record_of).transpose()
    }
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
            Ok(Some(item)) => Ok(Claim::Claimed(Box::new(record_of(item)?))),
            Ok(None) => Err(StoreError::Unavailable(anyhow::anyhow!("UpdateItem returned no attributes"))),
            // Why the condition failed decides what the caller does; one read tells.
            Err(StoreError::Conflict) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(task_key(id)))
                    .key("sk", s(META))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error("GetItem", e))?;
                let Some(item) = out.item else { return Ok(Claim::NotFound) };
                let item: TaskItem = serde_dynamo::from_item(item)
                    .context("a stored task does not match the record's shape")
                    .map_err(StoreError::Unavailable)?;
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

    async fn progress(&self, id: TaskId, lease: &Lease, p: &Progress) -> Result<(), StoreError> {
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
        self.update(id, &set, "#status = :running AND #lease_owner = :owner", values, ReturnValue::None).await.map(drop)
    }

    async fn finish(&self, id: TaskId, lease: &Lease, f: &Finish) -> Result<(), StoreError> {
        let mut set =
            "SET #status = :status, #step = :step, #usage = :usage, #usage_by_model = :by_model, #updated_at = :now"
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
        self.update(id, &set, "#status = :running AND #lease_owner = :owner", values, ReturnValue::None).await.map(drop)
    }

    async fn release(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<(), StoreError> {
        self.update(
            id,
            "SET #status = :queued, #updated_at = :now REMOVE #lease_owner, #lease_until",
            "#status = :running AND #lease_owner = :owner",
            vec![
                (":queued", s(TaskStatus::Queued.as_str())),
                (":running", s(TaskStatus::Running.as_str())),
                (":owner", s(&lease.owner)),
                (":now", rfc3339(now)),
            ],
            ReturnValue::None,
        )
        .await
        .map(drop)
    }
}

#[async_trait]
impl StorePing for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.client.describe_table().table_name(&self.table).send().await.map_err(|e| sdk_error("DescribeTable", e))?;
        Ok(())
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
