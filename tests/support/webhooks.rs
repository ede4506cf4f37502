//! Webhooks in the tests: the notifier fed the way AWS feeds it (the table's stream through
//! the local stream event source, the webhook queue through the local SQS event source), and
//! a receiver that verifies every delivery with the Standard Webhooks reference library
//! (Python, `tests/receivers/webhook_receiver.py`).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentq::queue::{SqsDeliveryQueue, SqsRequeue};
use agentq_local::deliver::{Delivery, Invoke, PollReport};
use agentq_local::streams::StreamPoller;
use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

use crate::{TestApp, test_config};

/// Calls the notifier in this process, as Lambda would.
#[derive(Clone)]
pub struct NotifierInvoker(pub notifier::Notifier);

#[async_trait]
impl Invoke for NotifierInvoker {
    async fn invoke(&self, event: Value) -> anyhow::Result<Value> {
        notifier::handle(&self.0, LambdaEvent::new(event, Context::default())).await.map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The notifier and its two event sources, over one test's table and webhook queue.
pub struct Rig {
    pub notifier: notifier::Notifier,
    pub stream: tokio::sync::Mutex<StreamPoller>,
    pub deliveries: Delivery,
}

impl Rig {
    pub async fn new(app: &TestApp) -> Self {
        let config = test_config(&app.table);
        let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
        let notifier = notifier::Notifier {
            store: app.store.clone(),
            queue: Arc::new(SqsDeliveryQueue::new(app.sqs.clone(), app.webhook_queue.url.clone())),
            requeue: Arc::new(SqsRequeue::new(app.sqs.clone()).knowing([app.webhook_queue.url.as_str()])),
            policy: agentq::runtime::wiring::send_policy(&config),
            schedule: config.webhooks.retry,
        };
        let template = agentq_local::template::Template::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
            "test",
        )
        .unwrap();
        let mut table = template.tables().unwrap().into_iter().next().expect("the template has a table");
        table.name.clone_from(&app.table);
        agentq_local::provision::enable_stream(&app.dynamodb, &table).await.expect("turning the table's stream on");
        let source = template.stream_sources().unwrap().into_iter().next().expect("the notifier reads the stream");
        let stream = StreamPoller::open(
            agentq_local::streams::client(&sdk),
            &app.dynamodb,
            &app.table,
            source.filters,
            source.batch_size,
            true,
        )
        .await
        .expect("opening the table's stream");
        let deliveries = Delivery::new(app.sqs.clone(), vec![app.webhook_queue.clone()], 10, 0);
        Self { notifier, stream: tokio::sync::Mutex::new(stream), deliveries }
    }

    /// One round: the stream's new events fanned out, then one batch of deliveries attempted.
    /// Returns (events fanned out, what the delivery poll did).
    pub async fn pump(&self) -> (usize, PollReport) {
        let invoker = NotifierInvoker(self.notifier.clone());
        let fanned = self.stream.lock().await.poll_once(&invoker).await.expect("reading the stream");
        let report = self.deliveries.poll_once(&invoker).await.expect("delivering webhooks");
        (fanned, report)
    }

    /// Pumps until `done` holds, or panics after `timeout`.
    pub async fn pump_until(&self, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "webhooks not delivered within {timeout:?}");
            let (fanned, report) = self.pump().await;
            if fanned == 0 && report.received == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The Python receiver: one process per test, on a port of its own.
pub struct Receiver {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Receiver {
    pub fn start() -> Self {
        let python = std::env::var("AGENTQ_TEST_PYTHON").unwrap_or_else(|_| {
            let tools = std::env::var("AGENTQ_TOOLS")
                .unwrap_or_else(|_| format!("{}/.cache/agentq", std::env::var("HOME").unwrap_or_default()));
            format!("{tools}/tools-venv/bin/python")
        });
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("receivers/webhook_receiver.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {python} (scripts/install.sh makes it): {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the receiver did not start (is standardwebhooks installed?): {line:?}"));
        Self { base: format!("http://127.0.0.1:{port}"), child, http: agentq::net::client() }
    }

    /// The URL deliveries for `name` go to.
    pub fn url(&self, name: &str) -> String {
        format!("{}/hooks/{name}", self.base)
    }

    /// The secrets `name` verifies with, and the status it answers.
    pub async fn set(&self, name: &str, secrets: &[&str], status: u16) {
        self.http
            .put(format!("{}/control/{name}", self.base))
            .json(&json!({"secrets": secrets, "status": status}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Answers `status` from now on (503 plays a receiver that is down).
    pub async fn answer(&self, name: &str, status: u16) {
        self.http.put(format!("{}/control/{name}", self.base)).json(&json!({"status": status})).send().await.unwrap();
    }

    /// Every delivery `name` received: `id`, `timestamp`, `verified`, `answered`, `body`.
    pub async fn received(&self, name: &str) -> Vec<Value> {
        let body: Value =
            self.http.get(format!("{}/control/{name}", self.base)).send().await.unwrap().json().await.unwrap();
        body["received"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
