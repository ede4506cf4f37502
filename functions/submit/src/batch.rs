//! `POST /v1/batches`: up to 1,000 tasks in one request (docs/batches.md). Each item is
//! admitted on its own: its fields checked, the rate limit, the monthly budget and the running
//! cap applied to it in the request's order; the answer lists each item's task id or error in
//! the same order. The tasks are stored in a few transactions and their messages sent a few
//! at a time, so a full batch stays well within the function's time. An `Idempotency-Key`
//! covers the whole batch: the same key and body answer the same batch.

use agentq::domain::batch::{BatchItem, BatchRecord, ItemError, new_batch_id, parse_batch};
use agentq::domain::task::{ErrorCode, FieldError, RequestError, TaskError, TaskMessage, TaskRecord};
use agentq::edge::auth::{Caller, authenticate};
use agentq::edge::http::{ApiError, json_body, json_response};
use agentq::observe::metrics::{self, Unit};
use agentq::store::{AdmittedMany, BatchKey, Idempotency, month_of};
use futures::StreamExt as _;
use lambda_http::http::StatusCode;
use lambda_http::http::header::{HeaderName, HeaderValue, LOCATION};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::{App, idempotency_key, key_reused, request_hash};

/// Messages sent at once.
const SENDS: usize = 16;

pub(crate) async fn submit_batch(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let Caller { tenant, .. } = authenticate(app.store.as_ref(), &app.auth, req).await?;
    let now = agentq::now();
    let body = json_body(req)?;
    let requests = parse_batch(body, &app.allowed).map_err(|e| match e {
        RequestError::NotJson(m) => ApiError::MalformedJson(m),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    let batch_id = new_batch_id();
    if let Some(key) = idempotency_key(req)? {
        let hash = request_hash(body);
        match app
            .store
            .reserve_batch_key(&tenant.tenant_id, Idempotency { key, request_hash: &hash }, &batch_id, now)
            .await?
        {
            BatchKey::Reserved => {}
            BatchKey::KeyReused => return Err(key_reused()),
            BatchKey::Replayed(first) => {
                let Some(batch) = app.store.batch(&tenant.tenant_id, &first).await? else {
                    return Err(ApiError::Conflict {
                        code: "batch_in_progress",
                        detail: format!(
                            "batch {first} with this Idempotency-Key is still being admitted; ask again shortly"
                        ),
                    });
                };
                let mut response = answer(&batch);
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
                return Ok(response);
            }
        }
    }

    // Each item's fate, in order: an error now, or a task to admit.
    let mut items: Vec<BatchItem> = Vec::with_capacity(requests.len());
    let mut tasks: Vec<(usize, TaskRecord)> = Vec::new();
    let budget_spent = match tenant.limits.monthly_budget_nanos {
        Some(budget) => {
            let spent = app.store.month_cost(&tenant.tenant_id, &month_of(now)).await?;
            (spent >= budget).then(|| format!("the tenant's monthly budget of ${} is spent", budget as f64 / 1e9))
        }
        None => None,
    };
    for (i, item) in requests.into_iter().enumerate() {
        let error = match item.task {
            Err(errors) => {
                Some(ItemError { errors, ..ItemError::new("validation_failed", "the task has invalid fields") })
            }
            Ok(request) if request.webhook_url().is_some() => Some(ItemError {
                errors: vec![FieldError::new(
                    "webhook",
                    "is not taken in a batch: register an endpoint (POST /v1/webhooks)",
                )],
                ..ItemError::new("validation_failed", "the task has invalid fields")
            }),
            Ok(_) if budget_spent.is_some() => {
                Some(ItemError::new("budget_exhausted", budget_spent.clone().unwrap_or_default()))
            }
            Ok(request) => {
                tasks.push((i, TaskRecord::new(request, &tenant.tenant_id, now).in_lane_of(tenant.limits.weight)));
                None
            }
        };
        items.push(BatchItem { custom_id: item.custom_id, task_id: None, error });
    }

    let granted = app.store.take_up_to(&tenant.tenant_id, &tenant.limits, tasks.len() as u32, now).await? as usize;
    let AdmittedMany { admitted, interrupted } = app
        .store
        .admit_many(&tasks.iter().take(granted).map(|(_, t)| t.clone()).collect::<Vec<_>>(), tenant.limits.max_running)
        .await?;
    // Owned inputs keep the stream's futures `Send` for every lifetime the runtime asks for.
    let queue = app.queue.clone();
    let sends = futures::stream::iter(tasks.iter().take(admitted).cloned().map(move |(i, task)| {
        let queue = queue.clone();
        async move {
            let message = TaskMessage::of(&task);
            let sent = queue.enqueue(&message, &std::collections::HashMap::new()).await;
            (i, task, sent)
        }
    }))
    .buffer_unordered(SENDS)
    .collect::<Vec<_>>()
    .await;
    for (i, task, sent) in sends {
        match sent {
            Ok(()) => items[i].task_id = Some(task.task_id),
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, error = format!("{:#}", e.0), "could not send a batch task's message");
                let error = TaskError::new(ErrorCode::EnqueueFailed, "the task could not be queued; submit it again");
                if let Err(store_err) = app.store.fail_unqueued(&task, &error, None, agentq::now()).await {
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(store_err)),
                        "could not mark an unqueued task failed"
                    );
                }
                items[i].error =
                    Some(ItemError::new("enqueue_failed", "the task could not be queued; submit it again"));
            }
        }
    }
    for (n, (i, _)) in tasks.iter().enumerate().skip(admitted) {
        items[*i].error = Some(if n < granted && interrupted {
            ItemError::new("enqueue_failed", "the task could not be stored; submit it again")
        } else if n < granted {
            ItemError::new(
                "concurrency_limited",
                format!("the tenant already has {} tasks queued or running", tenant.limits.max_running),
            )
        } else {
            ItemError::new("rate_limited", "over the tenant's rate limit; submit it again later")
        });
    }

    let batch = BatchRecord { batch_id, tenant_id: tenant.tenant_id.clone(), created_at: now, items };
    app.store.put_batch(&batch).await?;
    let accepted = batch.items.iter().filter(|i| i.task_id.is_some()).count();
    tracing::info!(batch_id = %batch.batch_id, items = batch.items.len(), accepted, "batch accepted");
    metrics::record()
        .value("BatchesAccepted", 1.0, Unit::Count)
        .value("TasksAccepted", accepted as f64, Unit::Count)
        .property("tenant_id", tenant.tenant_id.as_str())
        .property("batch_id", batch.batch_id.as_str())
        .emit();
    Ok(answer(&batch))
}

fn answer(batch: &BatchRecord) -> Response<Body> {
    let accepted = batch.items.iter().filter(|i| i.task_id.is_some()).count();
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &json!({
            "batch_id": batch.batch_id,
            "created_at": batch.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "accepted": accepted,
            "rejected": batch.items.len() - accepted,
            "items": batch.items,
        }),
    );
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/batches/{}", batch.batch_id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}
