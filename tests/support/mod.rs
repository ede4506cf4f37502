//! What the integration tests share: [`TestApp::spawn`] gives each test its own table, queue
//! and dead-letter queue in the emulators (made from template.yaml's definitions, with a short
//! visibility timeout), a fake model over HTTP (wiremock), and the real handlers wired to them.
//! Messages reach the worker through the same local SQS event source `make up` runs.
//!
//! The emulators must be running (`make test` starts them; so does `make up`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentq::agent::{RetryPolicy, ToolRegistry};
use agentq::domain::secret::Secret;
use agentq::domain::tenant::{Limits, Tenant, new_key};
use agentq::domain::usage::PriceTable;
use agentq::llm::{AnthropicModel, BreakerPolicy, Model, ModelChain};
use agentq::queue::{QueueUrls, SqsQueue, SqsRequeue};
use agentq::runtime::config::Config;
use agentq::store::{DynamoStore, TaskRead as _, TenantAdmin};
use agentq_local::deliver::{Delivery, Invoke, PollReport, QueueRef};
use agentq_local::template::Template;
use anyhow::Context as _;
use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::QueueAttributeName;
use lambda_http::{Body, Response};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub mod webhooks;

/// Deliveries before a message is dead-lettered, in the test queues.
pub const MAX_RECEIVE_COUNT: u32 = 3;
/// Attempts at a webhook delivery before it is dead-lettered, in the test queues.
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 5;
/// The webhook retry schedule in the tests, in percent of the deployed one: 0.3 s, 1.2 s, 6 s
/// and 18 s between the five attempts (30 s, 2 min, 10 min, 30 min deployed).
pub const WEBHOOK_RETRY_SCALE_PERCENT: u32 = 1;
/// Visibility timeout of the test queues, so retries come back quickly.
pub const VISIBILITY_SECS: u32 = 1;
pub const MODEL: &str = "claude-sonnet-4-5";
/// The reconciler's grace period in the test stores: a stranded task is found within a test.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(2);
/// The bucket the tests keep large content in.
pub const TEST_BUCKET: &str = "agentq-test-blobs";
/// The second model of the default chain.
pub const FALLBACK: &str = "claude-haiku-4-5";

/// The configuration the test functions run with: the deployment's defaults, with the
/// timings shortened so retries and hand-offs happen within a test.
pub fn test_config(table: &str) -> Config {
    test_config_with(table, &[])
}

