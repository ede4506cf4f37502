//! The status function: a tenant's view of its tasks. `GET /v1/tasks/{id}` (state, progress,
//! result, cost), `DELETE /v1/tasks/{id}` (cancel), `GET /v1/tasks/{id}/steps` (the recorded
//! model answers and tool results, a page at a time), `GET /v1/tasks/{id}/events` (its event
//! log: queued, started, each step, the end), `GET /v1/tasks` (summaries, newest
//! first, paginated), `GET /v1/usage` (per day), and webhooks: a tenant's endpoints and each
//! task's delivery attempts ([`webhooks`]), batches ([`batches`]) and schedules ([`schedules`]). Another tenant's task, an unknown id and a
//! malformed one all get the same 404, so ids cannot be probed. It also serves the console's
//! page and files ([`console`]).
//!
//! Every answer is bounded: a list examines a bounded number of entries (a rare status comes
//! back a short page with a cursor), a page of steps stays far under Lambda's 6 MB response,
//! and each tenant's reads are rate limited per instance.

mod batches;
pub mod console;
mod schedules;
mod webhooks;

use std::sync::Arc;

use agentq::domain::schedule::ScheduleState;
use agentq::domain::task::{FieldError, TaskId, TaskRecord, TaskStatus};
use agentq::edge::api::{EventList, StepEntry, StepList, StepView, TaskList, TaskSummary, TaskView, UsageReport};
use agentq::edge::auth::{Caller, authenticate};
use agentq::edge::http::{ApiError, json_response, respond};
use agentq::edge::routes::{self, Op};
use agentq::store::{
    BatchStore, Cancelled, ScheduleStore, TaskCancel, TaskRead, TenantRead, UsageRead, WebhookStore, day_of,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request, RequestExt as _, Response};
use time::{Date, Duration};

/// Page size of a list when the request names none, and the most it may name.
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
/// The longest usage report, in days.
const MAX_USAGE_DAYS: i64 = 366;
/// Events per page when the request names none, and the most it may name.
const DEFAULT_EVENTS: usize = 100;
const MAX_EVENTS: usize = 500;
/// Steps per page when the request names none, and the most it may name.
const DEFAULT_STEPS: usize = 100;
const MAX_STEPS: usize = 500;

/// What the status path reads and writes.
pub trait StatusStore:
    TaskRead + TaskCancel + TenantRead + UsageRead + WebhookStore + BatchStore + ScheduleStore
{
}
impl<T: TaskRead + TaskCancel + TenantRead + UsageRead + WebhookStore + BatchStore + ScheduleStore> StatusStore for T {}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn StatusStore>,
    /// Each tenant's reads on this instance.
    pub reads: Arc<agentq::edge::throttle::ReadThrottle>,
    /// Callers this instance authenticated lately.
    pub auth: Arc<agentq::edge::auth::AuthCache>,
    /// Where webhook endpoints may point.
    pub webhooks: agentq::outbound::webhook::SendPolicy,
}

/// Serves one request. Never fails: every error becomes a problem+json response.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    respond(route(app, &req).await)
}

#[tracing::instrument(skip_all, fields(tenant_id, task_id))]
async fn route(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    // Routing is checked before authentication so a wrong route is a 404/405 for anyone.
    let matched = routes::resolve(req.method().as_str(), req.uri().path())?;
    // API Gateway passes `{id}` as a path parameter; a bare function URL has the path.
    let id = || {
        req.path_parameters_ref()
            .and_then(|p| p.first("id").map(str::to_owned))
            .or_else(|| matched.id.clone())
            .unwrap_or_default()
    };
    // The console's files hold no data: the page signs in with the key its user enters.
    match matched.route.op {
        Op::Console => return console::serve(None),
        Op::ConsoleFile => return console::serve(Some(&id())),
        _ => {}
    }
    let caller = authenticate(app.store.as_ref(), &app.auth, req).await?;
    let decision = app.reads.take(&caller.tenant.tenant_id, agentq::now());
    if !decision.allowed {
        return Err(ApiError::RateLimited { limit: app.reads.burst, rate_per_sec: app.reads.per_sec, decision });
    }
    match matched.route.op {
        Op::GetTask => get_task(app, &caller, &id()).await,
        Op::CancelTask => cancel(app, &caller, &id()).await,
        Op::TaskSteps => steps(app, &caller, &id(), req).await,
        Op::TaskEvents => events(app, &caller, &id(), req).await,
        Op::ListTasks => list(app, &caller, req).await,
        Op::Usage => usage(app, &caller, req).await,
        Op::TaskDeliveries => webhooks::deliveries(app, &caller, &id(), req).await,
        Op::CreateWebhook => webhooks::create(app, &caller, req).await,
        Op::ListWebhooks => webhooks::list(app, &caller).await,
        Op::DeleteWebhook => webhooks::remove(app, &caller, &id()).await,
        Op::RotateWebhook => webhooks::rotate(app, &caller, &id()).await,
        Op::TestWebhook => webhooks::test(app, &caller, &id()).await,
        Op::GetBatch => batches::get(app, &caller, &id(), req).await,
        Op::CancelBatch => batches::cancel(app, &caller, &id()).await,
        Op::ListSchedules => schedules::list(app, &caller).await,
        Op::GetSchedule => schedules::get(app, &caller, &id()).await,
        Op::DeleteSchedule => schedules::delete(app, &caller, &id()).await,
        Op::PauseSchedule => schedules::set_state(app, &caller, &id(), ScheduleState::Paused).await,
        Op::ResumeSchedule => schedules::set_state(app, &caller, &id(), ScheduleState::Active).await,
        // Another function's route: API Gateway never sends it here.
        _ => Err(ApiError::NotFound(format!("no route for {}", req.uri().path()))),
    }
}

