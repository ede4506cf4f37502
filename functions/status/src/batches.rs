//! A batch as a whole: `GET /v1/batches/{id}` (counts by status, then its items with each
//! task's status and result, a page at a time) and `DELETE /v1/batches/{id}` (cancels every
//! task of it that has not ended). Another tenant's batch is the same 404 as a missing one.

use std::collections::BTreeMap;

use agentq::domain::batch::{BatchRecord, is_batch_id};
use agentq::domain::task::{TaskId, TaskStatus};
use agentq::edge::api::ResultView;
use agentq::edge::auth::Caller;
use agentq::edge::http::{ApiError, json_response};
use agentq::store::Cancelled;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use crate::{App, cursor, limit};

/// Items per page when the request names none, and the most it may name.
const DEFAULT_ITEMS: usize = 100;
const MAX_ITEMS: usize = 1000;
/// Cancels at once.
const CANCELS: usize = 8;

async fn owned(app: &App, caller: &Caller, raw: &str) -> Result<BatchRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("no batch with id {raw:?}"));
    if !is_batch_id(raw) {
        return Err(not_found());
    }
    app.store.batch(&caller.tenant.tenant_id, raw).await?.ok_or_else(not_found)
}

fn task_ids(batch: &BatchRecord) -> Vec<TaskId> {
    batch.items.iter().filter_map(|i| i.task_id).collect()
}

pub(crate) async fn get(app: &App, caller: &Caller, raw: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let limit = limit(req, DEFAULT_ITEMS, MAX_ITEMS)?;
    let from = cursor(req, |c| c.parse::<usize>().ok())?.unwrap_or(0);
    let batch = owned(app, caller, raw).await?;
    let statuses: BTreeMap<TaskId, TaskStatus> = app.store.statuses(&task_ids(&batch)).await?.into_iter().collect();
    let mut counts: BTreeMap<&str, usize> = TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for status in statuses.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    let rejected = batch.items.iter().filter(|i| i.task_id.is_none()).count();
    counts.insert("rejected", rejected);
    let done = statuses.values().all(|s| s.is_terminal());

    let page: Vec<(usize, &agentq::domain::batch::BatchItem)> =
        batch.items.iter().enumerate().skip(from).take(limit).collect();
    let ids: Vec<TaskId> = page.iter().filter_map(|(_, i)| i.task_id).collect();
    let tasks: BTreeMap<TaskId, agentq::domain::task::TaskRecord> =
        app.store.tasks(&ids).await?.into_iter().map(|t| (t.task_id, t)).collect();
    let items: Vec<Value> = page
        .iter()
        .map(|(index, item)| {
            let mut v = json!({"index": index});
            if let Some(c) = &item.custom_id {
                v["custom_id"] = json!(c);
            }
            if let Some(e) = &item.error {
                v["error"] = json!(e);
            }
            if let Some(task) = item.task_id.and_then(|id| tasks.get(&id)) {
                v["task_id"] = json!(task.task_id);
                v["status"] = json!(task.status);
                if let Some(result) = &task.result {
                    v["result"] = json!(ResultView::from(result));
                }
                if let Some(error) = &task.error {
                    v["error"] = json!(error);
                }
                v["cost_usd"] = json!(task.spend.usage.cost_usd());
            }
            v
        })
        .collect();
    let next = from + page.len();
    let mut body = json!({
        "batch_id": batch.batch_id,
        "created_at": batch.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "total": batch.items.len(),
        "counts": counts,
        "done": done,
        "items": items,
    });
    if next < batch.items.len() {
        body["next_cursor"] = json!(URL_SAFE_NO_PAD.encode(next.to_string()));
    }
    Ok(json_response(StatusCode::OK, &body))
}

pub(crate) async fn cancel(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>, ApiError> {
    let batch = owned(app, caller, raw).await?;
    let open: Vec<TaskId> = app
        .store
        .statuses(&task_ids(&batch))
        .await?
        .into_iter()
        .filter(|(_, s)| !s.is_terminal())
        .map(|(id, _)| id)
        .collect();
    let now = agentq::now();
    let store = app.store.clone();
    let outcomes = futures::stream::iter(open.into_iter().map(move |id| {
        let store = store.clone();
        async move { store.cancel(id, now).await }
    }))
    .buffer_unordered(CANCELS)
    .collect::<Vec<_>>()
    .await;
    let (mut cancelled, mut requested, mut finished) = (0, 0, 0);
    for outcome in outcomes {
        match outcome? {
            Cancelled::Now => cancelled += 1,
            Cancelled::Requested => requested += 1,
            Cancelled::AlreadyFinished(_) | Cancelled::NotFound => finished += 1,
        }
    }
    tracing::info!(batch_id = %batch.batch_id, cancelled, requested, "batch cancel requested");
    Ok(json_response(
        StatusCode::OK,
        &json!({"batch_id": batch.batch_id, "cancelled": cancelled, "cancel_requested": requested, "already_finished": finished}),
    ))
}
