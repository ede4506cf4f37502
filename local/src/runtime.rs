//! A small Lambda service: runs each function's binary as processes that speak the Lambda
//! Runtime API to us, and takes invocations through the Lambda Invoke API. It does what
//! `cargo lambda watch` does for the local stack, plus what the fault suite and benchmarks
//! need from the real service: a process that dies (or runs past its timeout, and is killed)
//! fails its invocation and is started again, deadlines are the function's own timeout from
//! template.yaml, and prebuilt (release) binaries run as they are.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Mutex, mpsc, oneshot};

/// One function to host.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub binary: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// The function's memory: a process that uses more is stopped, as Lambda stops it.
    pub memory_mb: u64,
    /// Processes started at once, kept warm.
    pub instances: usize,
    /// Processes at most: when every process is busy, an invocation starts another (as Lambda
    /// scales out), up to this many (the function's concurrency limit).
    pub max_instances: usize,
}

/// What an invocation came to: its response (or the start of a streamed one), or its error.
type Outcome = Result<Reply, Bytes>;

/// A function's response: whole, or streamed (`Lambda-Runtime-Function-Response-Mode:
/// streaming`), its chunks passed on as the function sends them.
enum Reply {
    Whole(Bytes),
    Streamed(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

struct Invocation {
    id: String,
    payload: Bytes,
    /// The function's timeout: its deadline runs from when a process takes it, as in Lambda.
    timeout: Duration,
    reply: oneshot::Sender<Outcome>,
}

type Queue = Arc<Mutex<mpsc::Receiver<Invocation>>>;

/// One hosted function: where its invocations wait, and its processes.
struct Function {
    spec: FunctionSpec,
    invocations: mpsc::Sender<Invocation>,
    queue: Queue,
    /// Processes started.
    started: AtomicUsize,
    load: Arc<Load>,
}

/// A function's processes waiting for an invocation (or starting, soon to), and invocations
/// waiting for a process.
#[derive(Default)]
struct Load {
    idle: AtomicUsize,
    starting: AtomicUsize,
    waiting: AtomicUsize,
}

/// Counts one up while it lives (a process's `next` may be dropped mid-wait).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Function {
    fn start_instance(&self) {
        let instance = self.started.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(supervise(self.spec.clone(), instance, self.queue.clone(), self.load.clone()));
    }

    /// Starts one more process if more invocations wait than processes are free to take
    /// them, and the limit allows.
    fn scale_out(&self) {
        let started = self.started.load(Ordering::SeqCst);
        let free = self.load.idle.load(Ordering::SeqCst) + self.load.starting.load(Ordering::SeqCst);
        if self.load.waiting.load(Ordering::SeqCst) > free && started < self.spec.max_instances.max(self.spec.instances)
        {
            tracing::info!(function = %self.spec.name, instance = started, "every process is busy: starting another");
            self.start_instance();
        }
    }
}

/// The functions being hosted, by name.
#[derive(Clone, Default)]
pub struct Host {
    functions: HashMap<String, Arc<Function>>,
}

impl Host {
    /// Starts `instances` supervised processes of every function; more start as load needs.
    pub fn start(specs: Vec<FunctionSpec>) -> Self {
        let mut functions = HashMap::new();
        for spec in specs {
            let (invocations, rx) = mpsc::channel(1024);
            let function = Arc::new(Function {
                invocations,
                queue: Arc::new(Mutex::new(rx)),
                started: AtomicUsize::new(0),
                load: Arc::default(),
                spec,
            });
            for _ in 0..function.spec.instances.max(1) {
                function.start_instance();
            }
            functions.insert(function.spec.name.clone(), function);
        }
        Self { functions }
    }

    /// The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`).
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .route("/lambda-url/{name}/{*path}", axum::routing::any(function_url))
            .with_state(Arc::new(self))
    }
}

/// A function URL (`/lambda-url/{name}/…`, as `cargo lambda watch` serves it): the request
/// as a function URL event; a streamed answer is passed on as it comes.
async fn function_url(
    State(host): State<Arc<Host>>,
    Path((name, _)): Path<(String, String)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix(&format!("/lambda-url/{name}")).unwrap_or("/");
    let Ok(inner) = format!("{path}{}", uri.query().map(|q| format!("?{q}")).unwrap_or_default()).parse() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let route = crate::template::Route { method: None, path: None, function: name.clone(), streaming: true };
    let event = crate::gateway::event(&route, Default::default(), &method, &inner, &headers, &body, "127.0.0.1");
    let answer = match dispatch(&host, &name, Bytes::from(event.to_string())).await {
        Ok(Reply::Streamed(mut chunks)) => {
            crate::gateway::streamed_response(futures::stream::poll_fn(move |cx| chunks.poll_recv(cx))).await
        }
        Ok(Reply::Whole(bytes)) => serde_json::from_slice(&bytes)
            .map_err(anyhow::Error::from)
            .and_then(|out| crate::gateway::response_of(&out)),
        Err(failure) => return failure,
    };
    answer.unwrap_or_else(|e| {
        tracing::error!(function = %name, error = format!("{e:#}"), "function URL failed");
        (StatusCode::BAD_GATEWAY, "the function's answer could not be read").into_response()
    })
}

