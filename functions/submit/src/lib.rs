//! The submit function: `POST /v1/tasks` authenticates the tenant, meters it (rate limit,
//! monthly budget, tasks running at once), validates the task, stores it `queued` and sends
//! its message to the queue of its priority. It also takes decisions on a waiting task's tool
//! calls (`POST /v1/tasks/{id}/input`, [`input`]), which queue the task again, and answers
//! `GET /health`, `GET /ready`, `GET /openapi.json`, and any unmatched route (with a
//! problem+json 404 or 405).
//!
//! The order is deliberate: the record is written before the message is sent, so a worker
//! never receives a task it cannot find; if the send fails (every AWS call is bounded in
//! time), the record is marked `failed` so no client polls a task no worker will ever pick
//! up. If the function dies between the two, the task is `queued` with no message: a client
//! retrying with its `Idempotency-Key` sends the message again (a duplicate is harmless: the
//! worker's claim runs a task once), and the reconciler finds it if nobody retries.
//!
//! It also takes batches (`POST /v1/batches`, [`batch`]), forks ([`fork`]) and new schedules
//! (`POST /v1/schedules`, [`schedules`]).

mod batch;
mod fork;
mod input;
mod schedules;

use std::collections::HashMap;
use std::sync::Arc;

use agentq::domain::task::{Allowed, FieldError, RequestError, TaskRecord, TaskRequest};
use agentq::domain::webhooks::{TaskWebhook, new_secret};
use agentq::edge::api::Accepted;
use agentq::edge::auth::{Caller, authenticate};
use agentq::edge::http::{ApiError, json_body, json_response, rate_limit_headers, respond};
use agentq::edge::routes::{self, Op};
use agentq::observe::metrics::{self, Unit};
use agentq::observe::telemetry::{self, traces};
use agentq::outbound::webhook::SendPolicy;
use agentq::queue::TaskQueue;
use agentq::store::{
    Admission, BatchStore, Idempotency, RateLimiter, ScheduleStore, Slot, StorePing, TaskInput, TenantRead, UsageRead,
    month_of,
};
use agentq::usecases::admit::{self, Accepted as Admit, AdmitStore, Refused};
use lambda_http::http::StatusCode;
use lambda_http::http::header::{HeaderName, HeaderValue, LOCATION};
use lambda_http::{Body, Request, RequestExt as _, Response};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

/// The OpenAPI document of the whole API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../openapi.json");

/// What the submit path reads and writes.
pub trait SubmitStore:
    AdmitStore + TaskInput + BatchStore + ScheduleStore + StorePing + TenantRead + RateLimiter + UsageRead
{
}
impl<T: AdmitStore + TaskInput + BatchStore + ScheduleStore + StorePing + TenantRead + RateLimiter + UsageRead>
    SubmitStore for T
{
}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn SubmitStore>,
    pub queue: Arc<dyn TaskQueue>,
    /// A model endpoint is configured, so tasks can run (reported by `/ready`).
    pub model_configured: bool,
    /// The models and tools a request may name.
    pub allowed: Allowed,
    /// Callers this instance authenticated lately.
    pub auth: Arc<agentq::edge::auth::AuthCache>,
    /// Where a task's own webhook may point.
    pub webhooks: SendPolicy,
    /// The tools' input schemas, to check a reviewer's edited input.
    pub tools: agentq::agent::ToolRegistry,
}

/// Serves one request. Never fails: every error becomes a problem+json response.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let result = match routes::resolve(req.method().as_str(), req.uri().path()) {
        Ok(m) => match m.route.op {
            Op::Submit => submit(app, &req).await,
            Op::TaskInput => input::input(app, &req, m.id.as_deref().unwrap_or_default()).await,
            Op::ForkTask => fork::fork(app, &req, m.id.as_deref().unwrap_or_default()).await,
            Op::SubmitBatch => batch::submit_batch(app, &req).await,
            Op::CreateSchedule => schedules::create(app, &req).await,
            Op::Health => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Op::Ready => Ok(ready(app).await),
            Op::OpenApi => Ok(openapi()),
            // Another function's route: API Gateway never sends it here.
            _ => Err(ApiError::NotFound(format!("no route for {}", req.uri().path()))),
        },
        Err(e) => Err(e),
    };
    respond(result)
}

fn openapi() -> Response<Body> {
    let mut r = Response::new(Body::Text(OPENAPI.to_owned()));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// The `Idempotency-Key` header, if the request has one; it must be 1–255 visible ASCII
/// characters.
pub(crate) fn idempotency_key(req: &Request) -> Result<Option<&str>, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else { return Ok(None) };
    match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k)),
        _ => Err(ApiError::Validation(vec![FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )])),
    }
}

