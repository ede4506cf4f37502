//! `POST /v1/tasks/{id}/input`: a person's decisions on the tool calls a task waits on
//! (docs/approvals.md). Served by the submit function because answering sends the task's
//! message, as a submit does.
//!
//! The rules: the task must be the caller's and `waiting_for_input` (else 409
//! `not_waiting`); the body must answer each pending call exactly once (else 400), naming only
//! calls that are pending (else 409 `stale_decision`: decided already, or from an earlier
//! wait); an edited input must match the tool's schema (else 400). The decisions are recorded
//! as steps with the deciding key's id, atomically with the move back to `queued`, so two
//! racing answers cannot both apply: the loser gets the 409.

use agentq::domain::approval::{Action, DecisionError, parse_decisions};
use agentq::domain::task::{FieldError, TaskStatus};
use agentq::edge::api::TaskView;
use agentq::edge::auth::{Caller, authenticate, owned_task};
use agentq::edge::http::{ApiError, json_body, json_response};
use agentq::observe::telemetry::traces;
use agentq::store::StoreError;
use lambda_http::http::StatusCode;
use lambda_http::{Body, Request, RequestExt as _, Response};

use crate::App;

pub(crate) async fn input(app: &App, req: &Request, raw_id: &str) -> Result<Response<Body>, ApiError> {
    let caller: Caller = authenticate(app.store.as_ref(), &app.auth, req).await?;
    let now = agentq::now();
    let limits = caller.tenant.limits;
    let rate = app.store.take(&caller.tenant.tenant_id, &limits, now).await?;
    if !rate.allowed {
        return Err(ApiError::RateLimited { limit: limits.burst, rate_per_sec: limits.rate_per_sec, decision: rate });
    }
    let id =
        req.path_parameters_ref().and_then(|p| p.first("id").map(str::to_owned)).unwrap_or_else(|| raw_id.to_owned());
    let task = owned_task(app.store.as_ref(), &caller, &id).await?;
    let body = json_body(req)?;
    let pending = match (task.status, task.pending.as_deref()) {
        (TaskStatus::WaitingForInput, Some(pending)) => pending,
        (status, _) => {
            return Err(ApiError::Conflict {
                code: "not_waiting",
                detail: format!("the task is {status}, not waiting_for_input: there is nothing to decide"),
            });
        }
    };
    let decisions = parse_decisions(body, pending, &caller.key_id, now).map_err(|e| match e {
        DecisionError::NotJson(m) => ApiError::MalformedJson(m),
        DecisionError::Invalid(errors) => ApiError::Validation(errors),
        DecisionError::Stale(detail) => ApiError::Conflict { code: "stale_decision", detail },
    })?;
    let bad_edits: Vec<FieldError> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| d.action == Action::Edit)
        .filter_map(|(i, d)| {
            let input = d.input.as_ref()?;
            app.tools.check(&d.name, input).err().map(|why| FieldError::new(format!("decisions[{i}].input"), why))
        })
        .collect();
    if !bad_edits.is_empty() {
        return Err(ApiError::Validation(bad_edits));
    }

    let context = traces::headers_for(&tracing::Span::current());
    match agentq::usecases::approvals::resume(app.store.as_ref(), app.queue.as_ref(), &task, &decisions, &context, now)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(ApiError::Conflict {
                code: "stale_decision",
                detail: "the task changed while deciding (answered by another request, cancelled or timed out)".into(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let actions: Vec<String> = decisions.iter().map(|d| format!("{}:{:?}", d.name, d.action)).collect();
    tracing::info!(task_id = %task.task_id, key_id = %caller.key_id, decisions = ?actions, "tool calls decided; task resumed");
    let task = app.store.get(task.task_id).await?.unwrap_or(task);
    Ok(json_response(StatusCode::ACCEPTED, &TaskView::from(&task)))
}