/// [`test_config`] with more variables (or others in place of its own).
pub fn test_config_with(table: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("AGENTQ_TABLE", table.to_owned()),
        ("AGENTQ_MAX_RECEIVE_COUNT", MAX_RECEIVE_COUNT.to_string()),
        ("AGENTQ_DEADLINE_MARGIN_SECS", "2".into()),
        // Short, so a task given back comes round again within a test.
        ("AGENTQ_RETRY_DELAY_SECS", "1".into()),
        ("AGENTQ_RETRY_MAX_DELAY_SECS", "2".into()),
        ("AGENTQ_VISIBILITY_SLACK_SECS", "1".into()),
        ("AGENTQ_MODEL_MAX_ATTEMPTS", "2".into()),
        ("AGENTQ_UNAVAILABLE_MESSAGE", "The models are unavailable; try again later.".into()),
        ("AGENTQ_READS_PER_SEC", "1000".into()),
        ("AGENTQ_READ_BURST", "1000".into()),
        // Revocations and limit changes seen at once, as the tests expect.
        ("AGENTQ_AUTH_CACHE_SECS", "0".into()),
        // The tests' webhook receiver listens on 127.0.0.1.
        ("AGENTQ_WEBHOOKS_ALLOW_LOCAL", "true".into()),
        ("AGENTQ_WEBHOOK_TIMEOUT_SECS", "2".into()),
        ("AGENTQ_WEBHOOK_MAX_ATTEMPTS", WEBHOOK_MAX_ATTEMPTS.to_string()),
        ("AGENTQ_WEBHOOK_RETRY_SCALE_PERCENT", WEBHOOK_RETRY_SCALE_PERCENT.to_string()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Config::from_lookup(|k| vars.get(k).cloned()).expect("the test configuration is valid")
}

/// One test's slice of the system.
pub struct TestApp {
    pub submit: submit::App,
    pub status: status::App,
    pub worker: worker::Worker,
    /// The local event source, over the high, default and low queues in that order.
    pub delivery: Delivery,
    pub queues: QueueUrls,
    /// The default queue's dead-letter queue.
    pub dlq_url: String,
    /// Every dead-letter queue.
    pub dlqs: Vec<String>,
    /// The webhook queue and its dead-letter queue.
    pub webhook_queue: QueueRef,
    pub webhook_dlq_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The test's own table.
    pub table: String,
    pub store: Arc<DynamoStore>,
    pub model: MockServer,
    /// A key of the tenant `acme`, whose limits are generous.
    pub key: String,
    /// How long each worker invocation may run (its deadline).
    pub invocation: Duration,
    /// Every task the submit handler accepted, for [`drain`](Self::drain).
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Points the SDK at the local emulators unless the environment already says where they are.
fn default_endpoints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: every test calls this before anything reads the environment, and `Once` makes
    // the others wait until the one writer is done.
    ONCE.call_once(|| {
        for (k, v) in [
            ("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ] {
            if std::env::var_os(k).is_none() {
                unsafe { std::env::set_var(k, v) };
            }
        }
    });
}

impl TestApp {
    /// Creates fresh resources named after a new ULID, and a fake model with no answers yet
    /// (mount them on `model`). The chain is two Anthropic models on that server,
    /// [`MODEL`] then [`FALLBACK`].
    pub async fn spawn() -> Self {
        Self::spawn_with(|uri| {
            [MODEL, FALLBACK]
                .into_iter()
                .map(|m| {
                    let key = Secret::new("test-key");
                    let model = AnthropicModel::new(agentq::net::client(), uri, key, m, 1024, Duration::from_secs(10));
                    Arc::new(model) as Arc<dyn Model>
                })
                .collect()
        })
        .await
    }

    /// Like [`spawn`](Self::spawn), with the chain `models` builds from the fake's base URL.
    pub async fn spawn_with(models: impl FnOnce(&str) -> Vec<Arc<dyn Model>>) -> Self {
        Self::try_spawn(models)
            .await
            .expect("spawning the test app (are the emulators running? `make test` starts them)")
    }

    async fn try_spawn(models: impl FnOnce(&str) -> Vec<Arc<dyn Model>>) -> anyhow::Result<Self> {
        default_endpoints();
        let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
        let sqs = agentq::runtime::aws::sqs(&sdk);
        let dynamodb = agentq::runtime::aws::dynamodb(&sdk);
        let stack = format!("test-{}", ulid::Ulid::generate().to_string().to_lowercase());
        let template = Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"), &stack)?;

        let mut table = template.tables()?.into_iter().next().context("the template has no table")?;
        // Without its stream: DynamoDB Local slows down for every table with one, and a run
        // makes hundreds of tables. The webhook tests, which read it, turn it on.
        table.stream_view_type = None;
        agentq_local::provision::create_table(&dynamodb, &table).await?;

        // Every queue of the template, with a short visibility timeout and a low receive count.
        let mut specs = template.queues()?;
        specs.sort_by_key(|q| q.redrive.is_some());
        let mut created: HashMap<String, (String, String)> = HashMap::new();
        for mut q in specs {
            q.attributes.insert("VisibilityTimeout".into(), VISIBILITY_SECS.to_string());
            let dlq_arn = q.redrive.as_ref().map(|(dlq, _)| created[dlq].1.clone());
            if let Some((dlq, _)) = q.redrive.clone() {
                let count = if q.logical_id == "WebhookQueue" { WEBHOOK_MAX_ATTEMPTS } else { MAX_RECEIVE_COUNT };
                q.redrive = Some((dlq, count));
            }
            let made = agentq_local::provision::create_queue(&sqs, &q, dlq_arn.as_deref()).await?;
            created.insert(q.logical_id.clone(), made);
        }
        let url = |id: &str| created.get(id).map(|(u, _)| u.clone()).with_context(|| format!("no queue {id}"));
        let queues =
            QueueUrls { high: url("HighPriorityQueue")?, default: url("TaskQueue")?, low: url("LowPriorityQueue")? };
        let dlq_url = url("TaskDeadLetterQueue")?;
        let dlqs = vec![url("HighPriorityDeadLetterQueue")?, dlq_url.clone(), url("LowPriorityDeadLetterQueue")?];
        let refs = ["HighPriorityQueue", "TaskQueue", "LowPriorityQueue"]
            .iter()
            .map(|id| QueueRef { url: created[*id].0.clone(), arn: created[*id].1.clone() })
            .collect();

        let retention = Duration::from_secs(86_400);
        // One bucket for every test: keys are under each task's id.
        let s3 = agentq::runtime::aws::s3(&sdk, true);
        if let Err(e) = s3.create_bucket().bucket(TEST_BUCKET).send().await {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists());
            anyhow::ensure!(exists, "creating the test bucket: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
        }
        let store = Arc::new(
            DynamoStore::new(dynamodb.clone(), &table.name, retention)
                .with_reconcile_after(RECONCILE_AFTER)
                .with_blobs(Arc::new(agentq::store::blobs::S3Blobs::new(s3, TEST_BUCKET))),
        );
        let model = MockServer::start().await;
        let chain =
            ModelChain::new(models(&model.uri()), BreakerPolicy { threshold: 100, cooldown: Duration::from_secs(1) });
        let tools = ToolRegistry::builtin();
        let config = test_config(&table.name);
        let allowed = agentq::domain::task::Allowed { models: chain.ids(), tools: tools.names(), ..Default::default() };
        Ok(Self {
            submit: submit::App {
                store: store.clone(),
                queue: Arc::new(SqsQueue::new(sqs.clone(), queues.clone())),
                model_configured: true,
                allowed,
                auth: Arc::new(agentq::runtime::wiring::auth_cache(&config)),
                webhooks: agentq::runtime::wiring::send_policy(&config),
                tools: tools.clone(),
            },
            status: status::App {
                store: store.clone(),
                reads: Arc::new(agentq::runtime::wiring::read_throttle(&config)),
                auth: Arc::new(agentq::runtime::wiring::auth_cache(&config)),
                webhooks: agentq::runtime::wiring::send_policy(&config),
            },
            worker: worker::Worker {
                store: store.clone(),
                models: chain,
                tools,
                prices: PriceTable::default(),
                queue: Arc::new(SqsQueue::new(sqs.clone(), queues.clone())),
                requeue: Arc::new(SqsRequeue::new(sqs.clone()).knowing(queues.all())),
                settings: worker::WorkerSettings {
                    retry: RetryPolicy {
                        max_attempts: 2,
                        base: Duration::from_millis(10),
                        cap: Duration::from_millis(50),
                    },
                    ..worker::WorkerSettings::from(&config)
                },
                tenants: worker::TenantCache::default(),
            },
            invocation: Duration::from_secs(30),
            accepted: Arc::default(),
            delivery: Delivery::new(sqs.clone(), refs, 10, 1),
            queues,
            dlq_url,
            dlqs,
            webhook_queue: QueueRef { url: created["WebhookQueue"].0.clone(), arn: created["WebhookQueue"].1.clone() },
            webhook_dlq_url: url("WebhookDeadLetterQueue")?,
            sqs,
            dynamodb,
            table: table.name.clone(),
            key: new_tenant(
                store.as_ref(),
                "acme",
                Limits { rate_per_sec: 1000.0, burst: 1000, max_running: 1000, ..Limits::default() },
            )
            .await,
            store,
            model,
        })
    }

    /// `POST /v1/tasks` with a JSON body, as `acme`; returns status and body.
    pub async fn post_task(&self, body: &Value) -> (u16, Value) {
        let r = self.post_as(&self.key, body, &[]).await;
        (r.status().as_u16(), body_json(r.body()))
    }

    /// `POST /v1/tasks` with `key` and extra headers; returns the whole response.
    pub async fn post_as(&self, key: &str, body: &Value, headers: &[(&str, &str)]) -> Response<Body> {
        self.post_with(&self.submit, key, body, headers).await
    }

    /// `POST /v1/tasks` to a submit function wired as `submit` says (a queue that never
    /// answers, say).
    pub async fn post_with(
        &self,
        submit: &submit::App,
        key: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Response<Body> {
        let mut event: Value = serde_json::from_str(include_str!("../../events/submit.json")).unwrap();
        event["body"] = json!(body.to_string());
        event["headers"]["authorization"] = json!(format!("Bearer {key}"));
        for (k, v) in headers {
            event["headers"][*k] = json!(v);
        }
        let req = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = submit::handle(submit, req).await;
        if response.status() == 202
            && let Some(id) = body_json(response.body())["task_id"].as_str()
        {
            self.accepted.lock().unwrap().push(id.to_owned());
        }
        response
    }

    /// Counts a task the test knows was accepted (stored) though no 202 said so, for
    /// [`drain`](Self::drain).
    pub fn track(&self, id: &str) {
        self.accepted.lock().unwrap().push(id.to_owned());
    }

    /// The tenant's running count as stored (`TENANT#<t>`, `ACTIVE`).
    pub async fn running_count(&self, tenant: &str) -> i64 {
        use aws_sdk_dynamodb::types::AttributeValue;
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("TENANT#{tenant}")))
            .key("sk", AttributeValue::S("ACTIVE".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        match out.item.as_ref().and_then(|i| i.get("active")) {
            Some(AttributeValue::N(n)) => n.parse().unwrap(),
            _ => 0,
        }
    }

    /// The reconciler over this test's store and queues.
    pub fn reconciler(&self) -> reconciler::Reconciler {
        let config = test_config(&self.table);
        reconciler::Reconciler {
            store: self.store.clone(),
            queue: Arc::new(SqsQueue::new(self.sqs.clone(), self.queues.clone())),
            settings: reconciler::Settings { reconcile_after: RECONCILE_AFTER, ..reconciler::Settings::from(&config) },
        }
    }

    /// The scheduler over this test's store and queues.
    pub fn scheduler(&self) -> scheduler::Scheduler {
        scheduler::Scheduler {
            store: self.store.clone(),
            queue: Arc::new(SqsQueue::new(self.sqs.clone(), self.queues.clone())),
            allowed: self.submit.allowed.clone(),
        }
    }

    /// A POST to the submit function at `path`, as the holder of `key`.
    pub async fn post_path(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self.submit_request(key, path, body).await;
        (r.status().as_u16(), body_json(r.body()))
    }

    /// A POST to the submit function at `path`, the whole response.
    pub async fn submit_request(&self, key: &str, path: &str, body: &Value) -> Response<Body> {
        let mut event: Value = serde_json::from_str(include_str!("../../events/submit.json")).unwrap();
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        event["body"] = json!(body.to_string());
        event["headers"]["authorization"] = json!(format!("Bearer {key}"));
        submit::handle(&self.submit, lambda_http::request::from_str(&event.to_string()).unwrap()).await
    }

    /// A request to the status function at `path` (no body), the whole response.
    pub async fn status_request(&self, key: &str, method: &str, path: &str) -> Response<Body> {
        let mut event: Value = serde_json::from_str(include_str!("../../events/status.json")).unwrap();
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        event["requestContext"]["http"]["method"] = json!(method);
        event["headers"]["authorization"] = json!(format!("Bearer {key}"));
        event.as_object_mut().unwrap().remove("pathParameters");
        status::handle(&self.status, lambda_http::request::from_str(&event.to_string()).unwrap()).await
    }

    /// Ends a test as its clients would see it: every task it accepted reaches a terminal
    /// state (an answer stands in for any model call the test did not script), or this panics.
    pub async fn drain(&self) {
        Mock::given(wiremock::matchers::any())
            .respond_with(answer("done", json!({})))
            .with_priority(u8::MAX)
            .mount(&self.model)
            .await;
        let ids = self.accepted.lock().unwrap().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mut open = Vec::new();
            for id in &ids {
                let task = self.store.get(id.parse().unwrap()).await.unwrap();
                if !task.as_ref().is_some_and(|t| t.status.is_terminal()) {
                    open.push((id.clone(), task.map(|t| t.status)));
                }
            }
            if open.is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "accepted tasks never finished: {open:?}");
            self.deliver_once().await;
        }
    }

    /// A request to the status function, as the holder of `key`.
    pub async fn call_status(&self, key: &str, method: &str, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.call_status_with(key, method, path, query, None).await
    }

    /// A request to the status function with a JSON body.
    pub async fn call_status_with(
        &self,
        key: &str,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut event: Value = serde_json::from_str(include_str!("../../events/status.json")).unwrap();
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        event["requestContext"]["http"]["method"] = json!(method);
        event["headers"]["authorization"] = json!(format!("Bearer {key}"));
        match path.strip_prefix("/v1/tasks/") {
            Some(rest) => event["pathParameters"] = json!({"id": rest.split('/').next()}),
            None => drop(event.as_object_mut().unwrap().remove("pathParameters")),
        }
        if !query.is_empty() {
            event["queryStringParameters"] = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            event["rawQueryString"] =
                json!(query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
        }
        if let Some(body) = body {
            event["body"] = json!(body.to_string());
            event["headers"]["content-type"] = json!("application/json");
        }
        let req = lambda_http::request::from_str(&event.to_string()).unwrap();
        let r = status::handle(&self.status, req).await;
        (r.status().as_u16(), body_json(r.body()))
    }

    /// `POST /v1/tasks/{id}/input` with `key`: decisions on a waiting task's tool calls.
    pub async fn post_input(&self, key: &str, id: &str, body: &Value) -> (u16, Value) {
        let r = self.input_response(key, id, body).await;
        (r.status().as_u16(), body_json(r.body()))
    }

    /// `POST /v1/tasks/{id}/input`, the whole response.
    pub async fn input_response(&self, key: &str, id: &str, body: &Value) -> Response<Body> {
        let mut event: Value = serde_json::from_str(include_str!("../../events/input.json")).unwrap();
        let path = format!("/v1/tasks/{id}/input");
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        event["pathParameters"] = json!({"id": id});
        event["body"] = json!(body.to_string());
        event["headers"]["authorization"] = json!(format!("Bearer {key}"));
        let req = lambda_http::request::from_str(&event.to_string()).unwrap();
        submit::handle(&self.submit, req).await
    }

    /// Delivers until the task has `status` (not terminal), or panics after `timeout`.
    pub async fn run_until_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, task) = self.get_task(id).await;
            if task["status"] == status {
                return task;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {id} not {status} after {timeout:?}: {task}");
            self.deliver_once().await;
        }
    }

    /// Submits a task and returns its id.
    pub async fn submit(&self, prompt: &str) -> String {
        let (status, body) = self.post_task(&json!({"prompt": prompt})).await;
        assert_eq!(status, 202, "{body}");
        body["task_id"].as_str().unwrap().to_owned()
    }

    /// `GET /v1/tasks/{id}` as `acme`; returns status and body.
    pub async fn get_task(&self, id: &str) -> (u16, Value) {
        self.call_status(&self.key, "GET", &format!("/v1/tasks/{id}"), &[]).await
    }

    /// Runs the local event source once (long-polling up to a second).
    pub async fn deliver_once(&self) -> PollReport {
        self.delivery.poll_once(&InProcess(self.worker.clone(), self.invocation)).await.expect("delivering a batch")
    }

    /// Delivers until the task is terminal, or panics after `timeout`; returns the task.
    pub async fn run_until_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, task) = self.get_task(id).await;
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return task;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {id} not terminal after {timeout:?}: {task}");
            self.deliver_once().await;
        }
    }

    /// Messages in a queue, visible or in flight.
    pub async fn queue_depth(&self, url: &str) -> u64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes.unwrap_or_default();
        [QueueAttributeName::ApproximateNumberOfMessages, QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
            .iter()
            .map(|k| attrs.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    }

    /// Sends a raw message body to the default task queue.
    pub async fn send_raw(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.queues.default).message_body(body).send().await.unwrap();
    }

    /// One run of the dead-letter sweeper; returns (messages seen, tasks marked).
    pub async fn sweep(&self) -> (usize, usize) {
        let sweeper = dlq::Sweeper {
            store: self.store.clone(),
            dead: Arc::new(agentq::queue::SqsDeadLetters::new(self.sqs.clone())),
            dlqs: self.dlqs.clone(),
        };
        // The deployed handler's budget: a sweep of hundreds on a slow two-core box under a
        // full test run took longer than 10 s, and a test must not fail on the machine's pace.
        dlq::sweep(&sweeper, dlq::SWEEP_BUDGET).await.expect("sweeping")
    }

    /// `agentq dlq redrive`; returns how many messages moved.
    pub async fn redrive(&self, task: Option<&str>) -> usize {
        let task = task.map(|t| t.parse().unwrap());
        agentq::usecases::deadletter::redrive(
            &agentq::queue::SqsDeadLetters::new(self.sqs.clone()),
            self.store.as_ref(),
            &SqsQueue::new(self.sqs.clone(), self.queues.clone()),
            &self.dlqs,
            task,
            Duration::from_secs(10),
        )
        .await
        .expect("redriving")
    }

    /// A new tenant with `limits`; returns its key.
    pub async fn tenant(&self, name: &str, limits: Limits) -> String {
        new_tenant(self.store.as_ref(), name, limits).await
    }

    /// Requests the fake model has received, as JSON.
    pub async fn model_requests(&self) -> Vec<Value> {
        self.model
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    }
}

