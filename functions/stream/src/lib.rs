//! The stream function: `GET /v1/tasks/{id}/stream`, a task's event log as server-sent
//! events. The events so far come first, then new ones as they are written, and the stream
//! ends after the task's terminal event. Each event's SSE `id` is its `seq`, so a client that
//! reconnects with `Last-Event-ID` (or `?after=`) gets exactly what it missed.
//!
//! Deployed behind a Function URL in `RESPONSE_STREAM` mode (HTTP APIs cannot stream); it
//! authenticates API keys itself, the same way as the other functions. A stream lives at most
//! [`StreamConfig::max_life`] and then ends; the client reconnects. Errors before the stream
//! starts are the usual problem+json answers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use agentq::domain::events::TaskEvent;
use agentq::domain::task::{FieldError, TaskId};
use agentq::edge::auth::{authenticate, owned_task};
use agentq::edge::http::ApiError;
use agentq::edge::routes::{self, Op};
use agentq::runtime::config::StreamConfig;
use agentq::store::{TaskRead, TenantRead};
use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use http_body_util::StreamBody;
use lambda_http::http::{HeaderValue, Response, StatusCode, header};
use lambda_http::{Body, Request, RequestExt as _};
use tokio::time::Instant;

/// Events read per poll.
const PAGE: usize = 100;
/// What a reconnecting client waits before trying again (the SSE `retry` field).
const RETRY_MS: u32 = 1000;

/// What the stream reads.
pub trait StreamStore: TaskRead + TenantRead {}
impl<T: TaskRead + TenantRead> StreamStore for T {}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn StreamStore>,
    pub reads: Arc<agentq::edge::throttle::ReadThrottle>,
    pub auth: Arc<agentq::edge::auth::AuthCache>,
    pub settings: StreamConfig,
}

/// A response body sent as it is produced.
pub type StreamedBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// Serves one request: an event stream, or a problem+json answer saying why not.
pub async fn handle(app: &App, req: Request) -> Response<StreamedBody> {
    match open(app, &req).await {
        Ok((task_id, after, over)) => events(app.clone(), task_id, after, over),
        Err(e) => whole(Response::from(e)),
    }
}

/// Checks the route, the key, the task and the resume point.
#[tracing::instrument(skip_all, fields(tenant_id, task_id))]
/// Returns the task, where to resume, and whether the task has ended with nothing after that.
async fn open(app: &App, req: &Request) -> Result<(TaskId, u32, bool), ApiError> {
    let matched = routes::resolve(req.method().as_str(), req.uri().path())?;
    if matched.route.op != Op::TaskStream {
        // A function URL takes any path; only the stream is served here.
        return Err(ApiError::NotFound(format!("no route for {}", req.uri().path())));
    }
    let raw = matched.id.unwrap_or_default();
    let after = resume_point(req)?;
    let caller = authenticate(app.store.as_ref(), &app.auth, req).await?;
    let decision = app.reads.take(&caller.tenant.tenant_id, agentq::now());
    if !decision.allowed {
        return Err(ApiError::RateLimited { limit: app.reads.burst, rate_per_sec: app.reads.per_sec, decision });
    }
    let task = owned_task(app.store.as_ref(), &caller, &raw).await?;
    Ok((task.task_id, after, task.status.is_terminal() && after >= task.events))
}

/// `Last-Event-ID` (what browsers send on reconnecting), else `?after=`, else 0.
fn resume_point(req: &Request) -> Result<u32, ApiError> {
    let header = req.headers().get("last-event-id").map(|v| ("Last-Event-ID", v.to_str().unwrap_or("?").to_owned()));
    let query = req.query_string_parameters_ref().and_then(|q| q.first("after").map(|a| ("after", a.to_owned())));
    match header.or(query) {
        None => Ok(0),
        Some((field, v)) => v
            .trim()
            .parse()
            .map_err(|_| ApiError::Validation(vec![FieldError::new(field, "must be an event's seq, a whole number")])),
    }
}

/// A whole (non-streamed) response as a body of one chunk.
fn whole(response: Response<Body>) -> Response<StreamedBody> {
    let (parts, body) = response.into_parts();
    let bytes = Bytes::copy_from_slice(body.as_ref());
    let chunks: Pin<Box<dyn Stream<Item = _> + Send>> =
        Box::pin(futures::stream::once(async move { Ok(Frame::data(bytes)) }));
    Response::from_parts(parts, StreamBody::new(chunks))
}

/// One SSE message for an event: `id` is its seq, `event` its type, `data` the event as
/// `GET /v1/tasks/{id}/events` shows it.
pub fn message(event: &TaskEvent) -> String {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\nevent: {}\ndata: {data}\n\n", event.seq, event.kind.as_str())
}

/// Where a stream is.
struct Cursor {
    app: App,
    task_id: TaskId,
    after: u32,
    opened: Instant,
    last_sent: Instant,
    ended: bool,
}

impl Cursor {
    /// The next chunk to send, waiting for one; `None` once the stream is over.
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            // The reads a stream made come after its invocation's own flush: report them now.
            agentq::observe::metrics::flush_stdout();
            return None;
        }
        let settings = self.app.settings;
        loop {
            if self.opened.elapsed() >= settings.max_life {
                // Over its life: the client reconnects from the last id it got.
                self.ended = true;
                return Some(Bytes::from_static(b": this stream has reached its maximum life; reconnect\n\n"));
            }
            match self.app.store.events(self.task_id, self.after, PAGE).await {
                Ok(page) if !page.events.is_empty() => {
                    let mut chunk = String::new();
                    for event in &page.events {
                        chunk.push_str(&message(event));
                        self.after = event.seq;
                        if event.kind.is_terminal() {
                            self.ended = true;
                            break;
                        }
                    }
                    self.last_sent = Instant::now();
                    return Some(Bytes::from(chunk));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(task_id = %self.task_id, error = e.to_string(), "reading events failed; the stream ends");
                    self.ended = true;
                    return Some(Bytes::from_static(b": the event log could not be read; reconnect\n\n"));
                }
            }
            if self.last_sent.elapsed() >= settings.keep_alive {
                self.last_sent = Instant::now();
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
            tokio::time::sleep(settings.poll).await;
        }
    }
}

/// The streamed answer: `retry`, then the events after `after` as they come.
fn events(app: App, task_id: TaskId, after: u32, over: bool) -> Response<StreamedBody> {
    let now = Instant::now();
    let cursor = Cursor { app, task_id, after, opened: now, last_sent: now, ended: over };
    let first = futures::stream::once(async { Ok(Frame::data(Bytes::from(format!("retry: {RETRY_MS}\n\n")))) });
    let rest = futures::stream::unfold(cursor, |mut c| async move {
        let chunk = c.next().await?;
        Some((Ok(Frame::data(chunk)), c))
    });
    let chunks: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(futures::StreamExt::chain(first, rest));
    let mut response = Response::new(StreamBody::new(chunks));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer (nginx) pass the events through at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