async fn invoke(State(host): State<Arc<Host>>, Path(name): Path<String>, payload: Bytes) -> Response {
    match dispatch(&host, &name, payload).await {
        Ok(Reply::Whole(body)) => (StatusCode::OK, body).into_response(),
        Ok(Reply::Streamed(mut chunks)) => {
            let chunks = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
            (StatusCode::OK, axum::body::Body::from_stream(chunks)).into_response()
        }
        Err(failure) => failure,
    }
}

/// Hands `payload` to one of the function's processes and waits for its answer; a failure is
/// the response the Invoke API gives for it.
async fn dispatch(host: &Host, name: &str, payload: Bytes) -> Result<Reply, Response> {
    let Some(function) = host.functions.get(name) else {
        return Err((StatusCode::NOT_FOUND, format!("no function {name}")).into_response());
    };
    let timeout = function.spec.timeout;
    let (reply, answer) = oneshot::channel();
    let invocation = Invocation { id: ulid::Ulid::generate().to_string().to_lowercase(), payload, timeout, reply };
    function.load.waiting.fetch_add(1, Ordering::SeqCst);
    function.scale_out();
    if function.invocations.send(invocation).await.is_err() {
        function.load.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err((StatusCode::SERVICE_UNAVAILABLE, "the function is not running").into_response());
    }
    // Waiting for a process to take it counts too: Lambda would have throttled.
    let outcome = tokio::time::timeout(timeout + Duration::from_secs(30), answer).await;
    match outcome {
        Ok(Ok(Ok(reply))) => Ok(reply),
        Ok(Ok(Err(error))) => Err(function_error(error)),
        Ok(Err(_)) => Err(function_error(Bytes::from_static(
            br#"{"errorType":"Runtime.Lost","errorMessage":"the invocation was lost"}"#,
        ))),
        Err(_) => Err(function_error(Bytes::from_static(
            br#"{"errorType":"Sandbox.Timedout","errorMessage":"no answer in time"}"#,
        ))),
    }
}

fn function_error(body: Bytes) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
    r
}

/// One process's Runtime API: the invocations it holds.
struct Instance {
    queue: Queue,
    /// The function's processes and invocations waiting.
    load: Arc<Load>,
    function: String,
    instance: usize,
    /// When its process was started, and whether it has asked for its first invocation.
    started: std::time::Instant,
    ready: std::sync::Once,
    held: Mutex<HashMap<String, (oneshot::Sender<Outcome>, u64)>>,
}

/// Runs one process of a function for ever: start it, serve its Runtime API, and when it
/// exits (or is killed for running past an invocation's deadline), fail what it held and
/// start it again.
async fn supervise(spec: FunctionSpec, instance: usize, queue: Queue, load: Arc<Load>) {
    loop {
        if let Err(e) = run_once(&spec, instance, queue.clone(), load.clone()).await {
            tracing::error!(function = %spec.name, instance, error = format!("{e:#}"), "function process failed to start");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_once(spec: &FunctionSpec, instance: usize, queue: Queue, load: Arc<Load>) -> anyhow::Result<()> {
    let state = Arc::new(Instance {
        queue,
        load,
        started: std::time::Instant::now(),
        ready: std::sync::Once::new(),
        instance,
        function: spec.name.clone(),
        held: Mutex::new(HashMap::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = listener.local_addr()?;
    let router = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    // Counted as starting before it can ask for work, so the count never goes below zero.
    state.load.starting.fetch_add(1, Ordering::SeqCst);
    let mut child = tokio::process::Command::new(&spec.binary)
        .envs(&spec.env)
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", spec.memory_mb.to_string())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.binary.display()))
        .inspect_err(|_| {
            state.load.starting.fetch_sub(1, Ordering::SeqCst);
        })?;
    let pid = child.id().unwrap_or_default();
    tracing::info!(function = %spec.name, instance, pid, "function process started");

    // Lambda stops a function that runs past its deadline, or uses more memory than it was
    // given; so do we. Each new peak of the process's memory is logged (`max_memory_used_mb`,
    // Lambda's "Max Memory Used"), so a run shows what a function's `MemorySize` must hold.
    let mut peak_mb = 0;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
                if state.held.lock().await.values().any(|(_, deadline)| now_ms > deadline + 1_000) {
                    tracing::warn!(function = %spec.name, instance, pid, "invocation ran past its deadline; stopping the process");
                    let _ = child.start_kill();
                }
                let Some(memory) = Memory::of(pid) else { continue };
                if memory.peak_mb > peak_mb {
                    peak_mb = memory.peak_mb;
                    tracing::info!(function = %spec.name, instance, pid, max_memory_used_mb = peak_mb, memory_size_mb = spec.memory_mb, "function process memory peak");
                }
                if memory.resident_mb > spec.memory_mb {
                    tracing::warn!(function = %spec.name, instance, pid, used_mb = memory.resident_mb, memory_size_mb = spec.memory_mb, "function process ran out of memory; stopping it");
                    let _ = child.start_kill();
                }
            }
        }
    };
    server.abort();
    if !state.ready.is_completed() {
        state.load.starting.fetch_sub(1, Ordering::SeqCst);
    }
    let lost: Vec<_> = state.held.lock().await.drain().collect();
    tracing::warn!(function = %spec.name, instance, pid, %status, lost = lost.len(), "function process exited");
    for (_, (reply, _)) in lost {
        let _ = reply.send(Err(Bytes::from(format!(
            r#"{{"errorType":"Runtime.ExitError","errorMessage":"the function's process exited ({status})"}}"#
        ))));
    }
    Ok(())
}

/// A process's memory, from `/proc/<pid>/status` (Linux), in MB as Lambda counts them (MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    /// Resident now (`VmRSS`).
    resident_mb: u64,
    /// The most it has been resident (`VmHWM`).
    peak_mb: u64,
}

impl Memory {
    fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    fn parse(status: &str) -> Option<Self> {
        let mb = |field: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(field))?;
            let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kb.div_ceil(1024))
        };
        Some(Self { resident_mb: mb("VmRSS:")?, peak_mb: mb("VmHWM:")? })
    }
}

