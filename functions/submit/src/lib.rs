//! The submit function: `POST /v1/tasks` validates a task, stores it `queued` and sends its
//! message; `GET /health` and `GET /ready` answer probes.
//!
//! The order is deliberate: the record is written before the message is sent, so a worker
//! never receives a task it cannot find; if the send fails, the record is marked `failed` so
//! no client polls a task no worker will ever pick up.

use std::sync::Arc;

use agentq::api::Accepted;
use agentq::http::{ApiError, json_body, json_response, respond};
use agentq::queue::TaskQueue;
use agentq::store::{StorePing, TaskCreate};
use agentq::task::{Allowed, RequestError, TaskError, TaskMessage, TaskRecord, TaskRequest};
use lambda_http::http::header::{HeaderValue, LOCATION};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::json;

/// What the submit path writes to.
pub trait SubmitStore: TaskCreate + StorePing {}
impl<T: TaskCreate + StorePing> SubmitStore for T {}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn SubmitStore>,
    pub queue: Arc<dyn TaskQueue>,
    /// A model endpoint and key are configured, so tasks can run (reported by `/ready`).
    pub model_configured: bool,
    /// The models and tools a request may name.
    pub allowed: Allowed,
}

/// Serves one request. Never fails: every error becomes a problem+json response.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let result = match (req.method(), req.uri().path().trim_end_matches('/')) {
        (&Method::POST, "/v1/tasks") => submit(app, &req).await,
        (_, "/v1/tasks") => Err(not_allowed(&req, "POST")),
        (&Method::GET, "/health") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, "/ready") => Ok(ready(app).await),
        (_, "/health" | "/ready") => Err(not_allowed(&req, "GET")),
        (_, path) => Err(ApiError::NotFound(format!("no route for {path}"))),
    };
    respond(result)
}

fn not_allowed(req: &Request, allowed: &'static str) -> ApiError {
    ApiError::MethodNotAllowed { method: req.method().to_string(), allowed }
}

#[tracing::instrument(skip_all, fields(task_id))]
async fn submit(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let request = TaskRequest::parse(json_body(req)?, &app.allowed).map_err(|e| match e {
        RequestError::NotJson(msg) => ApiError::MalformedJson(msg),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    let task = TaskRecord::new(request, agentq::now());
    let id = task.task_id;
    tracing::Span::current().record("task_id", tracing::field::display(id));

    app.store.create(&task).await?;
    let message = TaskMessage { task_id: id, priority: task.priority };
    if let Err(e) = app.queue.enqueue(&message).await {
        let error = TaskError::new("enqueue_failed", "the task could not be queued; submit it again");
        if let Err(store_err) = app.store.fail_unqueued(id, &error, agentq::now()).await {
            // Both AWS services failing at once leaves the record `queued`; say so loudly.
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(store_err)),
                "could not mark an unqueued task failed"
            );
        }
        return Err(e.into());
    }

    tracing::info!(
        priority = task.priority.as_str(),
        prompt_chars = task.prompt.chars().count(),
        max_iterations = task.max_iterations,
        "task accepted"
    );
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &Accepted { task_id: id, status: task.status, created_at: task.created_at },
    );
    let location = HeaderValue::from_str(&format!("/v1/tasks/{id}")).expect("a task id is a valid header value");
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

/// Readiness: the table and the queue answer and a model is configured. Failures are named
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
