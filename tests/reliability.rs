//! Every accepted task finishes, billed once, on the paths an adversary would pick: a queue
//! that never answers, a submit that dies between its two writes, runs far longer than the
//! queue's receive limit, usage through failure and redrive, a batch with a task that panics
//! or floods its tools, a burst of submits from one tenant, a dead-letter queue of hundreds,
//! and reads that must stay bounded.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentq::agent::{Tool, ToolContext, ToolError, ToolRegistry};
use agentq::domain::task::{Priority, TaskMessage, TaskRecord, TaskRequest};
use agentq::llm::ToolSpec;
use agentq::queue::SqsQueue;
use agentq::store::{Admission, Lease, Slot, TaskCreate as _, TaskRead as _, TaskRun as _};
use agentq_tests::{
    MAX_RECEIVE_COUNT, RECONCILE_AFTER, TestApp, answer, body_json, message, prompt_of, tool_result_of,
};
use async_trait::async_trait;
use futures::future::join_all;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(90);

/// An address that accepts connections and never answers a byte.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// The submit function with its queue behind `endpoint`, and the deployment's AWS timeouts.
async fn submit_with_queue_at(app: &TestApp, endpoint: &str) -> submit::App {
    let timeouts = agentq_tests::test_config(&app.table).aws_timeouts;
    let sdk = agentq::runtime::aws::sdk_config(&timeouts).await;
    let conf = aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(endpoint).build();
    let sqs = aws_sdk_sqs::Client::from_conf(conf);
    submit::App { queue: Arc::new(SqsQueue::new(sqs, app.queues.clone())), ..app.submit.clone() }
}

/// Posts through `submit` and "kills" the function once the task is stored and the send is
/// hanging (the future is dropped, as a Lambda timeout would end it): returns the task's id.
async fn die_while_sending(app: &TestApp, submit: &submit::App, body: &Value, headers: &[(&str, &str)]) -> String {
    let post = app.post_with(submit, &app.key, body, headers);
    tokio::pin!(post);
    loop {
        tokio::select! {
            answered = &mut post => panic!("the submit answered {} before it could be killed", answered.status()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let (_, list) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
                if let Some(id) = list["tasks"][0]["task_id"].as_str() {
                    return id.to_owned();
                }
            }
        }
    }
}

/// The one task `acme` has, by listing.
async fn only_task(app: &TestApp) -> Value {
    let (_, list) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{list}");
    tasks[0].clone()
}

