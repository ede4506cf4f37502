//! `POST /v1/schedules`: a task created on a clock (docs/schedules.md). The body is checked
//! whole (expression, time zone, overlap, and the task as a submit checks it) and the schedule
//! stored active, its first tick named in the answer. The ticks themselves are the scheduler
//! function's; reading, pausing, resuming and deleting are the status function's.

use agentq::domain::schedule::{MAX_SCHEDULES_PER_TENANT, parse_schedule};
use agentq::domain::task::RequestError;
use agentq::edge::api::ScheduleView;
use agentq::edge::auth::{Caller, authenticate};
use agentq::edge::http::{ApiError, json_body, json_response};
use lambda_http::http::StatusCode;
use lambda_http::http::header::{HeaderValue, LOCATION};
use lambda_http::{Body, Request, Response};

use crate::App;

pub(crate) async fn create(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let Caller { tenant, .. } = authenticate(app.store.as_ref(), &app.auth, req).await?;
    let body = json_body(req)?;
    let schedule = parse_schedule(body, &app.allowed, &tenant.tenant_id, agentq::now()).map_err(|e| match e {
        RequestError::NotJson(m) => ApiError::MalformedJson(m),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    if !app.store.create_schedule(&schedule, MAX_SCHEDULES_PER_TENANT).await? {
        return Err(ApiError::Conflict {
            code: "too_many_schedules",
            detail: format!(
                "the tenant has {MAX_SCHEDULES_PER_TENANT} schedules, the most it may have; delete one first"
            ),
        });
    }
    tracing::info!(schedule_id = %schedule.schedule_id, tenant_id = %tenant.tenant_id, schedule = %schedule.schedule, "schedule created");
    let mut response = json_response(StatusCode::CREATED, &ScheduleView::from(&schedule));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/schedules/{}", schedule.schedule_id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}