async fn next(State(state): State<Arc<Instance>>) -> Response {
    // The first `next` is the end of the process's init (Lambda's Init phase).
    state.ready.call_once(|| {
        state.load.starting.fetch_sub(1, Ordering::SeqCst);
        let init_ms = state.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(function = %state.function, instance = state.instance, init_ms, "function process ready");
    });
    let invocation = {
        let _idle = Counted::new(&state.load.idle);
        let mut queue = state.queue.lock().await;
        queue.recv().await
    };
    if invocation.is_some() {
        state.load.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    let Some(inv) = invocation else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    let deadline = time::OffsetDateTime::now_utc() + inv.timeout;
    let deadline_ms = (deadline.unix_timestamp_nanos() / 1_000_000) as u64;
    state.held.lock().await.insert(inv.id.clone(), (inv.reply, deadline_ms));
    let mut headers = HeaderMap::new();
    let arn = format!(
        "arn:aws:lambda:{}:{}:function:{}",
        crate::template::LOCAL_REGION,
        crate::template::LOCAL_ACCOUNT,
        state.function
    );
    for (k, v) in [
        ("lambda-runtime-aws-request-id", inv.id.clone()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", arn),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
    (StatusCode::OK, headers, inv.payload).into_response()
}

async fn respond(
    State(state): State<Arc<Instance>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> StatusCode {
    let Some((reply, _)) = state.held.lock().await.remove(&id) else { return StatusCode::NOT_FOUND };
    let streaming = headers
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if !streaming {
        return match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                let _ = reply.send(Ok(Reply::Whole(bytes)));
                StatusCode::ACCEPTED
            }
            Err(_) => StatusCode::BAD_REQUEST,
        };
    }
    // Streamed: the invoker gets the chunks as they arrive, until the function ends its body
    // (or the invoker hangs up, which ends the function's response as Lambda does).
    use futures::StreamExt as _;
    let (tx, rx) = mpsc::channel(16);
    let _ = reply.send(Ok(Reply::Streamed(rx)));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(std::io::Error::other);
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    StatusCode::ACCEPTED
}

async fn error(State(state): State<Arc<Instance>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match state.held.lock().await.remove(&id) {
        Some((reply, _)) => {
            let _ = reply.send(Err(body));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn init_error(State(state): State<Arc<Instance>>, body: Bytes) -> StatusCode {
    tracing::error!(function = %state.function, error = %String::from_utf8_lossy(&body), "function failed to initialize");
    StatusCode::ACCEPTED
}

/// Reads a dotenv-style file of `KEY="VALUE"` lines (as `make up` writes them).
pub fn read_env_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).map_or_else(
                || v.to_owned(),
                |inner| inner.replace("\\\"", "\"").replace("\\$", "$").replace("\\\\", "\\"),
            );
            (k.trim().to_owned(), v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_memory_is_read_in_mebibytes_rounded_up() {
        let status = "Name:\tworker\nVmPeak:\t  900000 kB\nVmHWM:\t   40961 kB\nVmRSS:\t   30720 kB\nThreads:\t2\n";
        assert_eq!(Memory::parse(status), Some(Memory { resident_mb: 30, peak_mb: 41 }));
        assert_eq!(Memory::parse("Name:\tzombie\n"), None);
    }

    #[test]
    fn this_process_memory_can_be_read() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.resident_mb > 0 && m.peak_mb >= m.resident_mb, "{m:?}");
    }
}
