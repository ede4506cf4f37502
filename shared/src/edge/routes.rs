//! The HTTP surface, declared once: every route's method, path template and the function that
//! serves it. Both HTTP functions route through [`resolve`], so an unknown path is the same
//! 404 and a wrong method the same 405 with the same `Allow` wherever it lands; the contract
//! test holds this table, `template.yaml` and `openapi.json` to each other.

use crate::edge::http::ApiError;

/// A function that serves HTTP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Submit,
    Status,
    /// The event stream, behind its own Function URL (HTTP APIs cannot stream).
    Stream,
}

impl Function {
    /// The binary (and template `Binary`) name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Status => "status",
            Self::Stream => "stream",
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Submit,
    Health,
    Ready,
    OpenApi,
    ListTasks,
    GetTask,
    CancelTask,
    TaskSteps,
    TaskEvents,
    TaskStream,
    TaskDeliveries,
    TaskInput,
    ForkTask,
    SubmitBatch,
    GetBatch,
    CancelBatch,
    CreateSchedule,
    ListSchedules,
    GetSchedule,
    DeleteSchedule,
    PauseSchedule,
    ResumeSchedule,
    Usage,
    CreateWebhook,
    ListWebhooks,
    DeleteWebhook,
    RotateWebhook,
    TestWebhook,
    /// The console's page.
    Console,
    /// One of the console's files (`{id}` is its name).
    ConsoleFile,
}

/// One route: method, path template (`{id}` is a path parameter), operation and function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub op: Op,
    pub function: Function,
}

const fn route(method: &'static str, path: &'static str, op: Op, function: Function) -> Route {
    Route { method, path, op, function }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/tasks", Op::Submit, Function::Submit),
    route("GET", "/v1/tasks", Op::ListTasks, Function::Status),
    route("GET", "/v1/tasks/{id}", Op::GetTask, Function::Status),
    route("DELETE", "/v1/tasks/{id}", Op::CancelTask, Function::Status),
    route("GET", "/v1/tasks/{id}/steps", Op::TaskSteps, Function::Status),
    route("GET", "/v1/tasks/{id}/events", Op::TaskEvents, Function::Status),
    route("GET", "/v1/tasks/{id}/stream", Op::TaskStream, Function::Stream),
    route("GET", "/v1/tasks/{id}/deliveries", Op::TaskDeliveries, Function::Status),
    route("POST", "/v1/tasks/{id}/input", Op::TaskInput, Function::Submit),
    route("POST", "/v1/tasks/{id}/fork", Op::ForkTask, Function::Submit),
    route("POST", "/v1/batches", Op::SubmitBatch, Function::Submit),
    route("GET", "/v1/batches/{id}", Op::GetBatch, Function::Status),
    route("DELETE", "/v1/batches/{id}", Op::CancelBatch, Function::Status),
    route("POST", "/v1/schedules", Op::CreateSchedule, Function::Submit),
    route("GET", "/v1/schedules", Op::ListSchedules, Function::Status),
    route("GET", "/v1/schedules/{id}", Op::GetSchedule, Function::Status),
    route("DELETE", "/v1/schedules/{id}", Op::DeleteSchedule, Function::Status),
    route("POST", "/v1/schedules/{id}/pause", Op::PauseSchedule, Function::Status),
    route("POST", "/v1/schedules/{id}/resume", Op::ResumeSchedule, Function::Status),
    route("GET", "/v1/usage", Op::Usage, Function::Status),
    route("POST", "/v1/webhooks", Op::CreateWebhook, Function::Status),
    route("GET", "/v1/webhooks", Op::ListWebhooks, Function::Status),
    route("DELETE", "/v1/webhooks/{id}", Op::DeleteWebhook, Function::Status),
    route("POST", "/v1/webhooks/{id}/rotate", Op::RotateWebhook, Function::Status),
    route("POST", "/v1/webhooks/{id}/test", Op::TestWebhook, Function::Status),
    route("GET", "/health", Op::Health, Function::Submit),
    route("GET", "/ready", Op::Ready, Function::Submit),
    route("GET", "/openapi.json", Op::OpenApi, Function::Submit),
    route("GET", "/console", Op::Console, Function::Status),
    route("GET", "/console/{id}", Op::ConsoleFile, Function::Status),
];

/// A request matched to its route, with the path's `{id}` if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub route: Route,
    pub id: Option<String>,
}

/// Whether `path` fits `template`, and the `{id}` segment if the template has one.
fn fits(template: &str, path: &str) -> Option<Option<String>> {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let mut id = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg.to_owned()),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route of `method` and `path` (a trailing slash ignored): a 404 if no route has the
/// path, a 405 naming the allowed methods if none has the method.
pub fn resolve(method: &str, path: &str) -> Result<Matched, ApiError> {
    let path = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(id) = fits(route.path, path) {
            if route.method == method {
                return Ok(Matched { route: *route, id });
            }
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        return Err(ApiError::NotFound(format!("no route for {path}")));
    }
    allowed.sort_unstable();
    Err(ApiError::MethodNotAllowed { method: method.to_owned(), allowed: allowed.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_finds_its_route_and_id() {
        let m = resolve("GET", "/v1/tasks/01ABC/steps/").unwrap();
        assert_eq!((m.route.op, m.id.as_deref()), (Op::TaskSteps, Some("01ABC")));
        assert_eq!(resolve("POST", "/v1/tasks").unwrap().route.function, Function::Submit);
        assert_eq!(resolve("GET", "/v1/tasks").unwrap().route.function, Function::Status);
    }

    #[test]
    fn a_wrong_method_names_the_allowed_ones_and_an_unknown_path_is_not_found() {
        match resolve("PUT", "/v1/tasks/01ABC") {
            Err(ApiError::MethodNotAllowed { allowed, .. }) => assert_eq!(allowed, "DELETE, GET"),
            other => panic!("{other:?}"),
        }
        match resolve("PATCH", "/v1/tasks") {
            Err(ApiError::MethodNotAllowed { allowed, .. }) => assert_eq!(allowed, "GET, POST"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve("GET", "/v2/tasks"), Err(ApiError::NotFound(_))));
        assert!(matches!(resolve("GET", "/v1/tasks/a/b/c"), Err(ApiError::NotFound(_))));
    }
}