#[tokio::test]
async fn a_queue_that_never_answers_a_submit_leaves_the_task_terminal_and_the_slot_free() {
    let app = TestApp::spawn().await;
    let submit = submit_with_queue_at(&app, &black_hole().await).await;
    let started = tokio::time::Instant::now();
    let r = app.post_with(&submit, &app.key, &json!({"prompt": "into the void"}), &[]).await;
    assert_eq!(r.status(), 503, "{}", body_json(r.body()));
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "bounded well under the function's 10 s: {:?}",
        started.elapsed()
    );
    let task = only_task(&app).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "enqueue_failed");
    assert_eq!(app.running_count("acme").await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_submit_that_dies_before_sending_is_sent_by_the_reconciler_and_runs() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("found", json!({"input_tokens": 5, "output_tokens": 1})))
        .mount(&app.model)
        .await;
    let submit = submit_with_queue_at(&app, &black_hole().await).await;
    // The function is killed while its send hangs: the record exists, the message does not.
    let id = die_while_sending(&app, &submit, &json!({"prompt": "stranded"}), &[]).await;
    app.track(&id);
    assert_eq!(app.get_task(&id).await.1["status"], "queued");
    assert_eq!(app.running_count("acme").await, 1);
    assert_eq!(app.queue_depth(&app.queues.default).await, 0, "no message was sent");

    let reconciler = app.reconciler();
    assert_eq!(reconciler::reconcile(&reconciler, agentq::now()).await.unwrap().resent, 0, "within its grace");
    tokio::time::sleep(RECONCILE_AFTER + Duration::from_millis(500)).await;
    let report = reconciler::reconcile(&reconciler, agentq::now()).await.unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(app.running_count("acme").await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_running_task_is_put_off_while_its_lease_is_live_and_sent_again_a_grace_period_after_it() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("ok", json!({}))).mount(&app.model).await;
    // Stored as a submit would, its message lost; it falls due, then a runner claims it.
    let request = TaskRequest::parse(json!({"prompt": "at work"}).to_string().as_bytes(), &Default::default()).unwrap();
    let task = TaskRecord::new(request, "acme", agentq::now());
    app.store.admit(&task, Admission { max_running: u32::MAX, idempotency: None, slot: Slot::Take }).await.unwrap();
    let id = task.task_id.to_string();
    app.track(&id);
    tokio::time::sleep(RECONCILE_AFTER + Duration::from_millis(500)).await;
    let lease = Lease { owner: "alive".into(), until: agentq::now() + Duration::from_secs(1) };
    app.store.claim(task.task_id, &lease, agentq::now()).await.unwrap();

    let reconciler = app.reconciler();
    let report = reconciler::reconcile(&reconciler, agentq::now()).await.unwrap();
    assert_eq!((report.deferred, report.resent), (1, 0), "its lease is live: at work, {report:?}");
    assert_eq!(reconciler::reconcile(&reconciler, agentq::now()).await.unwrap().due, 0, "put off past its lease");

    // Its runner died: a grace period past its lease, it is sent again and runs.
    tokio::time::sleep(Duration::from_secs(1) + RECONCILE_AFTER + Duration::from_millis(500)).await;
    let report = reconciler::reconcile(&reconciler, agentq::now()).await.unwrap();
    assert_eq!((report.deferred, report.resent), (0, 1), "{report:?}");
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(app.running_count("acme").await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_retry_with_the_same_key_sends_a_stranded_tasks_message_again() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("ok", json!({}))).mount(&app.model).await;
    let submit = submit_with_queue_at(&app, &black_hole().await).await;
    let body = json!({"prompt": "pay once"});
    let key = [("idempotency-key", "order-9")];
    die_while_sending(&app, &submit, &body, &key).await;
    let again = app.post_as(&app.key, &body, &key).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let id = body_json(again.body())["task_id"].as_str().unwrap().to_owned();
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded");
    assert_eq!(app.model_requests().await.len(), 1);
    app.drain().await;
}

/// Asks for the calculator `tools` times, then answers; each call takes `delay`.
struct SlowSteps {
    tools: usize,
    delay: Duration,
}

impl Respond for SlowSteps {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let done = body["messages"].as_array().unwrap().len() / 2;
        let usage = json!({"input_tokens": 40, "output_tokens": 8});
        let reply = if done < self.tools {
            ResponseTemplate::new(200).set_body_json(message(
                json!([{"type": "tool_use", "id": format!("toolu_{done}"), "name": "calculator", "input": {"expression": "1 + 1"}}]),
                "tool_use",
                usage,
            ))
        } else {
            answer("finally", usage)
        };
        reply.set_delay(self.delay)
    }
}

#[tokio::test]
async fn a_task_whose_steps_take_three_times_the_receive_limit_succeeds() {
    let mut app = TestApp::spawn().await;
    // 3 s invocations keep 2 s in hand: one 1.5 s step fits in each. 20 steps take 30 s,
    // more than 3 × (maxReceiveCount × invocation) = 27 s.
    app.invocation = Duration::from_secs(3);
    Mock::given(method("POST"))
        .respond_with(SlowSteps { tools: 19, delay: Duration::from_millis(1500) })
        .mount(&app.model)
        .await;
    let (status, body) = app.post_task(&json!({"prompt": "a long haul", "max_iterations": 25})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap();
    let task = app.run_until_terminal(id, Duration::from_secs(150)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["iterations"], 20);
    assert_eq!(app.model_requests().await.len(), 20, "no step paid twice");
    let record = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(record.attempts > 3 * MAX_RECEIVE_COUNT, "{} invocations", record.attempts);
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0, "no hand-off spent a receive");
    app.drain().await;
}

