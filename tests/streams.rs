//! The event stream (`GET /v1/tasks/{id}/stream`) against the emulators, read with a real SSE
//! parser: live events in order until the end, exact resumption with `Last-Event-ID`, a
//! maximum life after which a reconnect continues, and the usual refusals.

use std::time::Duration;

use agentq::runtime::config::StreamConfig;
use agentq_tests::{CalculatorScript, TestApp, answer};
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

const QUICK: StreamConfig = StreamConfig {
    poll: Duration::from_millis(50),
    max_life: Duration::from_secs(60),
    keep_alive: Duration::from_secs(15),
};

/// What one connection gave: its status, its content type, and each message's (id, event,
/// parsed data) in order; a refusal's problem+json as the one message's data.
struct Connection {
    status: u16,
    content_type: String,
    messages: Vec<(String, String, Value)>,
}

impl Connection {
    fn seqs(&self) -> Vec<u64> {
        self.messages.iter().map(|(_, _, e)| e["seq"].as_u64().unwrap()).collect()
    }
    fn kinds(&self) -> Vec<&str> {
        self.messages.iter().map(|(_, kind, _)| kind.as_str()).collect()
    }
}

/// Opens the stream as a client would (key, `Last-Event-ID`, query) and reads it to its end.
async fn connect(
    app: &TestApp,
    settings: StreamConfig,
    key: &str,
    id: &str,
    last_event_id: Option<&str>,
    query: &[(&str, &str)],
) -> Connection {
    let path = format!("/v1/tasks/{id}/stream");
    // The sample event is what a function URL sends: no route, no path parameters.
    let mut event: Value = serde_json::from_str(include_str!("../events/stream.json")).unwrap();
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["headers"]["authorization"] = json!(format!("Bearer {key}"));
    event["headers"].as_object_mut().unwrap().remove("last-event-id");
    if let Some(last) = last_event_id {
        event["headers"]["last-event-id"] = json!(last);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        event["rawQueryString"] = json!(query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
    }
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let stream_app = stream::App {
        store: app.store.clone(),
        reads: app.status.reads.clone(),
        auth: app.status.auth.clone(),
        settings,
    };
    let response = stream::handle(&stream_app, req).await;
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let chunks = response.into_body().into_data_stream();
    if content_type != "text/event-stream" {
        let bytes: Vec<u8> = chunks.map(|c| c.unwrap().to_vec()).concat().await;
        return Connection {
            status,
            content_type,
            messages: vec![(String::new(), String::new(), serde_json::from_slice(&bytes).unwrap())],
        };
    }
    let mut messages = Vec::new();
    let mut parsed = chunks.eventsource();
    while let Some(message) =
        tokio::time::timeout(Duration::from_secs(90), parsed.next()).await.expect("the stream stalled")
    {
        let message = message.expect("a well-formed event stream");
        if message.data.is_empty() {
            continue; // `retry:` alone
        }
        messages.push((message.id, message.event, serde_json::from_str(&message.data).unwrap()));
    }
    Connection { status, content_type, messages }
}

#[tokio::test]
async fn a_stream_sends_each_event_as_it_happens_and_ends_after_the_last() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let id = app.submit("What is 6 * 7?").await;
    // The stream is open before the task starts and follows it live.
    let (live, task) = tokio::join!(connect(&app, QUICK, &app.key, &id, None, &[]), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.run_until_terminal(&id, Duration::from_secs(60)).await
    });
    assert_eq!(task["status"], "succeeded");
    assert_eq!((live.status, live.content_type.as_str()), (200, "text/event-stream"));
    assert_eq!(live.kinds(), ["task.queued", "task.started", "task.step", "task.step", "task.succeeded"]);
    assert_eq!(live.seqs(), [1, 2, 3, 4, 5]);
    assert!(
        live.messages.iter().all(|(sse_id, _, e)| sse_id.parse::<u64>().ok() == e["seq"].as_u64()),
        "the SSE id is the seq"
    );
    let (_, log) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/events"), &[]).await;
    let logged: Vec<&Value> = log["events"].as_array().unwrap().iter().collect();
    let streamed: Vec<&Value> = live.messages.iter().map(|(_, _, e)| e).collect();
    assert_eq!(streamed, logged, "the stream carries the log's events as the log shows them");
}

#[tokio::test]
async fn a_dropped_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let id = app.submit("What is 6 * 7?").await;
    app.run_until_terminal(&id, Duration::from_secs(60)).await;

    for cut in 0..5 {
        let resumed = connect(&app, QUICK, &app.key, &id, Some(&cut.to_string()), &[]).await;
        assert_eq!(resumed.seqs(), ((cut + 1)..=5).collect::<Vec<u64>>(), "after {cut}");
    }
    let by_query = connect(&app, QUICK, &app.key, &id, None, &[("after", "3")]).await;
    assert_eq!(by_query.seqs(), [4, 5]);
    let header_wins = connect(&app, QUICK, &app.key, &id, Some("4"), &[("after", "1")]).await;
    assert_eq!(header_wins.seqs(), [5], "Last-Event-ID is what a reconnecting client sends");
    // Resumed after the end: nothing more to say, and it says so at once.
    let started = std::time::Instant::now();
    let over = connect(&app, QUICK, &app.key, &id, Some("5"), &[]).await;
    assert!(over.messages.is_empty() && started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_life_and_a_reconnect_continues_where_it_stopped() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("done", json!({}))).mount(&app.model).await;
    let id = app.submit("wait for me").await;
    let short = StreamConfig { max_life: Duration::from_secs(1), ..QUICK };
    // Nobody runs the task yet: the stream gives what there is and ends at its life.
    let started = std::time::Instant::now();
    let first = connect(&app, short, &app.key, &id, None, &[]).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(first.kinds(), ["task.queued"]);
    app.run_until_terminal(&id, Duration::from_secs(60)).await;
    let last = first.messages.last().unwrap().0.clone();
    let second = connect(&app, short, &app.key, &id, Some(&last), &[]).await;
    assert_eq!(second.kinds(), ["task.started", "task.step", "task.succeeded"]);
    assert_eq!(second.seqs(), [2, 3, 4]);
}

#[tokio::test]
async fn a_stream_is_refused_without_a_key_for_another_tenants_task_and_with_a_bad_resume_point() {
    let app = TestApp::spawn().await;
    let id = app.submit("mine").await;
    let other = app.tenant("globex", Default::default()).await;
    let cases = [
        ("aq_wrong", Some("1"), 401, "unauthorized"),
        (other.as_str(), None, 404, "not_found"),
        (app.key.as_str(), Some("minus one"), 400, "validation_failed"),
    ];
    for (key, last, status, code) in cases {
        let refused = connect(&app, QUICK, key, &id, last, &[]).await;
        assert_eq!((refused.status, refused.content_type.as_str()), (status, "application/problem+json"));
        assert_eq!(refused.messages[0].2["code"], code, "{:?}", refused.messages[0].2);
    }
    let unknown = connect(&app, QUICK, &app.key, "01M8VD9YH587GZ0VWAJ992NMGX", None, &[]).await;
    assert_eq!(unknown.status, 404);
    app.drain().await;
}
