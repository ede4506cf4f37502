//! `POST /v1/tasks/{id}/fork`: a new task that starts where the caller's task was at a step
//! (docs/fork.md). It is admitted like a submit (rate, budget, running cap, idempotency key,
//! the parent's priority) and names its parent; the parent lists it. The steps it inherits are
//! copied by the worker at its first run, so this answer does not wait on them.

use agentq::domain::fork::{ForkOrigin, ForkRef, ForkRequest};
use agentq::domain::task::{FieldError, RequestError, TaskId, TaskStatus};
use agentq::edge::auth::{Caller, authenticate, owned_task};
use agentq::edge::http::{ApiError, json_body};
use lambda_http::{Body, Request, RequestExt as _, Response};
use tracing::Instrument as _;

use crate::{App, Sent, admit_and_send, idempotency_key, traced, within_budget};

pub(crate) async fn fork(app: &App, req: &Request, raw_id: &str) -> Result<Response<Body>, ApiError> {
    let (span, trace_id) = traced(
        tracing::info_span!(
            "fork",
            task_id = tracing::field::Empty,
            tenant_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            parent = tracing::field::Empty
        ),
        req,
    );
    let result = create(app, req, raw_id, &span, &trace_id).instrument(span.clone()).await;
    if let Err(e) = &result {
        let _in = span.enter();
        tracing::info!(status = e.status().as_u16(), code = e.code(), "fork rejected");
    }
    result
}

async fn create(
    app: &App,
    req: &Request,
    raw_id: &str,
    span: &tracing::Span,
    trace_id: &str,
) -> Result<Response<Body>, ApiError> {
    let Caller { tenant, .. } = authenticate(app.store.as_ref(), &app.auth, req).await?;
    span.record("tenant_id", tenant.tenant_id.as_str());
    let now = agentq::now();
    let rate = app.store.take(&tenant.tenant_id, &tenant.limits, now).await?;
    if !rate.allowed {
        return Err(ApiError::RateLimited {
            limit: tenant.limits.burst,
            rate_per_sec: tenant.limits.rate_per_sec,
            decision: rate,
        });
    }
    let id =
        req.path_parameters_ref().and_then(|p| p.first("id").map(str::to_owned)).unwrap_or_else(|| raw_id.to_owned());
    let caller = Caller { tenant: tenant.clone(), key_id: String::new() };
    let seen = owned_task(app.store.as_ref(), &caller, &id).await?;
    span.record("parent", tracing::field::display(seen.task_id));
    let body = json_body(req)?;
    let idempotency = idempotency_key(req)?;
    let request = ForkRequest::parse(body, &app.allowed).map_err(|e| match e {
        RequestError::NotJson(m) => ApiError::MalformedJson(m),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    within_budget(app, &tenant, now).await?;
    let parent_steps = app.store.steps(seen.task_id).await?;
    request.check(&parent_steps).map_err(ApiError::Validation)?;
    let max_iterations = request.max_iterations.unwrap_or(seen.max_iterations);
    if max_iterations <= request.from_step {
        return Err(ApiError::Validation(vec![FieldError::new(
            "max_iterations",
            format!("must be over from_step ({}) for the fork to take a step of its own", request.from_step),
        )]));
    }
    // The prompt may be kept in S3: read it back whole.
    let parent = app.store.get_with_prompt(seen.task_id).await?.unwrap_or(seen);

    let mut task = parent.clone();
    task.task_id = TaskId::new();
    task.status = TaskStatus::Queued;
    task.cancel_requested = false;
    task.created_at = now;
    task.updated_at = now;
    task.spend = Default::default();
    task.result = None;
    task.error = None;
    task.attempts = 0;
    task.max_iterations = max_iterations;
    task.requested_model = request.model.clone().or(parent.requested_model.clone());
    task.max_cost_nanos = request.max_cost_nanos.or(parent.max_cost_nanos);
    task.metadata = request.metadata.clone().or(parent.metadata.clone());
    task.last_error = None;
    task.trace_id = None;
    task.counted = Default::default();
    task.started_at = None;
    task.resends = 0;
    task.events = 1;
    // The parent's webhook secret stays the parent's; its tenant's endpoints get the fork's events.
    task.webhook = None;
    task.pending = None;
    task.waiting_until = None;
    task.forks = Vec::new();
    task.held = false;
    task.fork = Some(ForkOrigin {
        task_id: parent.task_id,
        from_step: request.from_step,
        message: request.message.clone(),
        tool_results: request.tool_results.clone(),
    });
    let fork_id = task.task_id;
    let limits = tenant.limits;
    let response = admit_and_send(
        app,
        task,
        Sent { body, idempotency, limits: &limits, rate: &rate, slot: agentq::store::Slot::Take, trace_id, span },
    )
    .await?;
    if !response.headers().contains_key("idempotent-replayed") {
        let listed = ForkRef { task_id: fork_id, from_step: request.from_step, created_at: now };
        if let Err(e) = app.store.note_fork(parent.task_id, &listed).await {
            // The fork names its parent either way; only the parent's list misses it.
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "could not list the fork on its parent");
        }
        tracing::info!(from_step = request.from_step, "task forked");
    }
    Ok(response)
}