#[tokio::test]
async fn usage_is_counted_once_through_failure_redrive_and_success() {
    let mut app = TestApp::spawn().await;
    app.invocation = Duration::from_secs(4);
    // The first call answers (a tool); later calls hang until `healed`, so every delivery
    // dies mid-call after one step with real usage was recorded.
    let healed = Arc::new(AtomicBool::new(false));
    let heal = healed.clone();
    Mock::given(method("POST"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let usage = json!({"input_tokens": 100, "output_tokens": 20});
            if tool_result_of(&body).is_none() {
                ResponseTemplate::new(200).set_body_json(message(
                    json!([{"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "2 + 2"}}]),
                    "tool_use",
                    usage,
                ))
            } else if heal.load(Ordering::SeqCst) {
                answer("four", usage)
            } else {
                ResponseTemplate::new(200).set_delay(Duration::from_secs(3600))
            }
        })
        .mount(&app.model)
        .await;
    let id = app.submit("two and two").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.queue_depth(&app.dlq_url).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message never reached the DLQ");
        let _ = tokio::time::timeout(Duration::from_millis(1500), app.deliver_once()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(app.sweep().await.1, 1);
    let failed = app.get_task(&id).await.1;
    assert_eq!((failed["status"].as_str(), failed["usage"]["input_tokens"].as_u64()), (Some("failed"), Some(100)));

    healed.store(true, Ordering::SeqCst);
    assert_eq!(app.redrive(Some(&id)).await, 1);
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["usage"]["input_tokens"], 200);
    let (_, usage) = app.call_status(&app.key, "GET", "/v1/usage", &[]).await;
    assert_eq!(usage["total"]["usage"], task["usage"], "every token and nano-dollar counted once: {usage}");
    assert_eq!(usage["total"]["tasks"], json!({"succeeded": 1, "failed": 0, "cancelled": 0}));
    assert_eq!(app.running_count("acme").await, 0);
    app.drain().await;
}

/// A tool that panics, and one that answers with a megabyte.
struct Boom(ToolSpec);
struct Megabyte(ToolSpec);

#[async_trait]
impl Tool for Boom {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }
    async fn call(&self, _: &Value, _: &ToolContext) -> Result<String, ToolError> {
        panic!("a bug in a tool");
    }
}

#[async_trait]
impl Tool for Megabyte {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }
    async fn call(&self, _: &Value, _: &ToolContext) -> Result<String, ToolError> {
        Ok("m".repeat(1024 * 1024))
    }
}

fn spec(name: &str) -> ToolSpec {
    ToolSpec { name: name.into(), description: name.into(), input_schema: json!({"type": "object"}) }
}

/// Normal tasks answer at once; "panic" asks for the panicking tool; "flood" asks for 40
/// megabyte tools in one step.
struct BadNeighbours;

impl Respond for BadNeighbours {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let usage = json!({"input_tokens": 10, "output_tokens": 2});
        if tool_result_of(&body).is_some() {
            return answer("done with tools", usage);
        }
        let calls: Vec<Value> = match prompt_of(&body).as_str() {
            "panic" => vec![json!({"type": "tool_use", "id": "toolu_p", "name": "boom", "input": {}})],
            "flood" => (0..40)
                .map(|i| json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": "megabyte", "input": {}}))
                .collect(),
            _ => return answer("fine", usage),
        };
        ResponseTemplate::new(200).set_body_json(message(Value::Array(calls), "tool_use", usage))
    }
}

async fn one_bad_task_in_a_batch_of_ten(bad: &str) -> (TestApp, Value, Vec<Value>) {
    let mut app = TestApp::spawn().await;
    app.worker.tools =
        ToolRegistry::builtin().with(Boom(spec("boom"))).and_then(|r| r.with(Megabyte(spec("megabyte")))).unwrap();
    Mock::given(method("POST")).respond_with(BadNeighbours).mount(&app.model).await;
    let bad_id = app.submit(bad).await;
    let mut good = Vec::new();
    for i in 0..9 {
        good.push(app.submit(&format!("normal {i}")).await);
    }
    let mut delivered = 0;
    while delivered < 10 {
        let report = app.deliver_once().await;
        assert_eq!(report.failed, 0, "no record of the batch is retried: {report:?}");
        delivered += report.received;
    }
    let bad_task = app.get_task(&bad_id).await.1;
    let mut goods = Vec::new();
    for id in &good {
        goods.push(app.get_task(id).await.1);
        let record = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(record.attempts, 1, "run once, on its first delivery");
    }
    (app, bad_task, goods)
}

#[tokio::test]
async fn a_task_that_panics_fails_alone_and_its_batch_succeeds() {
    let (app, bad, goods) = one_bad_task_in_a_batch_of_ten("panic").await;
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"]["code"], "internal_error");
    assert!(!bad["error"]["message"].as_str().unwrap().contains("a bug in a tool"), "internals stay in the logs");
    assert!(goods.iter().all(|t| t["status"] == "succeeded"), "{goods:?}");
    assert_eq!(app.queue_depth(&app.queues.default).await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_task_that_floods_its_tools_is_capped_and_its_batch_succeeds() {
    let (app, bad, goods) = one_bad_task_in_a_batch_of_ten("flood").await;
    assert_eq!(bad["status"], "succeeded", "capped, told, and it answered: {bad}");
    assert!(goods.iter().all(|t| t["status"] == "succeeded"), "{goods:?}");
    let steps = all_steps(&app, bad["task_id"].as_str().unwrap()).await;
    let tools: Vec<&Value> = steps.iter().filter(|s| s["kind"] == "tool").collect();
    assert_eq!(tools.len(), 40, "every call answered");
    let output: usize = tools.iter().map(|t| t["content"].as_str().unwrap().len()).sum();
    assert!(output <= 4 * 1024 * 1024 + 40 * 200, "{output} bytes of tool output kept");
    assert!(tools.iter().filter(|t| t["content"].as_str().unwrap().starts_with("not run")).count() >= 24);
    app.drain().await;
}

#[tokio::test]
async fn forty_submits_at_once_from_one_tenant_are_all_accepted() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("ok", json!({}))).mount(&app.model).await;
    let bodies: Vec<Value> = (0..40).map(|i| json!({"prompt": format!("burst {i}")})).collect();
    let responses = join_all(bodies.iter().map(|b| app.post_as(&app.key, b, &[]))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(app.running_count("acme").await, 40);
    app.drain().await;
    assert_eq!(app.running_count("acme").await, 0);
}

/// `n` tasks stored as the submit path would, `running` under a lease that has run out (their
/// worker died), with their messages in the dead-letter queue.
async fn dead_tasks(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let made = join_all(chunk.iter().map(|i| async move {
            let request =
                TaskRequest::parse(json!({"prompt": format!("dead {i}")}).to_string().as_bytes(), &Default::default())
                    .unwrap();
            let task = TaskRecord::new(request, "acme", agentq::now());
            app.store
                .admit(&task, Admission { max_running: u32::MAX, idempotency: None, slot: Slot::Take })
                .await
                .unwrap();
            let lease = Lease { owner: "died".into(), until: agentq::now() - time::Duration::seconds(1) };
            app.store.claim(task.task_id, &lease, agentq::now()).await.unwrap();
            let body = serde_json::to_string(&TaskMessage {
                task_id: task.task_id,
                priority: Priority::Default,
                fairness_key: None,
                delay: None,
            })
            .unwrap();
            app.sqs.send_message().queue_url(&app.dlq_url).message_body(body).send().await.unwrap();
            task.task_id.to_string()
        }))
        .await;
        ids.extend(made);
    }
    ids
}

#[tokio::test]
async fn one_sweep_marks_every_task_of_a_dead_letter_queue_of_hundreds() {
    let app = TestApp::spawn().await;
    let ids = dead_tasks(&app, 300).await;
    let (seen, marked) = app.sweep().await;
    assert_eq!((seen, marked), (300, 300));
    for id in &ids {
        assert_eq!(app.get_task(id).await.1["error"]["code"], "delivery_failed");
    }
    assert_eq!(app.queue_depth(&app.dlq_url).await, 300, "the messages stay for redrive");
    assert_eq!(app.running_count("acme").await, 0);
}

#[tokio::test]
async fn a_filtered_list_examines_a_bounded_number_of_tasks_per_page_and_misses_none() {
    let app = &TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("ok", json!({}))).mount(&app.model).await;
    // One succeeded task under 400 queued ones.
    let first = app.submit("the needle").await;
    app.run_until_terminal(&first, PATIENCE).await;
    for chunk in (0..400).collect::<Vec<_>>().chunks(25) {
        join_all(chunk.iter().map(|i| async move {
            let request =
                TaskRequest::parse(json!({"prompt": format!("hay {i}")}).to_string().as_bytes(), &Default::default())
                    .unwrap();
            let task = TaskRecord::new(request, "acme", agentq::now());
            app.store
                .admit(&task, Admission { max_running: u32::MAX, idempotency: None, slot: Slot::Take })
                .await
                .unwrap();
        }))
        .await;
    }
    let (mut pages, mut found, mut cursor) = (0, Vec::new(), None::<String>);
    loop {
        let mut query = vec![("status", "succeeded".to_owned()), ("limit", "10".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, page) = app.call_status(&app.key, "GET", "/v1/tasks", &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        found.extend(page["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_owned()));
        assert!(page["tasks"][0].get("result").is_none(), "a list shows summaries");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(found, [first]);
    assert!(pages >= 2, "400 entries are not read in one call");
}

/// Every step of a task, page after page (`limit` per page).
async fn steps_in_pages(app: &TestApp, id: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut steps, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, page) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &query).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.to_string().len() < 6 * 1024 * 1024, "under Lambda's response limit");
        pages += 1;
        steps.extend(page["steps"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (steps, pages),
        }
    }
}

async fn all_steps(app: &TestApp, id: &str) -> Vec<Value> {
    steps_in_pages(app, id, 500).await.0
}

#[tokio::test]
async fn steps_come_a_page_at_a_time_and_every_page_joins_up() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(SlowSteps { tools: 4, delay: Duration::ZERO }).mount(&app.model).await;
    let id = app.submit("five steps").await;
    app.run_until_terminal(&id, PATIENCE).await;
    let (steps, pages) = steps_in_pages(&app, &id, 3).await;
    assert_eq!(pages, 3);
    let seen: Vec<(String, u64)> =
        steps.iter().map(|s| (s["kind"].as_str().unwrap().to_owned(), s["step"].as_u64().unwrap())).collect();
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 9, "no step twice");
    let (status, bad) =
        app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[("cursor", "bm90LWEtY3Vyc29y")]).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("validation_failed")));
    app.drain().await;
}

