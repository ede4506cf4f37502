//! The status function: `GET /v1/tasks/{id}` returns a task's state, progress, result and
//! cost. An unknown id and a malformed one get the same 404, so ids cannot be probed.

use std::sync::Arc;

use agentq::api::TaskView;
use agentq::http::{ApiError, json_response, respond};
use agentq::store::TaskRead;
use agentq::task::TaskId;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, RequestExt as _, Response};

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn TaskRead>,
}

/// Serves one request. Never fails: every error becomes a problem+json response.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    respond(get_task(app, &req).await)
}

#[tracing::instrument(skip_all, fields(task_id))]
async fn get_task(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    // API Gateway passes `{id}` as a path parameter; a bare function URL only has the path.
    let raw = req
        .path_parameters_ref()
        .and_then(|p| p.first("id").map(str::to_owned))
        .or_else(|| req.uri().path().strip_prefix("/v1/tasks/").map(|s| s.trim_end_matches('/').to_owned()))
        .ok_or_else(|| ApiError::NotFound(format!("no route for {}", req.uri().path())))?;
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed { method: req.method().to_string(), allowed: "GET" });
    }
    let not_found = || ApiError::NotFound(format!("no task with id {raw:?}"));
    let id: TaskId = raw.parse().map_err(|_| not_found())?;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let task = app.store.get(id).await?.ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &TaskView::from(&task)))
}