/// The caller's task with this id: anything else is the same 404.
pub(crate) async fn owned_task(app: &App, caller: &Caller, raw: &str) -> Result<TaskRecord, ApiError> {
    agentq::edge::auth::owned_task(app.store.as_ref(), caller, raw).await
}

async fn get_task(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>, ApiError> {
    let task = owned_task(app, caller, raw).await?;
    Ok(json_response(StatusCode::OK, &TaskView::from(&task)))
}

async fn steps(app: &App, caller: &Caller, raw: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let limit = limit(req, DEFAULT_STEPS, MAX_STEPS)?;
    let after = cursor(req, |sk| sk.starts_with("STEP#").then_some(sk))?;
    let task = owned_task(app, caller, raw).await?;
    let page = app.store.step_page(task.task_id, after.as_deref(), limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &StepList {
            task_id: task.task_id,
            steps: page
                .steps
                .iter()
                .map(|s| StepEntry {
                    step: StepView::from(s),
                    inherited: task.fork.as_ref().is_some_and(|f| s.step() <= f.from_step),
                })
                .collect(),
            next_cursor: page.next.map(|sk| URL_SAFE_NO_PAD.encode(sk)),
        },
    ))
}

async fn events(app: &App, caller: &Caller, raw: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let limit = limit(req, DEFAULT_EVENTS, MAX_EVENTS)?;
    let after = match query(req, "after") {
        None => 0,
        Some(a) => a.parse::<u32>().map_err(|_| invalid("after", "must be an event's seq, a whole number"))?,
    };
    let task = owned_task(app, caller, raw).await?;
    let page = app.store.events(task.task_id, after, limit).await?;
    Ok(json_response(StatusCode::OK, &EventList { task_id: task.task_id, events: page.events, next_after: page.next }))
}

/// The `cursor` query parameter, one this API returned (base64url of what `parse` accepts).
pub(crate) fn cursor<T>(req: &Request, parse: impl FnOnce(String) -> Option<T>) -> Result<Option<T>, ApiError> {
    query(req, "cursor")
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(parse)
                .ok_or_else(|| invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()
}

/// The `limit` query parameter: `default` if absent, 1 to `max`.
pub(crate) fn limit(req: &Request, default: usize, max: usize) -> Result<usize, ApiError> {
    match query(req, "limit") {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| invalid("limit", format!("must be an integer from 1 to {max}"))),
    }
}

async fn cancel(app: &App, caller: &Caller, raw: &str) -> Result<Response<Body>, ApiError> {
    let task = owned_task(app, caller, raw).await?;
    let outcome = app.store.cancel(task.task_id, agentq::now()).await?;
    tracing::info!(outcome = ?outcome, "cancel requested");
    let status = match outcome {
        Cancelled::Now => StatusCode::OK,
        Cancelled::Requested => StatusCode::ACCEPTED,
        Cancelled::AlreadyFinished(s) => {
            return Err(ApiError::Conflict { code: "task_finished", detail: format!("the task already ended {s}") });
        }
        Cancelled::NotFound => return Err(ApiError::NotFound(format!("no task with id {raw:?}"))),
    };
    let task = app.store.get(task.task_id).await?.unwrap_or(task);
    Ok(json_response(status, &TaskView::from(&task)))
}

fn query(req: &Request, name: &str) -> Option<String> {
    let params = req.query_string_parameters_ref()?;
    params.first(name).map(str::to_owned)
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation(vec![FieldError::new(field, message)])
}

async fn list(app: &App, caller: &Caller, req: &Request) -> Result<Response<Body>, ApiError> {
    let status = match query(req, "status") {
        None => None,
        Some(s) => Some(serde_json::from_value::<TaskStatus>(serde_json::Value::String(s)).map_err(|_| {
            let all: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid("status", format!("must be one of {}", all.join(", ")))
        })?),
    };
    let limit = limit(req, DEFAULT_PAGE, MAX_PAGE)?;
    let after = cursor(req, |s| s.parse::<TaskId>().ok())?;
    let page = app.store.list(&caller.tenant.tenant_id, status, limit, after).await?;
    let body = TaskList {
        tasks: page.tasks.iter().map(TaskSummary::from).collect(),
        next_cursor: page.next.map(|id| URL_SAFE_NO_PAD.encode(id.to_string())),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn date(field: &str, raw: &str) -> Result<Date, ApiError> {
    Date::parse(raw, &time::format_description::well_known::Iso8601::DATE)
        .ok()
        .filter(|_| raw.len() == 10)
        .ok_or_else(|| invalid(field, "must be a date, YYYY-MM-DD"))
}

async fn usage(app: &App, caller: &Caller, req: &Request) -> Result<Response<Body>, ApiError> {
    let today = agentq::now().date();
    let to = query(req, "to").map(|t| date("to", &t)).transpose()?.unwrap_or(today);
    let from = query(req, "from").map(|f| date("from", &f)).transpose()?.unwrap_or(to - Duration::days(29));
    if from > to {
        return Err(invalid("from", "must not be after to"));
    }
    if (to - from).whole_days() >= MAX_USAGE_DAYS {
        return Err(invalid("from", format!("the range is at most {MAX_USAGE_DAYS} days")));
    }
    let (from, to) = (day(from), day(to));
    let days = app.store.days(&caller.tenant.tenant_id, &from, &to).await?;
    let mut report = UsageReport::new(from, to, &days);
    report.monthly_budget_usd = caller.tenant.limits.monthly_budget_nanos.map(|n| n as f64 / 1e9);
    Ok(json_response(StatusCode::OK, &report))
}

fn day(d: Date) -> String {
    day_of(d.midnight().assume_utc())
}