#[tokio::test]
async fn a_tenant_polling_hard_is_throttled_without_slowing_another() {
    let mut app = TestApp::spawn().await;
    app.status.reads = Arc::new(agentq::edge::throttle::ReadThrottle::new(1.0, 5));
    let other = app.tenant("quiet", agentq::domain::tenant::Limits::default()).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(app.call_status(&app.key, "GET", "/v1/tasks", &[]).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(app.call_status(&other, "GET", "/v1/tasks", &[]).await.0, 200);
}

#[tokio::test]
async fn model_keys_and_the_signing_secret_are_read_from_secrets_manager_once_at_start() {
    let app = TestApp::spawn().await;
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = format!("agentq-test-{}", ulid::Ulid::generate());
    let created = secrets
        .create_secret()
        .name(&name)
        .secret_string(
            json!({"ANTHROPIC_API_KEY": "sk-from-the-vault", "AGENTQ_TOOL_SIGNING_SECRET": "whsec-vault"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let arn = created.arn.unwrap();
    let mut config = agentq::runtime::config::Config::from_lookup(|k| match k {
        "AGENTQ_TABLE" => Some(app.table.clone()),
        "AGENTQ_SECRETS_ARN" => Some(arn.clone()),
        _ => None,
    })
    .unwrap();
    assert!(config.model.api_key.is_none(), "nothing in the environment");
    agentq::runtime::wiring::load_secrets(&mut config, &sdk).await.unwrap();
    assert_eq!(config.model.api_key.as_ref().map(|k| k.expose()), Some("sk-from-the-vault"));
    assert_eq!(config.tools.signing_secret.as_ref().map(|k| k.expose()), Some("whsec-vault"));
    assert!(!format!("{config:?}").contains("vault"), "secrets never print");

    let missing = agentq::runtime::config::Config::from_lookup(|k| match k {
        "AGENTQ_TABLE" => Some(app.table.clone()),
        "AGENTQ_SECRETS_ARN" => Some(format!("{arn}-gone")),
        _ => None,
    });
    let e = agentq::runtime::wiring::load_secrets(&mut missing.unwrap(), &sdk).await.unwrap_err();
    assert_eq!(e.var, "AGENTQ_SECRETS_ARN", "a function with an unreadable secret refuses to start");
}
