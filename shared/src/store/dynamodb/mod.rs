//! The DynamoDB adapter. One table, keys that say what an item is:
//!
//! | pk                 | sk                  | item                                    |
//! |--------------------|---------------------|-----------------------------------------|
//! | `TASK#<id>`        | `META`              | a task (`tasks`: `TASKS#<tenant>`, task id; while open, `open`: `OPEN#<shard>`, due time) |
//! | `TASK#<id>`        | `PROMPT`            | a prompt over [`PROMPT_APART`] bytes, written once |
//! | `TENANT#<t>`       | `META`              | a tenant and its limits (GSI1: `TENANTS`, tenant) |
//! | `TENANT#<t>`       | `ACTIVE`            | tasks queued or running, and the rate limit's theoretical arrival time (one write takes both) |
//! | `TENANT#<t>`       | `USAGE#<YYYY-MM-DD>`| tasks finished, tokens and cost per day (a month's, summed: its budget) |
//! | `KEY#<sha256>`     | `META`              | an API key (GSI1: `KEYS`, key id)       |
//! | `IDEM#<t>#<key>`   | `META`              | an idempotency key, 24 h (a task's or a batch's) |
//! | `BATCH#<id>`       | `META`              | a batch: its items' task ids or errors  |
//! | `BREAKER#<model>`  | `META`              | until when the model's circuit is open (any instance) |
//! | `TASK#<id>`        | `STEP#<n>`          | a model answer a fork inherited (or recorded before answers went in their events) |
//! | `TASK#<id>`        | `STEP#<n>#TOOL#<u>` | a recorded tool result (or an approval's decision) |
//! | `TASK#<id>`        | `EVT#<seq>`         | an event of the task's log from seq 2 (the first is derived from `META`); a `task.step` event carries its model answer (`step_sk`, `step` or `step_ref`) |
//! | `TASK#<id>`        | `DLV#<seq>#<target>#<id>` | an attempt to deliver an event (webhooks) |
//! | `TENANT#<t>`       | `WEBHOOK#<id>`      | a webhook endpoint                      |
//! | `TENANT#<t>`       | `SCHEDULE#<id>`     | a schedule (while active, `open`: `SCHEDULES`, next tick) |
//!
//! Text longer than [`INLINE_LIMIT`] (a prompt, a result, a step) goes to S3, with a `*_ref`
//! attribute pointing at it.
//!
//! An update is billed on the whole item, and a task's item is rewritten by every transition
//! (claim, start, each model step, the end): so the prompt, which only the worker reads, is
//! kept apart once it is long enough to matter, and the task's item stays near one KB.
//!
//! A transaction is billed two units per item and KB: so a model answer is written inside the
//! `task.step` event that announces it, one item where a step item beside its event cost two
//! more units a step. Steps are read from both kinds of item, merged in step order. And what
//! needs no transaction is not in one: a long prompt's item is a plain write before the task's
//! (an orphan, if the task is then not stored, which nothing reads and TTL removes, as S3's
//! lifecycle does a spilled prompt), and a model step is its progress, then its event. A task's
//! first event is not stored at all: it is derived from the task's item (by the log's reader,
//! and by the notifier from the stream's insert of that item), so a submit without an
//! idempotency key is one plain put, its index entries billed once instead of twice.

mod batches;
mod breakers;
mod meters;
mod schedules;
mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

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
    Admission, Admitted, Cancelled, Claim, CountRepair, DEFAULT_RECONCILE_AFTER, DayUsage, Entry, EventPage, Finish,
    Gcra, IDEMPOTENCY_WINDOW, Idempotency, LIST_EXAMINE_LIMIT, Lease, Page, Progress, RateDecision, RateLimiter,
    STEP_PAGE_BYTES, Slot, StepAck, StepPage, StoreError, StorePing, TaskCancel, TaskCreate, TaskDeadLetter, TaskInput,
    TaskRead, TaskReconcile, TaskRun, TenantAdmin, TenantRead, UsageRead, Wait, cancelled_error, day_of,
};
use crate::domain::approval::Decision;
use crate::domain::events::{EventKind, TaskEvent};
use crate::domain::fork::ForkRef;
use crate::domain::steps::{ModelStep, Spend, Step, ToolStep};
use crate::domain::task::{ErrorCode, TaskError, TaskId, TaskRecord, TaskStatus};
use crate::domain::tenant::{ApiKey, Limits, Tenant};
use crate::domain::usage::Usage;
use crate::store::blobs::{Blobs, INLINE_LIMIT};

const META: &str = "META";
const PROMPT: &str = "PROMPT";
/// The item a tenant's submit counters share: the running count (`active`) and the rate
/// limit's bucket (`tat`), so a submit takes both in one write. (Tables older than this kept
/// the bucket in a `BUCKET` item of its own, left unused: its tenant starts with a full burst.)
const COUNTERS: &str = "ACTIVE";
/// Prompts longer than this (bytes) are kept in their own item: a task's item without one is
/// 0.6–0.9 KB, so a longer prompt would make every write of it cost a unit more per KB.
const PROMPT_APART: usize = 256;
/// API keys (`KEYS`) and tenants (`TENANTS`); and the tasks of tables older than the `tasks`
/// index (`TASKS#<tenant>`), which a list reads after the index's own.
const INDEX: &str = "gsi1";
/// A tenant's tasks, newest first: keys and status only, so it is written when a task is
/// created and when its status moves, never on the steps between (gsi1, projecting whole
/// items, was rewritten on every write of a task: a fifth of a task's write units).
const TASKS_INDEX: &str = "tasks";
/// The sparse index of open tasks by the time they are due to be looked at.
const OPEN_INDEX: &str = "open";
/// Partitions of the open index, so a busy deployment's task writes spread over several.
const OPEN_SHARDS: u8 = 4;
/// Attempts of a transaction that collides with others on the same items.
const TRANSACT_ATTEMPTS: u32 = 8;

/// Everything in a DynamoDB table (and S3, for what is too large for it).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: Duration,
    reconcile_after: Duration,
    blobs: Option<std::sync::Arc<dyn Blobs>>,
    /// The last value of each tenant's rate-limit bucket this instance saw (microseconds): a
    /// lower bound of the stored one, which only grows, so while it is still ahead of now the
    /// bucket is in use and a submit's update says so at its first try.
    buckets_seen: std::sync::Arc<std::sync::Mutex<HashMap<String, i64>>>,
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
    /// The `tasks` index's partition (`TASKS#<tenant>`); its sort key is `task_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tasks_pk: Option<String>,
    /// Where a task written before the `tasks` index is listed (gsi1, `TASKS#<tenant>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi1sk: Option<String>,
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
    /// The prompt is in the task's `PROMPT` item.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    prompt_apart: bool,
    /// Where the result text is when it is too large for the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_ref: Option<String>,
    /// The open index's partition, present until the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_pk: Option<String>,
    /// When the reconciler should look at the task (epoch milliseconds), while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due_at: Option<i64>,
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
    #[serde(default)]
    gsi1pk: Option<String>,
    #[serde(default)]
    gsi1sk: Option<String>,
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

fn open_shard(id: TaskId) -> String {
    // A ULID's last character is random.
    let last = id.to_string().bytes().last().unwrap_or(0);
    format!("OPEN#{}", last % OPEN_SHARDS)
}

/// The open index's partition of a task waiting for input: apart from `OPEN#…`, so the
/// reconciler finds its timeout but the running counts do not include it.
fn wait_shard(id: TaskId) -> String {
    let last = id.to_string().bytes().last().unwrap_or(0);
    format!("WAIT#{}", last % OPEN_SHARDS)
}

/// The open index's partition of a tenant's held tasks (over its cap, `over_cap: hold`),
/// sorted by when they were submitted: apart from `OPEN#…` so the reconciler does not resend
/// them and the running counts do not include them.
fn held_line(tenant: &str) -> String {
    format!("HELD#{tenant}")
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

fn number(item: Option<&HashMap<String, AttributeValue>>, name: &str) -> Option<i64> {
    match item?.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

/// Every item a query matches, following its pages.
async fn query_all(query: QueryFluentBuilder) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    query_up_to(query, None).await
}

/// The first `want` items a query matches (all: `None`), following its pages: a query with a
/// filter can answer a page with fewer items than it read, or none.
async fn query_up_to(
    query: QueryFluentBuilder,
    want: Option<usize>,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    let mut pages = query.into_paginator().items().send();
    let mut items = Vec::new();
    while want.is_none_or(|want| items.len() < want) {
        match pages.next().await {
            Some(item) => items.push(item.map_err(|e| sdk_error("Query", e))?),
            None => break,
        }
    }
    Ok(items)
}

/// Maps an SDK error: a failed condition is a [`StoreError::Conflict`], anything else keeps
/// its whole cause chain (the SDK's top line alone says only "service error").
fn sdk_error<E, R>(what: &'static str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some("ConditionalCheckFailedException") => StoreError::Conflict,
        // A plain write to an item an in-flight transaction holds.
        Some("TransactionConflictException") => StoreError::Contended,
        _ => StoreError::Unavailable(anyhow::anyhow!("{what}: {}", DisplayErrorContext(&e))),
    }
}

/// The `#name` placeholders in an expression.
fn attribute_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split('#').skip(1).map(|rest| {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        &rest[..end]
    })
}