/// A fingerprint of the request body that ignores formatting and key order.
pub(crate) fn request_hash(body: &[u8]) -> String {
    fn canonical(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
            other => other,
        }
    }
    let value = serde_json::from_slice(body).map(canonical).unwrap_or(Value::Null);
    Sha256::digest(value.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace context a request arrives with: the client's W3C `traceparent` if it sent one,
/// else the X-Ray trace Lambda started for this invocation, else API Gateway's header.
fn incoming_trace(req: &Request) -> HashMap<String, String> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut out = HashMap::new();
    if let Some(parent) = header("traceparent") {
        out.insert("traceparent".to_owned(), parent);
        if let Some(state) = header("tracestate") {
            out.insert("tracestate".to_owned(), state);
        }
    } else if let Some(xray) =
        req.lambda_context_ref().and_then(|c| c.xray_trace_id.clone()).or_else(|| header("x-amzn-trace-id"))
    {
        out.insert("x-amzn-trace-id".to_owned(), xray);
    }
    out
}

/// `span` continuing the caller's trace; its trace id.
pub(crate) fn traced(span: tracing::Span, req: &Request) -> (tracing::Span, String) {
    let trace_id = traces::continue_trace(&span, &incoming_trace(req));
    if !trace_id.is_empty() {
        span.record("trace_id", trace_id.as_str());
    }
    (span, trace_id)
}

/// Accepts a task, in a span that continues the caller's trace and carries it to the worker.
async fn submit(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let (span, trace_id) = traced(
        tracing::info_span!(
            "submit",
            task_id = tracing::field::Empty,
            tenant_id = tracing::field::Empty,
            trace_id = tracing::field::Empty
        ),
        req,
    );
    let result = accept(app, req, &span, &trace_id).instrument(span.clone()).await;
    if let Err(e) = &result {
        let _in = span.enter();
        tracing::info!(status = e.status().as_u16(), code = e.code(), "submit rejected");
        metrics::record().dimension("reason", e.code()).value("SubmitsRejected", 1.0, Unit::Count).emit();
    }
    result
}