/// Creates a tenant and a key for it; returns the key.
pub async fn new_tenant(store: &DynamoStore, name: &str, limits: Limits) -> String {
    let now = agentq::now();
    store.put_tenant(&Tenant { tenant_id: name.into(), limits, created_at: now }).await.unwrap();
    let (key, record) = new_key(name, now);
    store.put_key(&record).await.unwrap();
    key.expose().to_owned()
}

pub fn body_json(body: &Body) -> Value {
    serde_json::from_slice(body.as_ref()).unwrap_or(Value::Null)
}

/// Invokes the worker's handler in this process, through the same event and response JSON the
/// Lambda runtime would carry.
struct InProcess(worker::Worker, Duration);

#[async_trait]
impl Invoke for InProcess {
    async fn invoke(&self, event: Value) -> anyhow::Result<Value> {
        let event: SqsEvent = serde_json::from_value(event)?;
        let mut context = Context::default();
        let deadline = time::OffsetDateTime::now_utc() + self.1;
        context.deadline = (deadline.unix_timestamp_nanos() / 1_000_000) as u64;
        let response =
            worker::handle(&self.0, LambdaEvent::new(event, context)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::to_value(response)?)
    }
}

/// A Messages API answer.
pub fn message(content: Value, stop_reason: &str, usage: Value) -> Value {
    json!({
        "id": "msg_test", "type": "message", "role": "assistant", "model": MODEL,
        "content": content, "stop_reason": stop_reason, "stop_sequence": null, "usage": usage
    })
}