/// An update of one item, written clause by clause. Attribute names are written `#name` and
/// resolved when it is built, so no reserved word (`status`, `result`…) bites; conditions are
/// joined with `AND`.
#[derive(Debug, Clone, Default)]
struct Expr {
    set: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    conditions: Vec<String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn set(mut self, clause: impl Into<String>) -> Self {
        self.set.push(clause.into());
        self
    }
    fn add(mut self, clause: impl Into<String>) -> Self {
        self.add.push(clause.into());
        self
    }
    fn remove(mut self, clause: impl Into<String>) -> Self {
        self.remove.push(clause.into());
        self
    }
    /// The update applies only if `condition` holds too.
    fn when(mut self, condition: impl Into<String>) -> Self {
        self.conditions.push(condition.into());
        self
    }
    fn val(mut self, name: &str, v: AttributeValue) -> Self {
        self.values.insert(name.to_owned(), v);
        self
    }

    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        for (word, clauses) in [("SET", &self.set), ("ADD", &self.add), ("REMOVE", &self.remove)] {
            if !clauses.is_empty() {
                parts.push(format!("{word} {}", clauses.join(", ")));
            }
        }
        parts.join(" ")
    }

    fn condition(&self) -> Option<String> {
        match self.conditions.len() {
            0 => None,
            1 => Some(self.conditions[0].clone()),
            _ => Some(self.conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND ")),
        }
    }

    fn names(&self, update: &str, condition: Option<&str>) -> HashMap<String, String> {
        attribute_names(update)
            .chain(condition.into_iter().flat_map(attribute_names))
            .map(|n| (format!("#{n}"), n.to_owned()))
            .collect()
    }

    /// The update of the item `pk`/`sk`, as a transaction part.
    fn on(self, table: &str, pk: String, sk: &str) -> Result<Update, StoreError> {
        let update = self.update_expression();
        let condition = self.condition();
        let names = self.names(&update, condition.as_deref());
        Update::builder()
            .table_name(table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(update)
            .set_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values((!self.values.is_empty()).then_some(self.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::None)
            .build()
            .context("building an update")
            .map_err(unavailable)
    }
}

/// The condition that pins what a transition read: the status it saw, and the usage the
/// tenant's counters had seen (so two transitions racing through the same status cannot both
/// count the same usage).
fn as_seen(expr: Expr, task: &TaskRecord) -> Expr {
    expr.when("#status = :seen_status")
        .when("attribute_not_exists(#counted) OR #counted.#cost_nanos = :seen_counted")
        .when("attribute_not_exists(#events) OR #events = :seen_events")
        .val(":seen_status", s(task.status.as_str()))
        .val(":seen_counted", n(task.counted.cost_nanos))
        .val(":seen_events", n(task.events))
}

/// `EVT#000012`: an event's sort key, in `seq` order.
fn event_key(seq: u32) -> String {
    format!("EVT#{seq:06}")
}

/// A stored event: the [`TaskEvent`] as JSON text; a `task.step` event also holds the model
/// answer it announces (as a [`StepItem`] would: its sort key, its JSON text or a pointer).
///
/// A task's end written with the answer that ended its run is one item: the answer's
/// `task.step` event and the answer, as any step's, with the end's event (the next seq) in
/// `end`. Inside the ending transaction every item costs twice, so the two events in one item
/// are two write units fewer a task; readers give them back as two events
/// ([`EventItem::events`]), and a read after the answer's seq reads its item too, for the end.
#[derive(Serialize, Deserialize)]
struct EventItem {
    pk: String,
    sk: String,
    data: String,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_sk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

/// The task events a new item of the table reports, read from the table's stream (a new
/// image): an inserted `EVT#` item is the events it holds (one, or an answer and the end
/// written with it), an inserted task's item (`TASK#<id>`, `META`) is the task's first event,
/// derived as the log derives it ([`TaskEvent::accepted`]); any other item reports none. An
/// item that does not read as what its keys say is an error: trying again cannot mend it.
pub fn inserted_events(image: serde_dynamo::Item) -> Result<Vec<TaskEvent>, StoreError> {
    #[derive(Deserialize)]
    struct Keys {
        pk: String,
        sk: String,
    }
    let keys: Keys = serde_dynamo::from_item(image.clone()).context("a stream image's keys").map_err(unavailable)?;
    if keys.sk.starts_with("EVT#") {
        let item: EventItem = serde_dynamo::from_item(image).context("an event item").map_err(unavailable)?;
        item.events()
    } else if keys.sk == META && keys.pk.starts_with("TASK#") {
        let item: TaskItem = serde_dynamo::from_item(image).context("a task's item").map_err(unavailable)?;
        Ok(vec![TaskEvent::accepted(&item.record)])
    } else {
        Ok(Vec::new())
    }
}

impl EventItem {
    /// The events the item holds, in order: its own, then the end written with it, if any
    /// (whose spending, the same as the answer's event's, is stored once).
    fn events(&self) -> Result<Vec<TaskEvent>, StoreError> {
        let task: TaskId = self
            .pk
            .strip_prefix("TASK#")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| unavailable(anyhow::anyhow!("an event item outside a task: {}", self.pk)))?;
        let parse = |json: &str| serde_json::from_str::<serde_json::Value>(json).context("a stored event");
        let own = parse(&self.data).map_err(unavailable)?;
        let end = match &self.end {
            Some(end) => {
                let mut end = parse(end).map_err(unavailable)?;
                if let (Some(data), Some(spent)) = (end["data"].as_object_mut(), own["data"].get("spent")) {
                    data.entry("spent").or_insert_with(|| spent.clone());
                }
                Some(end)
            }
            None => None,
        };
        std::iter::once(own)
            .chain(end)
            .map(|e| TaskEvent::from_stored(task, e).context("a stored event").map_err(unavailable))
            .collect()
    }

    /// The step this event carries, as if it were stored on its own.
    fn into_step(self) -> Option<StepItem> {
        let sk = self.step_sk?;
        Some(StepItem { pk: self.pk, sk, data: self.step, data_ref: self.step_ref, expires_at: self.expires_at })
    }
}

/// What a task's end appends to its log: the end's event, and the answer that ended the run
/// with its `task.step` event when the run is recorded with its end (one item, see
/// [`EventItem`]).
#[derive(Clone, Copy)]
struct Ending<'a> {
    event: &'a TaskEvent,
    answer: Option<(&'a ModelStep, &'a TaskEvent)>,
}

impl<'a> From<&'a TaskEvent> for Ending<'a> {
    fn from(event: &'a TaskEvent) -> Self {
        Self { event, answer: None }
    }
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

enum TransactError {
    /// Which parts' conditions failed.
    Condition(Vec<bool>),
    Store(StoreError),
}

impl From<TransactError> for StoreError {
    fn from(e: TransactError) -> Self {
        match e {
            TransactError::Condition(_) => StoreError::Conflict,
            TransactError::Store(e) => e,
        }
    }
}

/// The pause before retrying against other writers: up to 10 ms, 20 ms, 40 ms… 320 ms.
fn contention_pause(attempt: u32) -> Duration {
    crate::domain::backoff::full_jitter(Duration::from_millis(10), Duration::from_millis(320), attempt)
}

impl DynamoStore {
    /// Writes `record` as an item, replacing any item with its key.
    async fn put(&self, record: &impl Serialize) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(record)?))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    pub fn new(client: Client, table: impl Into<String>, retention: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            retention,
            reconcile_after: DEFAULT_RECONCILE_AFTER,
            blobs: None,
            buckets_seen: Default::default(),
        }
    }

    /// Keeps content too large for an item in `blobs`. Without blobs, such content is refused.
    pub fn with_blobs(mut self, blobs: std::sync::Arc<dyn Blobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// How long an open task may go unchanged before the reconciler looks at it.
    pub fn with_reconcile_after(mut self, after: Duration) -> Self {
        self.reconcile_after = after;
        self
    }

    /// Stores a new task `queued`: counted against its tenant's cap (`task.held` false), or
    /// held in its tenant's line (true), with its idempotency key and first event.
    ///
    /// The slot is taken by a conditional update of its own, before the transaction, not as a
    /// part of it: every submit of a tenant writes that one counter, and transactions that
    /// share an item cancel each other (`TransactionConflict`) where single-item updates
    /// queue up and all succeed. Twenty submits in flight for one tenant retried each other
    /// into p50s of 400–700 ms (BENCHMARKS.md). A slot taken for a task that is then not
    /// created is given back; one lost to a crash between the two writes is set right by the
    /// reconciler's count repair once the tenant's count is quiet.
    async fn admit_as(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        // A held task takes no slot: its count moves when it leaves the line. A submit took its
        // slot with its rate limit, or found the tenant at its cap then.
        let free = match admission.slot {
            _ if task.held => true,
            Slot::Taken => true,
            Slot::Full => false,
            Slot::Take => self.take_slot_now(&task.tenant_id, admission.max_running, task.created_at).await?,
        };
        if !free {
            // At the cap; but a request seen before is answered as before, whatever the count.
            return Ok(match admission.idempotency {
                Some(idem) => match self.idempotent_answer(&task.tenant_id, idem).await? {
                    Admitted::Created => Admitted::ConcurrencyLimited { max: admission.max_running },
                    seen => seen,
                },
                None => Admitted::ConcurrencyLimited { max: admission.max_running },
            });
        }
        let outcome = match self.create(task, admission).await {
            // A request that timed out may still have committed: the task's item says which.
            // Created after all, it is answered as created and keeps its slot; unknown, the
            // slot is kept (a count one too high is repaired, one too low over-admits).
            Err(StoreError::Unavailable(e)) => match self.task_item(task.task_id).await {
                Ok(Some(_)) => return Ok(Admitted::Created),
                Ok(None) => Err(StoreError::Unavailable(e)),
                Err(_) => return Err(StoreError::Unavailable(e)),
            },
            other => other,
        };
        if !task.held && !matches!(outcome, Ok(Admitted::Created)) {
            self.give_slot_back(&task.tenant_id).await;
        }
        outcome
    }

    /// The write that creates an admitted task: its item (a long prompt stored first, so a
    /// submit refused at the cap stores nothing), and with its idempotency key in one
    /// transaction if it has one. Its first event is derived from the item
    /// ([`TaskEvent::accepted`]), not written: without a key a task is one plain put, half
    /// the units of a transaction, its index entries included.
    async fn create(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let put = self.new_task_put(task).await?;
        let Some(idem) = admission.idempotency else {
            return self.put_alone(put).await.map(|()| Admitted::Created);
        };
        let now = task.created_at.unix_timestamp();
        let expires = (task.created_at + IDEMPOTENCY_WINDOW).unix_timestamp();
        let key = Put::builder()
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
        let items = vec![TransactWriteItem::builder().put(put).build(), TransactWriteItem::builder().put(key).build()];
        match self.transact(items).await {
            Ok(()) => Ok(Admitted::Created),
            Err(TransactError::Store(e)) => Err(e),
            // The key is the part after the task's item.
            Err(TransactError::Condition(failed)) if failed.get(1).copied().unwrap_or(false) => {
                match self.idempotent_answer(&task.tenant_id, idem).await? {
                    // It expired or vanished between our write and our read: try again.
                    Admitted::Created => Err(StoreError::Conflict),
                    seen => Ok(seen),
                }
            }
            Err(TransactError::Condition(_)) => Err(StoreError::Conflict),
        }
    }

    /// What a stored idempotency key says of a request: the task it created (`Replayed`), a
    /// different request under the key (`KeyReused`), or nothing stored (`Created`: go on).
    async fn idempotent_answer(&self, tenant: &str, idem: Idempotency<'_>) -> Result<Admitted, StoreError> {
        Ok(match self.stored_key(tenant, idem.key, "task_id").await? {
            Some((hash, Some(id))) if hash == idem.request_hash => match id.parse() {
                Ok(id) => Admitted::Replayed(id),
                Err(_) => Admitted::KeyReused,
            },
            Some(_) => Admitted::KeyReused,
            None => Admitted::Created,
        })
    }

    /// What a live idempotency key holds: the hash of the request that took it, and what that
    /// request made (`made`: `task_id` or `batch_id`). `None` once it has expired or vanished.
    pub(super) async fn stored_key(
        &self,
        tenant: &str,
        key: &str,
        made: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let stored = self.get_item(idem_key(tenant, key), META).await?;
        let field = |name: &str| match stored.as_ref().and_then(|i| i.get(name)) {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        };
        let live = number(stored.as_ref(), "expires_at").is_some_and(|at| at >= crate::now().unix_timestamp());
        Ok(field("request_hash").filter(|_| live).map(|hash| (hash, field(made))))
    }

    /// Takes one of the tenant's running slots, if it has one free (false: at its cap).
    async fn take_slot_now(&self, tenant: &str, max_running: u32, now: OffsetDateTime) -> Result<bool, StoreError> {
        match self.update_contended(self.slot_update(tenant, max_running, now)?).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives back a slot: one taken for a task that was not created, or an ended task's.
    /// Failing that, the count is one too high until the reconciler's repair: logged, not
    /// the caller's error.
    async fn give_slot_back(&self, tenant: &str) {
        self.give_slots_back(tenant, 1).await
    }

    /// Gives back `k` slots taken for tasks that were not created (as [`Self::give_slot_back`]).
    async fn give_slots_back(&self, tenant: &str, k: usize) {
        let back = async { self.update_contended(self.active_update(tenant, -(k as i64), crate::now())?).await };
        if let Err(e) = back.await {
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "could not give back a running slot");
        }
    }

    /// A single-item update, tried again after a pause while a transaction holds its item.
    async fn update_contended(&self, u: Update) -> Result<(), StoreError> {
        for attempt in 0..TRANSACT_ATTEMPTS {
            match self.send_update(u.clone(), ReturnValue::None).await {
                Err(StoreError::Contended) => tokio::time::sleep(contention_pause(attempt)).await,
                other => return other.map(|_| ()),
            }
        }
        Err(StoreError::Contended)
    }

    /// The put of a new task's item, never over another. A long prompt is stored first, in
    /// an item of its own (or in S3 if too large for one), by a plain write: in the task's
    /// transaction it cost twice the units, and until the task's item exists nothing reads it.
    async fn new_task_put(&self, task: &TaskRecord) -> Result<Put, StoreError> {
        let prompt_ref = self.spill(format!("tasks/{}/prompt", task.task_id), &task.prompt).await?;
        let prompt_apart = prompt_ref.is_none() && task.prompt.len() > PROMPT_APART;
        let mut stored = task.clone();
        if prompt_ref.is_some() || prompt_apart {
            stored.prompt = String::new();
        }
        let expires_at = (task.created_at + self.retention).unix_timestamp();
        let record = TaskItem {
            pk: task_key(task.task_id),
            sk: META.into(),
            tasks_pk: Some(tasks_index(&task.tenant_id)),
            gsi1pk: None,
            gsi1sk: None,
            record: stored,
            lease_owner: None,
            lease_until: None,
            expires_at,
            prompt_ref,
            prompt_apart,
            result_ref: None,
            // A held task waits in its tenant's line, oldest first, with no message.
            open_pk: Some(if task.held { held_line(&task.tenant_id) } else { open_shard(task.task_id) }),
            due_at: Some(if task.held {
                millis(task.created_at)
            } else {
                millis(task.created_at + self.reconcile_after)
            }),
        };
        let new = |item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .context("building a put")
                .map_err(unavailable)
        };
        if prompt_apart {
            self.put_alone(new(HashMap::from([
                ("pk".to_owned(), s(task_key(task.task_id))),
                ("sk".to_owned(), s(PROMPT)),
                ("text".to_owned(), s(&task.prompt)),
                ("expires_at".to_owned(), n(expires_at)),
            ]))?)
            .await?;
        }
        new(item(&record)?)
    }

    fn due(&self, from: OffsetDateTime) -> AttributeValue {
        n(millis(from + self.reconcile_after))
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
        if with_prompt && item.prompt_apart {
            let prompt = self.get_item(task_key(record.task_id), PROMPT).await?;
            record.prompt = match prompt.as_ref().and_then(|p| p.get("text")) {
                Some(AttributeValue::S(text)) => text.clone(),
                _ => return Err(unavailable(anyhow::anyhow!("task {}: its prompt item is missing", record.task_id))),
            };
        }
        Ok(record)
    }

    /// `running` → `queued` (a release, or a pause until `until` that is not an attempt).
    async fn give_back(
        &self,
        id: TaskId,
        lease: &Lease,
        why: &TaskError,
        until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut e = Expr::default()
            .set("#status = :queued")
            .set("#updated_at = :now")
            .set("#last_error = :why")
            .set("#due_at = :due")
            .remove("#lease_owner")
            .remove("#lease_until")
            .when("attribute_not_exists(#cancel_requested)")
            .val(":queued", s(TaskStatus::Queued.as_str()))
            .val(":now", rfc3339(now))
            .val(":why", attr(why)?)
            .val(":due", self.due(until.unwrap_or(now)));
        if until.is_some() {
            e = e.add("#attempts :less").val(":less", n(-1));
        }
        self.update_task(id, Self::leased(e, lease), ReturnValue::None).await.map(drop)
    }

    /// Runs one update of a task's record.
    async fn update_task(
        &self,
        id: TaskId,
        expr: Expr,
        returning: ReturnValue,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let u = expr.on(&self.table, task_key(id), META)?;
        self.send_update(u, returning).await
    }

    async fn send_update(
        &self,
        u: Update,
        returning: ReturnValue,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
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
        // A transaction that collides with another on the same items (a tenant's counters,
        // under a burst) is cancelled with `TransactionConflict`: those are retried after a
        // random pause, failed conditions are not. Still colliding after that: `Contended`.
        for attempt in 0..TRANSACT_ATTEMPTS {
            let result = self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let Err(e) = result else { return Ok(()) };
            match failed_conditions(&e) {
                Some(failed) if failed.iter().any(|f| *f) => return Err(TransactError::Condition(failed)),
                Some(_) => tokio::time::sleep(contention_pause(attempt)).await,
                None => match sdk_error("TransactWriteItems", e) {
                    StoreError::Contended => tokio::time::sleep(contention_pause(attempt)).await,
                    other => return Err(TransactError::Store(other)),
                },
            }
        }
        Err(TransactError::Store(StoreError::Contended))
    }

    /// A tenant counter's update.
    fn counter(&self, tenant: &str, sk: &str, expr: Expr) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder().update(expr.on(&self.table, tenant_key(tenant), sk)?).build())
    }

    /// One more running, if the tenant is under `max_running`.
    fn take_slot(&self, tenant: &str, max_running: u32, now: OffsetDateTime) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder().update(self.slot_update(tenant, max_running, now)?).build())
    }

    fn slot_update(&self, tenant: &str, max_running: u32, now: OffsetDateTime) -> Result<Update, StoreError> {
        Expr::default()
            .add("#active :one")
            .set("#updated_ms = :now_ms")
            .when("attribute_not_exists(#active) OR #active < :max")
            .val(":one", n(1))
            .val(":now_ms", n(millis(now)))
            .val(":max", n(max_running))
            .on(&self.table, tenant_key(tenant), COUNTERS)
    }

    /// The running count moved by `by`, stamped so the reconciler knows when it last moved.
    fn active_change(&self, tenant: &str, by: i64, now: OffsetDateTime) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder().update(self.active_update(tenant, by, now)?).build())
    }

    fn active_update(&self, tenant: &str, by: i64, now: OffsetDateTime) -> Result<Update, StoreError> {
        Expr::default()
            .add("#active :by")
            .set("#updated_ms = :now_ms")
            .val(":by", n(by))
            .val(":now_ms", n(millis(now)))
            .on(&self.table, tenant_key(tenant), COUNTERS)
    }

    /// Moves `task` (as it was read) to the terminal state `end.event` reports, with
    /// `task_update` (whose condition states when that is allowed), appends the end to its
    /// log (with the answer that ended the run, in one item, when `end` has one) and adds the
    /// usage the tenant's counters have not seen yet (`total` beyond what `task.counted` says)
    /// to the day, atomically; then gives the task's running slot back.
    ///
    /// The slot is given back by a plain update of its own after the transaction, as a submit
    /// takes it by one before the task is written: inside the transaction it cost two units
    /// more, and held the tenant's count item for the transaction's length while every submit
    /// of the tenant updates that item, so a submit and an end could conflict and one of them
    /// wait and retry. A count left one too high by a crash between the two writes is set
    /// right by the reconciler's repair, as a submit's is.
    async fn terminal(
        &self,
        task: &TaskRecord,
        task_update: Expr,
        end: Ending<'_>,
        spend: &Spend,
        now: OffsetDateTime,
        extra: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let ending = end.event;
        let total = &spend.usage;
        let status = match ending.kind {
            EventKind::Succeeded => TaskStatus::Succeeded,
            EventKind::Cancelled => TaskStatus::Cancelled,
            _ => TaskStatus::Failed,
        };
        let delta = total.since(&task.counted);
        let by_model = spend.cost_by_model_since(&task.counted_by_model);
        let mut counted_by_model = task.counted_by_model.clone();
        for (m, c) in &by_model {
            *counted_by_model.entry(m.clone()).or_default() += c;
        }
        // Only when a model has new cost: an empty map is never written (DynamoDB Local's stream
        // records carry one as `{}`, which no SDK reads).
        let task_update = if by_model.is_empty() {
            task_update
        } else {
            task_update.set("#counted_by_model = :counted_by_model").val(":counted_by_model", attr(&counted_by_model)?)
        };
        let task_update = task_update
            .set("#events = :event_seq")
            .val(":event_seq", n(ending.seq))
            .set("#counted = :counted")
            .remove("#open_pk")
            .remove("#due_at")
            .remove("#pending")
            .remove("#waiting_until")
            .val(
                ":counted",
                attr(&{
                    let mut counted = task.counted;
                    counted += delta;
                    counted
                })?,
            );
        let day = Expr::default()
            .set("#date = :date")
            .add(format!("#{} :one", status.as_str()))
            .add("#input_tokens :i")
            .add("#output_tokens :o")
            .add("#cache_read_input_tokens :cr")
            .add("#cache_creation_input_tokens :cw")
            .add("#cost_nanos :c")
            .val(":date", s(day_of(now)))
            .val(":one", n(1))
            .val(":i", n(delta.input_tokens))
            .val(":o", n(delta.output_tokens))
            .val(":cr", n(delta.cache_read_input_tokens))
            .val(":cw", n(delta.cache_creation_input_tokens))
            .val(":c", n(delta.cost_nanos));
        // One number per model: attribute names must be plain, so the model id is hex-coded.
        let day = by_model
            .iter()
            .enumerate()
            .fold(day, |e, (i, (m, c))| e.add(format!("#{} :m{i}", model_cost_attr(m))).val(&format!(":m{i}"), n(*c)));
        let end_put = match end.answer {
            None => self.event_item_put(ending)?,
            // Under the answer's seq, so a seq written before refuses the whole end.
            Some((step, announced)) => {
                let mut end = ending.to_stored();
                if let Some(data) = end["data"].as_object_mut()
                    && data.get("spent") == announced.data.get("spent")
                {
                    data.remove("spent");
                }
                let item = EventItem { end: Some(end.to_string()), ..self.event_item(announced)? };
                self.put_new(&self.carrying(item, task.task_id, &Step::Model(step.clone())).await?)?
            }
        };
        let mut items = vec![
            TransactWriteItem::builder().update(task_update.on(&self.table, task_key(task.task_id), META)?).build(),
            self.counter(&task.tenant_id, &format!("USAGE#{}", day_of(now)), day)?,
            TransactWriteItem::builder().put(end_put).build(),
        ];
        items.extend(extra);
        self.transact(items).await?;
        // A task waiting for input, or held in its tenant's line, holds no slot of its cap.
        if task.status != TaskStatus::WaitingForInput && !task.held {
            self.give_slot_back(&task.tenant_id).await;
        }
        Ok(())
    }

    /// The put of an event item, never over an existing one (a `seq` is written once).
    fn event_put(&self, event: &TaskEvent) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder().put(self.event_item_put(event)?).build())
    }

    fn event_item_put(&self, event: &TaskEvent) -> Result<Put, StoreError> {
        self.put_new(&self.event_item(event)?)
    }

    fn event_item(&self, event: &TaskEvent) -> Result<EventItem, StoreError> {
        Ok(EventItem {
            pk: task_key(event.task_id),
            sk: event_key(event.seq),
            // Without what the key gives back (`TaskEvent::to_stored`).
            data: event.to_stored().to_string(),
            expires_at: (crate::now() + self.retention).unix_timestamp(),
            step_sk: None,
            step: None,
            step_ref: None,
            end: None,
        })
    }

    /// The put of a `task.step` event holding the model answer it announces.
    async fn step_event_put(&self, id: TaskId, step: &Step, event: &TaskEvent) -> Result<Put, StoreError> {
        self.put_new(&self.carrying(self.event_item(event)?, id, step).await?)
    }

    /// `item` holding `step` too, as its own item would (its JSON text, or a pointer to S3).
    async fn carrying(&self, item: EventItem, id: TaskId, step: &Step) -> Result<EventItem, StoreError> {
        let stored = self.step_item(id, step).await?;
        Ok(EventItem { step_sk: Some(stored.sk), step: stored.data, step_ref: stored.data_ref, ..item })
    }

    /// The put of a step item, never over an existing one.
    async fn step_put(&self, id: TaskId, step: &Step) -> Result<Put, StoreError> {
        self.put_new(&self.step_item(id, step).await?)
    }

    /// A step as stored: its JSON text, or in S3 if too large for an item.
    async fn step_item(&self, id: TaskId, step: &Step) -> Result<StepItem, StoreError> {
        let sk = step.sort_key();
        let text = serde_json::to_string(step).context("serializing a step").map_err(unavailable)?;
        let data_ref = self.spill(format!("tasks/{id}/{sk}"), &text).await?;
        Ok(StepItem {
            pk: task_key(id),
            data: data_ref.is_none().then_some(text),
            data_ref,
            expires_at: (crate::now() + self.retention).unix_timestamp(),
            sk,
        })
    }

    /// The put of an item never written before (a step or an event is written once).
    fn put_new(&self, item: &impl Serialize) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(self::item(item)?))
            .condition_expression("attribute_not_exists(sk)")
            .build()
            .context("building a put")
            .map_err(unavailable)
    }

    /// A query of a task's items whose sort keys begin with `prefix`.
    pub(super) fn under_task(&self, id: TaskId, prefix: &str) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(task_key(id)))
            .expression_attribute_values(":prefix", s(prefix))
    }

    /// A task's recorded steps, in step order, from `after` (a step's sort key) on: step
    /// items and the answers `task.step` events carry, `want` of each at most (all: `None`).
    /// Each source comes back in step order already (a run records its answers in order,
    /// and a fork's inherited steps come before any its own run records).
    async fn step_items(
        &self,
        id: TaskId,
        after: Option<&str>,
        want: Option<usize>,
    ) -> Result<Vec<StepItem>, StoreError> {
        let start = after.map(|sk| HashMap::from([("pk".to_owned(), s(task_key(id))), ("sk".to_owned(), s(sk))]));
        let mut apart = self.under_task(id, "STEP#").consistent_read(true).set_exclusive_start_key(start);
        let mut carried = self.under_task(id, "EVT#").consistent_read(true);
        carried = match after {
            Some(sk) => carried.filter_expression("step_sk > :after").expression_attribute_values(":after", s(sk)),
            None => carried.filter_expression("attribute_exists(step_sk)"),
        };
        if let Some(want) = want {
            apart = apart.limit(want as i32);
        }
        let (apart, carried) = tokio::try_join!(query_up_to(apart, want), query_up_to(carried, want))?;
        let mut items = Vec::with_capacity(apart.len() + carried.len());
        for i in apart {
            items.push(from_item::<StepItem>(i)?);
        }
        for i in carried {
            items.extend(from_item::<EventItem>(i)?.into_step());
        }
        // Stable: a step stored both ways (never written so; it would be a bug) is read once.
        items.sort_by(|a, b| a.sk.cmp(&b.sk));
        items.dedup_by(|a, b| a.sk == b.sk);
        if let Some(want) = want {
            items.truncate(want);
        }
        Ok(items)
    }

    /// Records a step unless one with its key is recorded: the first one stands (a result
    /// recorded by a run that then died, a step a fork copied before).
    async fn put_step_once(&self, id: TaskId, step: &Step) -> Result<(), StoreError> {
        match self.put_alone(self.step_put(id, step).await?).await {
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A put built for a transaction, sent on its own (a plain write: one unit per KB).
    async fn put_alone(&self, put: Put) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .set_condition_expression(put.condition_expression)
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        Ok(())
    }

    /// A stored step's JSON text, fetched from S3 if it was kept there.
    async fn step_text(&self, item: StepItem) -> Result<String, StoreError> {
        match (item.data, item.data_ref) {
            (Some(text), _) => Ok(text),
            (None, Some(key)) => self.unspill(&key).await,
            (None, None) => Err(unavailable(anyhow::anyhow!("step {} has no data", item.sk))),
        }
    }

    /// The lease condition every write of a running task's runner states.
    fn leased(expr: Expr, lease: &Lease) -> Expr {
        expr.when("#status = :running AND #lease_owner = :owner")
            .val(":running", s(TaskStatus::Running.as_str()))
            .val(":owner", s(&lease.owner))
    }

    /// Writes what a run has spent (the model, and usage per model, only once one has
    /// answered: an empty map is never written, as DynamoDB Local's stream cannot show one).
    fn with_spend(e: Expr, spend: &Spend) -> Result<Expr, StoreError> {
        let mut e = e
            .set("#step = :step")
            .set("#usage = :usage")
            .val(":step", n(spend.step))
            .val(":usage", attr(&spend.usage)?);
        if !spend.usage_by_model.is_empty() {
            e = e.set("#usage_by_model = :by_model").val(":by_model", attr(&spend.usage_by_model)?);
        }
        Ok(match &spend.model {
            Some(model) => e.set("#model = :model").val(":model", s(model)),
            None => e,
        })
    }

    fn finish_update(f: &Finish, lease: &Lease) -> Result<Expr, StoreError> {
        let mut e = Self::leased(
            Expr::default()
                .set("#status = :status")
                .set("#updated_at = :now")
                .remove("#lease_owner")
                .remove("#lease_until")
                .val(":status", s(f.status.as_str()))
                .val(":now", rfc3339(f.now)),
            lease,
        );
        if let Some(result) = &f.result {
            e = e.set("#result = :result").val(":result", attr(result)?);
        }
        if let Some(error) = &f.error {
            e = e.set("#error = :error").val(":error", attr(error)?);
        }
        Self::with_spend(e, &f.spend)
    }

    /// Every open task's tenant, counted.
    async fn open_by_tenant(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut counts = BTreeMap::new();
        for shard in 0..OPEN_SHARDS {
            let items = query_all(
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(OPEN_INDEX)
                    .key_condition_expression("open_pk = :p")
                    .expression_attribute_values(":p", s(format!("OPEN#{shard}"))),
            )
            .await?;
            for i in items {
                if let Some(AttributeValue::S(t)) = i.get("tenant_id") {
                    *counts.entry(t.clone()).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl TaskCreate for DynamoStore {
    async fn admit(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let mut held = task.clone();
        held.held = false;
        self.admit_as(&held, admission).await
    }

    async fn hold(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let mut held = task.clone();
        held.held = true;
        self.admit_as(&held, admission).await
    }

    async fn release_held(
        &self,
        tenant: &str,
        holding_only: bool,
        now: OffsetDateTime,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let Some(limits) = self.tenant(tenant).await?.map(|t| t.limits) else { return Ok(Vec::new()) };
        if holding_only && limits.over_cap != crate::domain::tenant::OverCap::Hold {
            return Ok(Vec::new());
        }
        let active = number(self.get_item(tenant_key(tenant), COUNTERS).await?.as_ref(), "active").unwrap_or(0);
        let free = (i64::from(limits.max_running) - active).max(0);
        if free == 0 {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_INDEX)
            .key_condition_expression("open_pk = :p")
            .expression_attribute_values(":p", s(held_line(tenant)))
            .limit(free as i32)
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        let mut started = Vec::new();
        for entry in out.items.unwrap_or_default() {
            let Some(id) = (match entry.get("pk") {
                Some(AttributeValue::S(pk)) => pk.strip_prefix("TASK#").and_then(|id| id.parse::<TaskId>().ok()),
                _ => None,
            }) else {
                continue;
            };
            let update = Expr::default()
                .set("#open_pk = :shard")
                .set("#due_at = :due")
                .set("#updated_at = :now")
                .remove("#held")
                .when("#held = :yes AND #status = :queued")
                .val(":shard", s(open_shard(id)))
                .val(":due", self.due(now))
                .val(":now", rfc3339(now))
                .val(":yes", AttributeValue::Bool(true))
                .val(":queued", s(TaskStatus::Queued.as_str()));
            let slot = self.take_slot(tenant, limits.max_running, now)?;
            let items =
                vec![TransactWriteItem::builder().update(update.on(&self.table, task_key(id), META)?).build(), slot];
            match self.transact(items).await {
                Ok(()) => {
                    if let Some(task) = self.get(id).await? {
                        started.push(task);
                    }
                }
                // Cancelled meanwhile: the next in line. The cap is full again: stop.
                Err(TransactError::Condition(failed)) if failed.first().copied().unwrap_or(false) => continue,
                Err(TransactError::Condition(_)) => break,
                Err(TransactError::Store(e)) => return Err(e),
            }
        }
        Ok(started)
    }

    async fn note_fork(&self, parent: TaskId, fork: &ForkRef) -> Result<(), StoreError> {
        let e = Expr::default()
            .set("#forks = list_append(if_not_exists(#forks, :empty), :one)")
            .when("attribute_exists(#pk)")
            .when("attribute_not_exists(#forks) OR size(#forks) < :max")
            .val(":empty", AttributeValue::L(vec![]))
            .val(":one", AttributeValue::L(vec![attr(fork)?]))
            .val(":max", n(crate::domain::fork::MAX_LISTED_FORKS));
        match self.update_task(parent, e, ReturnValue::None).await {
            // The list is full (or the parent expired): the fork still names its parent.
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn fail_unqueued(
        &self,
        task: &TaskRecord,
        error: &TaskError,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let update = as_seen(
            Expr::default()
                .set("#status = :failed")
                .set("#error = :error")
                .set("#updated_at = :now")
                .val(":failed", s(TaskStatus::Failed.as_str()))
                .val(":error", attr(error)?)
                .val(":now", rfc3339(now)),
            task,
        );
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
        let ending = TaskEvent::ended(task.task_id, task.events + 1, TaskStatus::Failed, &task.spend, Some(error), now);
        self.terminal(task, update, (&ending).into(), &task.spend, now, extra).await
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

    async fn get_with_prompt(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        match self.task_item(id).await? {
            Some(item) => Ok(Some(self.resolve(item, true).await?)),
            None => Ok(None),
        }
    }

    async fn steps(&self, id: TaskId) -> Result<Vec<Step>, StoreError> {
        let items = self.step_items(id, None, None).await?;
        let mut steps = Vec::with_capacity(items.len());
        for i in items {
            let text = self.step_text(i).await?;
            steps.push(serde_json::from_str(&text).context("a stored step").map_err(unavailable)?);
        }
        Ok(steps)
    }

    async fn step_page(&self, id: TaskId, after: Option<&str>, limit: usize) -> Result<StepPage, StoreError> {
        // One more than asked tells whether more follow.
        let items = self.step_items(id, after, Some(limit + 1)).await?;
        let mut more = items.len() > limit;
        let (mut steps, mut bytes, mut last) = (Vec::new(), 0, None);
        for item in items.into_iter().take(limit) {
            let sk = item.sk.clone();
            let text = self.step_text(item).await?;
            if !steps.is_empty() && bytes + text.len() > STEP_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += text.len();
            steps.push(serde_json::from_str(&text).context("a stored step").map_err(unavailable)?);
            last = Some(sk);
        }
        Ok(StepPage { steps, next: if more { last } else { None } })
    }

    async fn events(&self, id: TaskId, after: u32, limit: usize) -> Result<EventPage, StoreError> {
        let stored = async {
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(task_key(id)))
                // From `after`'s own item: an answer's holds the end written with it, the next.
                .expression_attribute_values(":from", s(event_key(after)))
                .expression_attribute_values(":to", s(event_key(999_999)))
                .consistent_read(true)
                // One more than asked tells whether more follow, past `after`'s item (every
                // other item holds at least one event after it).
                .limit(limit as i32 + 2)
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))
        };
        // The first page begins with the task's first event, derived from its item (a task
        // stored before that was so has it stored, and it is read as any other).
        let task = async { if after == 0 { self.task_item(id).await } else { Ok(None) } };
        let (out, task) = futures::try_join!(stored, task)?;
        let mut events = Vec::new();
        for i in out.items.unwrap_or_default() {
            let item: EventItem = from_item(i)?;
            events.extend(item.events()?.into_iter().filter(|e| e.seq > after));
        }
        if let Some(task) = task
            && events.first().is_none_or(|e| e.seq != 1)
        {
            events.insert(0, TaskEvent::accepted(&task.record));
        }
        let more = events.len() > limit;
        events.truncate(limit);
        let next = if more { events.last().map(|e| e.seq) } else { None };
        Ok(EventPage { events, next })
    }

    async fn list(
        &self,
        tenant: &str,
        status: Option<TaskStatus>,
        limit: usize,
        after: Option<TaskId>,
    ) -> Result<Page, StoreError> {
        // The index's entries first, then gsi1's (tasks written before the index existed, all
        // older, so the order holds); then the page's items, read in one batch.
        let mut scan = ListScan { ids: Vec::new(), examined: 0, want: limit + 1, status, next: None };
        for (index, pk, sk) in [(TASKS_INDEX, "tasks_pk", "task_id"), (INDEX, "gsi1pk", "gsi1sk")] {
            if !self.list_ids(&mut scan, index, (pk, sk), tenant, after).await? {
                break;
            }
        }
        let next = if scan.ids.len() > limit {
            scan.ids.truncate(limit);
            scan.ids.last().copied()
        } else {
            scan.next
        };
        let mut tasks: Vec<TaskRecord> = self
            .read_many(&scan.ids, None)
            .await?
            .into_iter()
            .map(|i| from_item::<TaskItem>(i).map(|t| t.record))
            .collect::<Result<_, _>>()?;
        tasks.sort_by_key(|t| std::cmp::Reverse(t.task_id));
        Ok(Page { tasks, next })
    }
}

/// What a list has found so far, across the indexes it reads.
struct ListScan {
    /// The tasks of the page, newest first, one more than it shows (to know another follows).
    ids: Vec<TaskId>,
    /// Index entries examined so far (a status filter skips some).
    examined: usize,
    want: usize,
    status: Option<TaskStatus>,
    /// Where the next page starts when the examine limit stopped the scan.
    next: Option<TaskId>,
}

impl DynamoStore {
    /// Reads a tenant's task ids from `index` into `scan`, newest first from before `after`.
    /// True when the index had no more of them (the next index may go on).
    async fn list_ids(
        &self,
        scan: &mut ListScan,
        index: &str,
        (pk, sk): (&str, &str),
        tenant: &str,
        after: Option<TaskId>,
    ) -> Result<bool, StoreError> {
        let mut start = None;
        // A status filter applies after DynamoDB's limit: a page is filled by reading on, but
        // never past `LIST_EXAMINE_LIMIT` entries; then the cursor is the last entry examined,
        // so whatever lies beyond is read next time and nothing is skipped.
        loop {
            let want = scan.want - scan.ids.len();
            let batch = if scan.status.is_some() { 100 } else { want };
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .expression_attribute_names("#pk", pk)
                .expression_attribute_values(":pk", s(tasks_index(tenant)))
                .scan_index_forward(false)
                .limit(batch.min(LIST_EXAMINE_LIMIT - scan.examined).max(1) as i32)
                .set_exclusive_start_key(start.take());
            q = match after {
                Some(id) => q
                    .key_condition_expression("#pk = :pk AND #sk < :after")
                    .expression_attribute_names("#sk", sk)
                    .expression_attribute_values(":after", s(id.to_string())),
                None => q.key_condition_expression("#pk = :pk"),
            };
            if let Some(status) = scan.status {
                q = q
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            let out = q.send().await.map_err(|e| sdk_error("Query", e))?;
            scan.examined += out.scanned_count().max(0) as usize;
            for i in out.items.unwrap_or_default() {
                if let Some(AttributeValue::S(id)) = i.get(sk) {
                    scan.ids.push(id.parse().context("a task id in the index").map_err(unavailable)?);
                }
                if scan.ids.len() >= scan.want {
                    return Ok(false);
                }
            }
            let Some(key) = out.last_evaluated_key else { return Ok(true) };
            if scan.examined >= LIST_EXAMINE_LIMIT {
                scan.next = match key.get(sk) {
                    Some(AttributeValue::S(id)) => id.parse().ok(),
                    _ => None,
                };
                return Ok(false);
            }
            start = Some(key);
        }
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
            let r = match task.status {
                s if s.is_terminal() => return Ok(Cancelled::AlreadyFinished(s)),
                // Nobody runs either: it ends now.
                TaskStatus::Queued | TaskStatus::WaitingForInput => {
                    let update = as_seen(
                        Expr::default()
                            .set("#status = :cancelled")
                            .set("#updated_at = :now")
                            .set("#error = :error")
                            .val(":cancelled", s(TaskStatus::Cancelled.as_str()))
                            .val(":now", rfc3339(now))
                            .val(":error", attr(&cancelled_error())?),
                        &task,
                    );
                    let error = cancelled_error();
                    let ending =
                        TaskEvent::ended(id, task.events + 1, TaskStatus::Cancelled, &task.spend, Some(&error), now);
                    self.terminal(&task, update, (&ending).into(), &task.spend, now, vec![])
                        .await
                        .map(|()| Cancelled::Now)
                }
                _ => self
                    .update_task(
                        id,
                        Expr::default()
                            .set("#cancel_requested = :yes")
                            .set("#updated_at = :now")
                            .when("#status = :running")
                            .val(":yes", AttributeValue::Bool(true))
                            .val(":running", s(TaskStatus::Running.as_str()))
                            .val(":now", rfc3339(now)),
                        ReturnValue::None,
                    )
                    .await
                    .map(|_| Cancelled::Requested),
            };
            match r {
                Err(StoreError::Conflict) => continue,
                other => return other,
            }
        }
        Err(StoreError::Contended)
    }
}

#[async_trait]
impl TaskRun for DynamoStore {
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError> {
        let claimed = self
            .update_task(
                id,
                Expr::default()
                    .set("#status = :running")
                    .set("#lease_owner = :owner")
                    .set("#lease_until = :until")
                    .set("#updated_at = :now")
                    .set("#started_at = if_not_exists(#started_at, :now)")
                    // The due time stays: moving it would rewrite the task's entry in the
                    // `open` index (two more write units a task). A task still running when
                    // it falls due is put off by the reconciler (`put_off_while_leased`).
                    .add("#attempts :one")
                    // The seq of the run's started event, reserved here (`record_started`).
                    .add("#events :one")
                    .when("attribute_exists(#pk)")
                    .when("attribute_not_exists(#held)")
                    .when("#status = :queued OR (#status = :running AND #lease_until < :now_ms)")
                    .val(":running", s(TaskStatus::Running.as_str()))
                    .val(":queued", s(TaskStatus::Queued.as_str()))
                    .val(":owner", s(&lease.owner))
                    .val(":until", n(millis(lease.until)))
                    .val(":now", rfc3339(now))
                    .val(":now_ms", n(millis(now)))
                    .val(":one", n(1)),
                ReturnValue::AllNew,
            )
            .await;
        match claimed {
            Ok(Some(item)) => match self.resolve(from_item::<TaskItem>(item)?, true).await {
                Ok(record) => Ok(Claim::Claimed(Box::new(record))),
                Err(e) => {
                    // Claimed but unreadable (its prompt object is gone, say): give it back
                    // rather than hold it until the lease runs out.
                    let why = TaskError::new(ErrorCode::StoreError, "the task's stored content could not be read");
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

    async fn finish(&self, task: &TaskRecord, lease: &Lease, f: &Finish) -> Result<(), StoreError> {
        let mut f = f.clone();
        let mut result_ref = None;
        if let Some(result) = f.result.as_mut() {
            result_ref = self.spill(format!("tasks/{}/result", task.task_id), &result.text).await?;
            if result_ref.is_some() {
                result.text = String::new();
            }
        }
        let mut update = Self::finish_update(&f, lease)?;
        if let Some(key) = result_ref {
            // The pointer is written with the rest of the terminal state.
            update = update.set("#result_ref = :result_ref").val(":result_ref", s(key));
        }
        let end = Ending { event: &f.event, answer: f.last_step.as_ref().map(|(step, event)| (step, event)) };
        self.terminal(task, update, end, &f.spend, f.now, vec![]).await
    }

    async fn record_model_step(
        &self,
        id: TaskId,
        lease: &Lease,
        step: &ModelStep,
        progress: &Progress,
    ) -> Result<StepAck, StoreError> {
        // Two plain writes, where one transaction of both items cost twice the units: first the
        // record's progress, whose condition is the lease (and, first, that no cancel is
        // pending), so a runner that lost its lease is stopped before it writes anything; then
        // the step's event holding the answer, never over an existing one. A runner that dies
        // between the two leaves the progress without its event: that seq goes unused (readers
        // page by seq and pass over it), and the next run, which rebuilds its spend from the
        // recorded steps, asks the model again, as for an answer still in flight.
        let put = self.step_event_put(id, &Step::Model(step.clone()), &progress.event).await?;
        let progress_update = |watch_cancel: bool| -> Result<Update, StoreError> {
            let mut e = Self::leased(
                Expr::default()
                    .set("#updated_at = :now")
                    .set("#events = :event_seq")
                    .val(":now", rfc3339(progress.now))
                    .val(":event_seq", n(progress.event.seq)),
                lease,
            );
            if watch_cancel {
                e = e.when("attribute_not_exists(#cancel_requested)");
            }
            Self::with_spend(e, &progress.spend)?.on(&self.table, task_key(id), META)
        };
        let ack = match self.update_contended(progress_update(true)?).await {
            Ok(()) => StepAck::Continue,
            Err(StoreError::Conflict) => {
                // The record refused: a cancel is pending, or the lease is gone. One read tells;
                // a paid answer is recorded either way the lease allows.
                let held = self.task_item(id).await?.is_some_and(|i| {
                    i.record.status == TaskStatus::Running && i.lease_owner.as_deref() == Some(lease.owner.as_str())
                });
                if !held {
                    return Err(StoreError::Conflict);
                }
                self.update_contended(progress_update(false)?).await?;
                StepAck::CancelRequested
            }
            Err(e) => return Err(e),
        };
        // `Conflict` if the step's event is there already: this answer was recorded before.
        self.put_alone(put).await?;
        Ok(ack)
    }

    async fn record_tool_step(&self, id: TaskId, step: &ToolStep) -> Result<(), StoreError> {
        self.put_step_once(id, &Step::Tool(step.clone())).await
    }

    async fn inherit(&self, id: TaskId, steps: &[Step]) -> Result<(), StoreError> {
        // Once per fork, a few dozen items: one conditional put each, in order.
        for step in steps {
            self.put_step_once(id, step).await?;
        }
        Ok(())
    }

    async fn record_started(&self, _: TaskId, event: &TaskEvent) -> Result<(), StoreError> {
        // One write unit, where a transaction with the task's counter cost four: the claim
        // moved the counter already.
        self.put_alone(self.event_item_put(event)?).await
    }

    async fn release(&self, id: TaskId, lease: &Lease, why: &TaskError, now: OffsetDateTime) -> Result<(), StoreError> {
        self.give_back(id, lease, why, None, now).await
    }

    async fn pause(
        &self,
        id: TaskId,
        lease: &Lease,
        why: &TaskError,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.give_back(id, lease, why, Some(until), now).await
    }

    async fn wait(&self, task: &TaskRecord, lease: &Lease, w: &Wait) -> Result<(), StoreError> {
        let pending = serde_json::to_string(&w.pending).context("serializing pending calls").map_err(unavailable)?;
        let e = Self::leased(
            Expr::default()
                .set("#status = :waiting")
                .set("#updated_at = :now")
                .set("#pending = :pending")
                .set("#waiting_until = :until")
                .set("#open_pk = :wait_shard")
                .set("#due_at = :due")
                .set("#events = :event_seq")
                .remove("#lease_owner")
                .remove("#lease_until")
                .when("attribute_not_exists(#cancel_requested)")
                .val(":waiting", s(TaskStatus::WaitingForInput.as_str()))
                .val(":now", rfc3339(w.now))
                .val(":pending", s(pending))
                .val(":until", rfc3339(w.until))
                .val(":wait_shard", s(wait_shard(task.task_id)))
                .val(":due", n(millis(w.until)))
                .val(":event_seq", n(w.event.seq)),
            lease,
        );
        let items = vec![
            TransactWriteItem::builder().update(e.on(&self.table, task_key(task.task_id), META)?).build(),
            self.active_change(&task.tenant_id, -1, w.now)?,
            self.event_put(&w.event)?,
        ];
        Ok(self.transact(items).await?)
    }
}

#[async_trait]
impl TaskInput for DynamoStore {
    async fn resume(
        &self,
        task: &TaskRecord,
        decisions: &[Decision],
        event: &TaskEvent,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // The wait does not count as run time: the start moves forward by it, so the run's
        // wall-time limit measures the task's own work. Claims start over (a person decided).
        let waited = task.waiting_until.map_or(time::Duration::ZERO, |_| now - task.updated_at);
        let mut e = as_seen(
            Expr::default()
                .set("#status = :queued")
                .set("#updated_at = :now")
                .set("#open_pk = :shard")
                .set("#due_at = :due")
                .set("#events = :event_seq")
                .set("#attempts = :zero")
                .remove("#pending")
                .remove("#waiting_until")
                .when("#updated_at = :seen_updated")
                .val(":queued", s(TaskStatus::Queued.as_str()))
                .val(":now", rfc3339(now))
                .val(":shard", s(open_shard(task.task_id)))
                .val(":due", self.due(now))
                .val(":event_seq", n(event.seq))
                .val(":zero", n(0))
                .val(":seen_updated", rfc3339(task.updated_at)),
            task,
        );
        if let Some(started) = task.started_at {
            e = e.set("#started_at = :started").val(":started", rfc3339(started + waited));
        }
        let mut items = vec![
            TransactWriteItem::builder().update(e.on(&self.table, task_key(task.task_id), META)?).build(),
            self.active_change(&task.tenant_id, 1, now)?,
            self.event_put(event)?,
        ];
        for d in decisions {
            items.push(
                TransactWriteItem::builder()
                    .put(self.step_put(task.task_id, &Step::Decision(d.clone())).await?)
                    .build(),
            );
        }
        Ok(self.transact(items).await?)
    }
}

#[async_trait]
impl TaskDeadLetter for DynamoStore {
    async fn fail_abandoned(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.task_item(id).await? else { return Ok(false) };
        let task = item.record;
        if task.status.is_terminal() {
            return Ok(false);
        }
        // Whatever state it is in, it is not the one its runner left, if it left one; the
        // condition pins the state we saw so a task that moves meanwhile is not overwritten,
        // and a live lease (a runner at work) keeps it.
        let update = as_seen(
            Expr::default()
                .set("#status = :failed")
                .set("#error = :error")
                .set("#updated_at = :now")
                .remove("#lease_owner")
                .remove("#lease_until")
                .when("attribute_not_exists(#lease_until) OR #lease_until < :now_ms")
                .val(":failed", s(TaskStatus::Failed.as_str()))
                .val(":error", attr(error)?)
                .val(":now", rfc3339(now))
                .val(":now_ms", n(millis(now))),
            &task,
        );
        let ending = TaskEvent::ended(id, task.events + 1, TaskStatus::Failed, &task.spend, Some(error), now);
        match self.terminal(&task, update, (&ending).into(), &task.spend, now, vec![]).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn requeue(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let Some(item) = self.task_item(id).await? else { return Ok(false) };
        let task = item.record;
        if task.status != TaskStatus::Failed {
            return Ok(false);
        }
        let update = as_seen(
            Expr::default()
                .set("#status = :queued")
                .set("#updated_at = :now")
                .set("#open_pk = :shard")
                .set("#due_at = :due")
                .remove("#error")
                .val(":queued", s(TaskStatus::Queued.as_str()))
                .val(":now", rfc3339(now))
                .val(":shard", s(open_shard(id)))
                .val(":due", self.due(now)),
            &task,
        );
        let queued = TaskEvent::queued(&task, task.events + 1, now);
        let update = update.set("#events = :event_seq").val(":event_seq", n(queued.seq));
        // It runs again: it counts as running, and no longer as failed on the day it failed.
        let failed_day = Expr::default().add("#failed :minus").val(":minus", n(-1));
        let items = vec![
            TransactWriteItem::builder().update(update.on(&self.table, task_key(id), META)?).build(),
            self.active_change(&task.tenant_id, 1, now)?,
            self.counter(&task.tenant_id, &format!("USAGE#{}", day_of(task.updated_at)), failed_day)?,
            self.event_put(&queued)?,
        ];
        match self.transact(items).await {
            Ok(()) => Ok(true),
            Err(TransactError::Condition(_)) => Ok(false),
            Err(TransactError::Store(e)) => Err(e),
        }
    }
}

#[async_trait]
impl TaskReconcile for DynamoStore {
    async fn due(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<TaskId>, StoreError> {
        let mut ids = Vec::new();
        let partitions = (0..OPEN_SHARDS).flat_map(|shard| [format!("OPEN#{shard}"), format!("WAIT#{shard}")]);
        for partition in partitions {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OPEN_INDEX)
                .key_condition_expression("open_pk = :p AND due_at < :now")
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":now", n(millis(now)))
                .limit(limit.saturating_sub(ids.len()).max(1) as i32)
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            ids.extend(out.items.unwrap_or_default().iter().filter_map(|i| match i.get("pk") {
                Some(AttributeValue::S(pk)) => pk.strip_prefix("TASK#").and_then(|id| id.parse::<TaskId>().ok()),
                _ => None,
            }));
            if ids.len() >= limit {
                break;
            }
        }
        ids.truncate(limit);
        Ok(ids)
    }

    async fn reschedule(
        &self,
        task: &TaskRecord,
        due: OffsetDateTime,
        resent: bool,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut e = Expr::default()
            .set("#due_at = :due")
            .when("#status = :seen_status AND #updated_at = :seen_updated")
            .val(":due", n(millis(due)))
            .val(":seen_status", s(task.status.as_str()))
            .val(":seen_updated", rfc3339(task.updated_at));
        if resent {
            e = e.add("#resends :one").set("#last_resent_at = :now").val(":one", n(1)).val(":now", rfc3339(now));
        }
        match self.update_task(task.task_id, e, ReturnValue::None).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_off_while_leased(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError> {
        // One write, no read: the due time is computed from the stored lease.
        let e = Expr::default()
            .set("#due_at = #lease_until + :grace")
            .when("#status = :running AND #lease_until > :now_ms")
            .val(":grace", n(self.reconcile_after.as_millis() as i64))
            .val(":running", s(TaskStatus::Running.as_str()))
            .val(":now_ms", n(millis(now)));
        match self.update_task(id, e, ReturnValue::None).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let tenants = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("gsi1pk = :t")
                .expression_attribute_values(":t", s("TENANTS")),
        )
        .await?;
        Ok(tenants
            .iter()
            .filter_map(|t| match t.get("gsi1sk") {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            })
            .collect())
    }

    async fn repair_counts(&self, quiet: Duration, now: OffsetDateTime) -> Result<Vec<CountRepair>, StoreError> {
        let started = millis(now);
        let mut open = self.open_by_tenant().await?;
        // Tenants with nothing open are in the truth too: their count should be 0.
        for id in self.tenants().await? {
            open.entry(id).or_default();
        }
        let mut repairs = Vec::new();
        for (tenant, truth) in open {
            let item = self.get_item(tenant_key(&tenant), COUNTERS).await?;
            let counted = number(item.as_ref(), "active").unwrap_or(0);
            if counted == truth {
                continue;
            }
            // Only a count that has not moved for `quiet` is compared with an index that may
            // lag its table; the write's condition makes sure it still has not.
            let moved = number(item.as_ref(), "updated_ms");
            let settled = moved.is_none_or(|ms| ms < started - quiet.as_millis() as i64);
            let mut repaired = false;
            if settled {
                let mut e = Expr::default()
                    .set("#active = :truth")
                    .set("#updated_ms = :now_ms")
                    .val(":truth", n(truth))
                    .val(":now_ms", n(started));
                e = match (item.is_some(), moved) {
                    (true, Some(ms)) => e
                        .when("#active = :seen AND #updated_ms = :seen_ms")
                        .val(":seen", n(counted))
                        .val(":seen_ms", n(ms)),
                    (true, None) => {
                        e.when("#active = :seen AND attribute_not_exists(#updated_ms)").val(":seen", n(counted))
                    }
                    (false, _) => e.when("attribute_not_exists(#pk)"),
                };
                let u = e.on(&self.table, tenant_key(&tenant), COUNTERS)?;
                repaired = match self.send_update(u, ReturnValue::None).await {
                    Ok(_) => true,
                    Err(StoreError::Conflict | StoreError::Contended) => false,
                    Err(e) => return Err(e),
                };
            }
            repairs.push(CountRepair { tenant, counted, open: truth, repaired });
        }
        Ok(repairs)
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
        let record = TenantItem {
            pk: tenant_key(&tenant.tenant_id),
            sk: META.into(),
            // Every tenant is listed under `TENANTS`, for the reconciler.
            gsi1pk: Some("TENANTS".into()),
            gsi1sk: Some(tenant.tenant_id.clone()),
            tenant: tenant.clone(),
        };
        self.put(&record).await
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

impl DynamoStore {
    /// One request of the rate limit and, when `slot_max` is given, one running slot under
    /// it, in one conditional update of the tenant's counters.
    ///
    /// The bucket is one number (see `Gcra`), so a request is one atomic conditional update:
    /// `tat + interval` while the bucket is in use, `now + interval` when it has refilled
    /// (tat < now). Concurrent requests never invalidate each other's reads, as nothing is
    /// read first; a refused one learns the stored values from the failure: the bucket's (the
    /// limit refuses, or the other branch applies now) and the count's (at the cap, the
    /// request is taken alone).
    async fn take_counters(
        &self,
        tenant: &str,
        limits: &Limits,
        mut slot_max: Option<u32>,
        now: OffsetDateTime,
    ) -> Result<Entry, StoreError> {
        let gcra = Gcra::new(limits);
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        let mut full = false;
        // A value seen ahead of now means the bucket is in use (it only grows); one behind it
        // may be stale, so the first guess is then that the bucket is idle.
        let mut seen: Option<i64> = self.bucket_seen(tenant, None, now_us);
        for attempt in 0..6 {
            let busy = seen.is_some_and(|tat| tat >= now_us);
            let mut e = if busy {
                // In use: spend one interval of what is left, if the burst allows.
                Expr::default()
                    .set("#tat = #tat + :interval")
                    .when("#tat >= :now AND #tat <= :last")
                    .val(":interval", n(gcra.interval_us))
                    .val(":now", n(now_us))
                    .val(":last", n(now_us + gcra.tolerance_us - gcra.interval_us))
            } else {
                // Idle (or never used): the burst is whole again.
                Expr::default()
                    .set("#tat = :next")
                    .when("attribute_not_exists(#tat) OR #tat < :now")
                    .val(":next", n(now_us + gcra.interval_us))
                    .val(":now", n(now_us))
            };
            if let Some(max) = slot_max {
                e = e
                    .add("#active :one")
                    .set("#updated_ms = :now_ms")
                    .when("attribute_not_exists(#active) OR #active < :max")
                    .val(":one", n(1))
                    .val(":now_ms", n(millis(now)))
                    .val(":max", n(max));
            }
            let update = e.on(&self.table, tenant_key(tenant), COUNTERS)?;
            let sent = self
                .client
                .update_item()
                .table_name(update.table_name)
                .set_key(Some(update.key))
                .update_expression(update.update_expression)
                .set_condition_expression(update.condition_expression)
                .set_expression_attribute_names(update.expression_attribute_names)
                .set_expression_attribute_values(update.expression_attribute_values)
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            let slot = |taken: bool| match (taken, full) {
                (true, _) => Slot::Taken,
                (false, true) => Slot::Full,
                (false, false) => Slot::Take,
            };
            let old = match sent {
                Ok(out) => {
                    let tat = number(out.attributes.as_ref(), "tat").unwrap_or(now_us + gcra.interval_us);
                    self.bucket_seen(tenant, Some(tat), now_us);
                    // The decision as of the value before ours.
                    let rate = gcra.decide(Some(tat - gcra.interval_us), now_us).1;
                    return Ok(Entry { rate, slot: slot(slot_max.is_some()) });
                }
                Err(e) => {
                    let old = match e.as_service_error() {
                        Some(
                            aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                                ex,
                            ),
                        ) => ex.item().cloned(),
                        _ => None,
                    };
                    match (old, sdk_error("UpdateItem", e)) {
                        (Some(old), _) => old,
                        (None, StoreError::Contended) => {
                            tokio::time::sleep(contention_pause(attempt)).await;
                            continue;
                        }
                        // The failure did not say what it found (an emulator may not): look.
                        (None, StoreError::Conflict) => {
                            self.get_item(tenant_key(tenant), COUNTERS).await?.unwrap_or_default()
                        }
                        (None, other) => return Err(other),
                    }
                }
            };
            let tat = number(Some(&old), "tat");
            self.bucket_seen(tenant, tat, now_us);
            let rate = gcra.decide(tat, now_us).1;
            if !rate.allowed {
                return Ok(Entry { rate, slot: Slot::Take });
            }
            if slot_max.is_some_and(|max| number(Some(&old), "active").is_some_and(|a| a >= i64::from(max))) {
                // At the cap: the request is taken alone.
                slot_max = None;
                full = true;
            }
            // Else the other branch applies now (the bucket went idle, or came into use,
            // between our two guesses).
            seen = tat.or(Some(now_us - 1));
        }
        Err(StoreError::Contended)
    }
}

impl DynamoStore {
    /// Notes `tat` as the tenant's bucket seen now, if given; returns the last one seen.
    fn bucket_seen(&self, tenant: &str, tat: Option<i64>, now_us: i64) -> Option<i64> {
        let mut seen = self.buckets_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tat) = tat {
            // Tenants whose buckets went idle tell nothing any more: the map stays small.
            if seen.len() > 10_000 {
                seen.retain(|_, t| *t > now_us);
            }
            let last = seen.entry(tenant.to_owned()).or_insert(tat);
            *last = (*last).max(tat);
        }
        seen.get(tenant).copied()
    }
}

#[async_trait]
impl RateLimiter for DynamoStore {
    async fn take(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<RateDecision, StoreError> {
        Ok(self.take_counters(tenant, limits, None, now).await?.rate)
    }

    async fn take_with_slot(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<Entry, StoreError> {
        self.take_counters(tenant, limits, Some(limits.max_running), now).await
    }

    async fn give_slot_back(&self, tenant: &str) {
        DynamoStore::give_slot_back(self, tenant).await
    }

    async fn take_up_to(
        &self,
        tenant: &str,
        limits: &Limits,
        want: u32,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        // Read the bucket, then set it only if nobody moved it meanwhile.
        let gcra = Gcra::new(limits);
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        for attempt in 0..8 {
            let tat = number(self.get_item(tenant_key(tenant), COUNTERS).await?.as_ref(), "tat");
            let (granted, next) = gcra.decide_many(tat, now_us, want);
            if granted == 0 {
                return Ok(0);
            }
            let e = Expr::default().set("#tat = :next").val(":next", n(next));
            let e = match tat {
                Some(seen) => e.when("#tat = :seen").val(":seen", n(seen)),
                None => e.when("attribute_not_exists(#tat)"),
            };
            match self.send_update(e.on(&self.table, tenant_key(tenant), COUNTERS)?, ReturnValue::None).await {
                Ok(_) => return Ok(granted),
                Err(StoreError::Conflict | StoreError::Contended) => {
                    tokio::time::sleep(contention_pause(attempt)).await
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended)
    }
}

#[async_trait]
impl UsageRead for DynamoStore {
    async fn month_cost(&self, tenant: &str, month: &str) -> Result<u64, StoreError> {
        // The month's days, summed: read by a submit only when its tenant has a budget, where a
        // month counter of its own would be one more item in every task's ending transaction.
        // (Tables older than this change kept `MONTH#` items too; their days hold the same sum.)
        let days = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :month)")
                .expression_attribute_values(":pk", s(tenant_key(tenant)))
                .expression_attribute_values(":month", s(format!("USAGE#{month}-")))
                .projection_expression("cost_nanos")
                .consistent_read(true),
        )
        .await?;
        Ok(days.iter().map(|d| number(Some(d), "cost_nanos").unwrap_or(0).max(0) as u64).sum())
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

/// The day item's attribute for one model's cost: `model_cost_` and the id in hex.
fn model_cost_attr(model: &str) -> String {
    let hex: String = model.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{MODEL_COST}{hex}")
}

const MODEL_COST: &str = "model_cost_";

/// The models' costs a day item holds.
fn model_costs(item: &HashMap<String, AttributeValue>) -> BTreeMap<String, u64> {
    item.iter()
        .filter_map(|(k, v)| {
            let hex = k.strip_prefix(MODEL_COST)?;
            let bytes: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
            let cost = match v {
                AttributeValue::N(n) => n.parse::<u64>().ok()?,
                _ => return None,
            };
            Some((String::from_utf8(bytes?).ok()?, cost))
        })
        .collect()
}

fn day_usage(item: &HashMap<String, AttributeValue>) -> DayUsage {
    let num = |name: &str| number(Some(item), name).unwrap_or(0).max(0) as u64;
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
        cost_by_model: model_costs(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_cost_attribute_names_any_model_id_and_reads_back() {
        let ids = ["claude-sonnet-4-5", "anthropic.claude-3-haiku-20240307-v1:0", "gpt-4o/mini é"];
        let item: HashMap<String, AttributeValue> =
            ids.iter().enumerate().map(|(i, m)| (model_cost_attr(m), n(i + 1))).collect();
        assert!(item.keys().all(|k| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')));
        let back = model_costs(&item);
        assert_eq!(back.len(), 3);
        assert_eq!(back["anthropic.claude-3-haiku-20240307-v1:0"], 2);
    }

    #[test]
    fn placeholders_are_found_in_expressions() {
        let names: Vec<_> = attribute_names("SET #status = :s, #lease_until = :u REMOVE #a_b").collect();
        assert_eq!(names, ["status", "lease_until", "a_b"]);
    }

    #[test]
    fn an_expression_joins_its_clauses_and_conditions() {
        let e = Expr::default().set("#a = :a").add("#n :one").remove("#r").when("#a = :x").when("#b < :y");
        assert_eq!(e.update_expression(), "SET #a = :a ADD #n :one REMOVE #r");
        assert_eq!(e.condition().unwrap(), "(#a = :x) AND (#b < :y)");
    }

    #[test]
    fn a_new_tasks_stream_image_is_its_first_event_and_an_event_items_are_its_events() {
        let request = crate::domain::task::TaskRequest::parse(br#"{"prompt":"hi"}"#, &Default::default()).unwrap();
        let task = TaskRecord::new(request, "acme", crate::now());
        let stored = TaskItem {
            pk: task_key(task.task_id),
            sk: META.into(),
            tasks_pk: Some(tasks_index("acme")),
            gsi1pk: None,
            gsi1sk: None,
            record: task.clone(),
            lease_owner: None,
            lease_until: None,
            expires_at: 1,
            prompt_ref: None,
            prompt_apart: false,
            result_ref: None,
            open_pk: Some(open_shard(task.task_id)),
            due_at: Some(1),
        };
        fn image(v: &impl Serialize) -> serde_dynamo::Item {
            serde_dynamo::to_item(v).unwrap()
        }
        assert_eq!(inserted_events(image(&stored)).unwrap(), vec![TaskEvent::accepted(&task)]);
        let started = TaskEvent::started(&task, 2, crate::now());
        let event = EventItem {
            pk: task_key(task.task_id),
            sk: event_key(2),
            data: serde_json::to_string(&started).unwrap(),
            expires_at: 1,
            step_sk: None,
            step: None,
            step_ref: None,
            end: None,
        };
        assert_eq!(inserted_events(image(&event)).unwrap(), vec![started.clone()]);
        // An answer written with the end after it: both, the answer's first.
        let step = ModelStep {
            step: 1,
            model: "m".into(),
            content: vec![],
            stop_reason: crate::llm::StopReason::EndTurn,
            usage: Default::default(),
            call: None,
        };
        let answered = TaskEvent::step(task.task_id, 3, &step, &task.spend, crate::now());
        let ended = TaskEvent::ended(task.task_id, 4, TaskStatus::Succeeded, &task.spend, None, crate::now());
        let end = EventItem {
            sk: event_key(3),
            data: serde_json::to_string(&answered).unwrap(),
            end: Some(serde_json::to_string(&ended).unwrap()),
            ..event
        };
        assert_eq!(inserted_events(image(&end)).unwrap(), vec![answered, ended]);
        let tenant: serde_dynamo::Item =
            HashMap::from([("pk".to_owned(), s("TENANT#acme")), ("sk".to_owned(), s(META))]).into();
        assert_eq!(inserted_events(tenant).unwrap(), vec![], "not a task's");
        let broken: serde_dynamo::Item =
            HashMap::from([("pk".to_owned(), s(task_key(task.task_id))), ("sk".to_owned(), s(event_key(3)))]).into();
        assert!(inserted_events(broken).is_err(), "an event item without its event says so");
    }
}