async fn accept(app: &App, req: &Request, span: &tracing::Span, trace_id: &str) -> Result<Response<Body>, ApiError> {
    let Caller { tenant, .. } =
        authenticate(app.store.as_ref(), &app.auth, req).instrument(tracing::info_span!("authenticate")).await?;
    span.record("tenant_id", tenant.tenant_id.as_str());
    let limits = tenant.limits;
    let now = agentq::now();

    // Read and checked before anything is written: a request refused here costs no write.
    let body = json_body(req)?;
    let idempotency = idempotency_key(req)?;
    let request = TaskRequest::parse(body, &app.allowed).map_err(|e| match e {
        RequestError::NotJson(msg) => ApiError::MalformedJson(msg),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    let webhook = request
        .webhook_url()
        .map(|url| {
            let url = app
                .webhooks
                .check_url(url)
                .map_err(|e| ApiError::Validation(vec![FieldError::new("webhook.url", e)]))?;
            Ok::<_, ApiError>(TaskWebhook { url: url.to_string(), secret: new_secret().expose().to_owned() })
        })
        .transpose()?;

    // The rate limit and the task's running slot, in one write of the tenant's counters.
    let entry = app.store.take_with_slot(&tenant.tenant_id, &limits, now).await?;
    if !entry.rate.allowed {
        return Err(ApiError::RateLimited {
            limit: limits.burst,
            rate_per_sec: limits.rate_per_sec,
            decision: entry.rate,
        });
    }
    if let Err(e) = within_budget(app, &tenant, now).await {
        if entry.slot == Slot::Taken {
            app.store.give_slot_back(&tenant.tenant_id).await;
        }
        return Err(e);
    }

    let mut task = TaskRecord::new(request, &tenant.tenant_id, now);
    task.webhook = webhook;
    let sent = Sent { body, idempotency, limits: &limits, rate: &entry.rate, slot: entry.slot, trace_id, span };
    admit_and_send(app, task, sent).await
}

/// Refuses new work (402) once the tenant's monthly budget is spent.
pub(crate) async fn within_budget(
    app: &App,
    tenant: &agentq::domain::tenant::Tenant,
    now: time::OffsetDateTime,
) -> Result<(), ApiError> {
    if let Some(budget) = tenant.limits.monthly_budget_nanos {
        let spent = app.store.month_cost(&tenant.tenant_id, &month_of(now)).await?;
        if spent >= budget {
            return Err(ApiError::BudgetExhausted { budget_usd: budget as f64 / 1e9, spent_usd: spent as f64 / 1e9 });
        }
    }
    Ok(())
}

/// An `Idempotency-Key` seen with another body in its window: a 409.
pub(crate) fn key_reused() -> ApiError {
    ApiError::Conflict {
        code: "idempotency_key_reused",
        detail: "this Idempotency-Key was used with a different request in the last 24 hours".into(),
    }
}

/// What a new task is admitted and sent with.
pub(crate) struct Sent<'a> {
    /// The request body (its fingerprint keeps the idempotency key honest).
    pub body: &'a [u8],
    pub idempotency: Option<&'a str>,
    pub limits: &'a agentq::domain::tenant::Limits,
    pub rate: &'a agentq::store::RateDecision,
    /// The task's running slot, as the rate limit's write left it.
    pub slot: Slot,
    pub trace_id: &'a str,
    pub span: &'a tracing::Span,
}

/// Stores a new task `queued` under its tenant's cap and idempotency key, then sends its
/// message ([`agentq::usecases::admit`]): the part of a submit that a fork shares.
pub(crate) async fn admit_and_send(
    app: &App,
    mut task: TaskRecord,
    sent: Sent<'_>,
) -> Result<Response<Body>, ApiError> {
    let Sent { body, idempotency, limits, rate, slot, trace_id, span } = sent;
    task.trace_id = (!trace_id.is_empty()).then(|| trace_id.to_owned());
    let id = task.task_id;
    span.record("task_id", tracing::field::display(id));
    let hash = idempotency.map(|_| request_hash(body));
    let admission = Admission {
        max_running: limits.max_running,
        idempotency: idempotency.zip(hash.as_deref()).map(|(key, request_hash)| Idempotency { key, request_hash }),
        slot,
    };
    let accepted = admit::admit_and_send(app.store.as_ref(), app.queue.as_ref(), task, admission, limits)
        .await
        .map_err(|e| match e {
            Refused::KeyReused => key_reused(),
            Refused::ConcurrencyLimited { max } => ApiError::ConcurrencyLimited { max },
            Refused::NotQueued(e) => e.into(),
            Refused::Store(e) => e.into(),
        })?;
    let task = match accepted {
        Admit::Replayed(task) => {
            let mut response = accepted_response(&task);
            response
                .headers_mut()
                .insert(HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true"));
            return Ok(response);
        }
        Admit::Held(task) => {
            tracing::info!(priority = task.priority.as_str(), "task accepted and held: the tenant is at its cap");
            metrics::record()
                .value("TasksHeld", 1.0, Unit::Count)
                .property("tenant_id", task.tenant_id.as_str())
                .property("task_id", id.to_string())
                .emit();
            task
        }
        Admit::Sent(task) => {
            tracing::info!(
                priority = task.priority.as_str(),
                prompt = telemetry::content(&task.prompt),
                max_iterations = task.max_iterations,
                model = task.requested_model.as_deref().unwrap_or("default"),
                "task accepted"
            );
            metrics::record()
                .dimension("priority", task.priority.as_str())
                .value("TasksAccepted", 1.0, Unit::Count)
                .property("tenant_id", task.tenant_id.as_str())
                .property("task_id", id.to_string())
                .emit();
            task
        }
    };
    let mut response = accepted_response(&task);
    rate_limit_headers(response.headers_mut(), limits.burst, rate);
    Ok(response)
}

fn accepted_response(task: &TaskRecord) -> Response<Body> {
    let id = task.task_id;
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &Accepted {
            task_id: id,
            status: task.status,
            created_at: task.created_at,
            webhook: task.webhook.clone(),
            parent: task.fork.clone(),
            held: task.held,
        },
    );
    let location = HeaderValue::from_str(&format!("/v1/tasks/{id}")).expect("a task id is a valid header value");
    response.headers_mut().insert(LOCATION, location);
    if let Some(trace) = task.trace_id.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        response.headers_mut().insert(HeaderName::from_static("x-trace-id"), trace);
    }
    response
}

/// Readiness: the table and the queues answer and a model is configured. Failures are named
/// per check but not detailed: the detail is in the log, not on an unauthenticated endpoint.
async fn ready(app: &App) -> Response<Body> {
    let (store, queue) = tokio::join!(app.store.ping(), app.queue.ping());
    let store_ok =
        store.map_err(|e| tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "readiness: store")).is_ok();
    let queue_ok =
        queue.map_err(|e| tracing::warn!(error = format!("{:#}", anyhow::Error::from(e)), "readiness: queue")).is_ok();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let checks = json!({
        "store": word(store_ok),
        "queue": word(queue_ok),
        "model": if app.model_configured { "ok" } else { "not configured" },
    });
    if store_ok && queue_ok && app.model_configured {
        json_response(StatusCode::OK, &json!({"status": "ready", "checks": checks}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "not_ready", "checks": checks}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_ignores_key_order_and_whitespace() {
        assert_eq!(
            request_hash(br#"{"a":1,"b":{"c":2,"d":3}}"#),
            request_hash(b"{ \"b\": {\"d\":3, \"c\":2}, \"a\": 1 }")
        );
        assert_ne!(request_hash(br#"{"a":1}"#), request_hash(br#"{"a":2}"#));
    }
}