/// An `end_turn` answer with `text`.
pub fn answer(text: &str, usage: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(message(json!([{"type": "text", "text": text}]), "end_turn", usage))
}

/// The text of a request's first user message.
pub fn prompt_of(body: &Value) -> String {
    body["messages"][0]["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

/// The first `tool_result` block anywhere in an Anthropic-format request.
pub fn tool_result_of(body: &Value) -> Option<Value> {
    body["messages"]
        .as_array()?
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result")
}

/// Asks for the calculator until a tool result comes back, then answers with it.
/// Every answer uses 50 input and 10 output tokens.
pub struct CalculatorScript;

impl Respond for CalculatorScript {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let usage = json!({"input_tokens": 50, "output_tokens": 10});
        match tool_result_of(&body) {
            None => ResponseTemplate::new(200).set_body_json(message(
                json!([{"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "6 * 7"}}]),
                "tool_use",
                usage,
            )),
            Some(r) => answer(&format!("The answer is {}.", r["content"].as_str().unwrap_or_default()), usage),
        }
    }
}

impl TestApp {
    /// Delivers until every task is terminal, or panics after `timeout`; returns the tasks as
    /// the API shows them. While waiting it looks only at the tasks still open, in the store,
    /// so a wait for hundreds of tasks is not a stream of throttled API reads.
    pub async fn run_all_until_terminal(&self, ids: &[String], timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut open: Vec<&String> = ids.iter().collect();
        loop {
            let mut still = Vec::new();
            for id in open {
                let task = self.store.get(id.parse().expect("a task id")).await.expect("reading a task");
                if !task.is_some_and(|t| t.status.is_terminal()) {
                    still.push(id);
                }
            }
            open = still;
            if open.is_empty() {
                let mut tasks = Vec::new();
                for id in ids {
                    // Many reads at once meet the per-tenant read throttle: wait it out.
                    let task = loop {
                        match self.get_task(id).await {
                            (429, _) => tokio::time::sleep(Duration::from_millis(100)).await,
                            (_, task) => break task,
                        }
                    };
                    tasks.push(task);
                }
                return tasks;
            }
            assert!(tokio::time::Instant::now() < deadline, "tasks not terminal after {timeout:?}: {open:?}");
            self.deliver_once().await;
        }
    }
}
