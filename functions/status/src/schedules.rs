//! A tenant's schedules: `GET /v1/schedules` (all of them, at most a hundred),
//! `GET /v1/schedules/{id}` (with its latest ticks and each tick's task status),
//! `POST /v1/schedules/{id}/pause` and `/resume`, and `DELETE /v1/schedules/{id}`. Another
//! tenant's schedule is the same 404 as a missing one. Pause and resume are idempotent.

use std::collections::BTreeMap;

use agentq::domain::schedule::{ScheduleRecord, ScheduleState, is_schedule_id};
use agentq::domain::task::{TaskId, TaskStatus};
use agentq::edge::api::ScheduleView;
use agentq::edge::auth::Caller;
use agentq::edge::http::{ApiError, json_response};
use agentq::store::StoreError;
use lambda_http::http::StatusCode;
use lambda_http::{Body, Response};
use serde_json::json;

use crate::App;

/// Writes of one pause or resume that lose to the dispatcher before giving up.
const WRITE_ATTEMPTS: usize = 5;

async fn owned(app: &App, caller: &Caller, raw: &str) -> Result<ScheduleRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("no schedule with id {raw:?}"));
    if !is_schedule_id(raw) {
        return Err(not_found());
    }
    app.store.schedule(&caller.tenant.tenant_id, raw).await?.ok_or_else(not_found)
}

pub(crate) async fn list(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let schedules = app.store.schedules(&caller.tenant.tenant_id).await?;
    let views: Vec<ScheduleView> = schedules.iter().map(ScheduleView::from).collect();
    Ok(json_response(StatusCode::OK, &json!({ "schedules": views })))
}

pub(crate) async fn get(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>, ApiError> {
    let schedule = owned(app, caller, raw).await?;
    let ids: Vec<TaskId> = schedule.runs.iter().filter_map(|r| r.task_id).collect();
    let statuses: BTreeMap<TaskId, TaskStatus> = app.store.statuses(&ids).await?.into_iter().collect();
    let mut view = ScheduleView::from(&schedule);
    for run in &mut view.runs {
        run.status = run.run.task_id.and_then(|id| statuses.get(&id).copied());
    }
    Ok(json_response(StatusCode::OK, &view))
}

pub(crate) async fn set_state(
    app: &App,
    caller: &Caller,
    raw: &str,
    state: ScheduleState,
) -> Result<Response<Body>, ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let mut schedule = owned(app, caller, raw).await?;
        if schedule.state == state {
            return Ok(json_response(StatusCode::OK, &ScheduleView::from(&schedule)));
        }
        schedule.set_state(state, agentq::now());
        match app.store.update_schedule(&schedule).await {
            Ok(()) => {
                tracing::info!(schedule_id = raw, state = ?state, "schedule state changed");
                return Ok(json_response(StatusCode::OK, &ScheduleView::from(&schedule)));
            }
            // The dispatcher moved it on (or it was deleted): read it again.
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Busy)
}

pub(crate) async fn delete(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>, ApiError> {
    if !is_schedule_id(raw) || !app.store.delete_schedule(&caller.tenant.tenant_id, raw).await? {
        return Err(ApiError::NotFound(format!("no schedule with id {raw:?}")));
    }
    tracing::info!(schedule_id = raw, "schedule deleted");
    Ok(json_response(StatusCode::OK, &json!({"id": raw, "deleted": true})))
}
