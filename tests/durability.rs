//! Durability: a worker that dies mid-task, a task longer than one invocation, a message
//! delivered many times, large payloads, and the recorded steps behind them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq_tests::{TestApp, answer, message};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(60);
/// Every answer of the scripts below: 40 input and 8 output tokens.
const CALL_COST_USD: f64 = 40.0 * 3e-6 + 8.0 * 15e-6;

/// Asks for the calculator `tools` times, then answers; each call takes `delay`. The call
/// numbered `hang_on` (counting from 1, across the whole test) never answers.
struct Steps {
    tools: usize,
    delay: Duration,
    hang_on: Option<usize>,
    calls: AtomicUsize,
    answered: Arc<AtomicUsize>,
}

impl Steps {
    fn new(tools: usize, delay: Duration) -> Self {
        Self { tools, delay, hang_on: None, calls: AtomicUsize::new(0), answered: Arc::default() }
    }
}

impl Respond for Steps {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hang_on == Some(n) {
            return ResponseTemplate::new(200).set_delay(Duration::from_secs(3600));
        }
        self.answered.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let done = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["content"].as_array().is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result")))
            .count();
        let usage = json!({"input_tokens": 40, "output_tokens": 8});
        let reply = if done < self.tools {
            ResponseTemplate::new(200).set_body_json(message(
                json!([{"type": "tool_use", "id": format!("toolu_{done}"), "name": "calculator", "input": {"expression": format!("{done} + 1")}}]),
                "tool_use",
                usage,
            ))
        } else {
            answer(&format!("finished after {done} tools"), usage)
        };
        reply.set_delay(self.delay)
    }
}

fn assert_paid_once(task: &Value, calls: usize) {
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["iterations"], calls as u64, "{task}");
    assert_eq!(task["usage"]["input_tokens"], 40 * calls as u64, "no call counted twice: {task}");
    let cost = task["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - CALL_COST_USD * calls as f64).abs() < 1e-12, "{cost} for {calls} calls");
}

/// A task of four tool steps whose worker dies during its third model call, two answers
/// recorded: the app (short invocations, so the dead worker's lease expires soon), the task,
/// and the count of answered calls.
async fn died_during_the_third_call() -> (TestApp, String, Arc<AtomicUsize>) {
    let mut app = TestApp::spawn().await;
    app.invocation = Duration::from_secs(3);
    let script = Steps { hang_on: Some(3), ..Steps::new(4, Duration::from_millis(50)) };
    let answered = script.answered.clone();
    Mock::given(method("POST")).respond_with(script).mount(&app.model).await;

    let id = app.submit("count to four").await;
    // The worker "dies" during the third model call: its future is dropped, nothing more runs.
    let crashed = tokio::time::timeout(Duration::from_millis(1500), app.deliver_once()).await;
    assert!(crashed.is_err(), "the delivery should have been cut off mid-task");
    (app, id, answered)
}

#[tokio::test]
async fn a_task_whose_worker_dies_mid_run_resumes_from_its_last_step_without_paying_again() {
    let (app, id, answered) = died_during_the_third_call().await;
    let mid = app.get_task(&id).await.1;
    assert_eq!((mid["status"].as_str(), mid["iterations"].as_u64()), (Some("running"), Some(2)), "{mid}");

    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_paid_once(&task, 5);
    assert_eq!(answered.load(Ordering::SeqCst), 5, "each answered call made once");
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let kinds: Vec<&str> = steps["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["model", "tool", "model", "tool", "model", "tool", "model", "tool", "model"]);
    app.drain().await;
}

/// The task's `task.step` event that carries the answer numbered `step`, by its sort key.
async fn answer_event_key(app: &TestApp, id: &str, step: u32) -> String {
    let out = app
        .dynamodb
        .query()
        .table_name(&app.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :evt)")
        .filter_expression("step_sk = :step")
        .expression_attribute_values(":pk", AttributeValue::S(format!("TASK#{id}")))
        .expression_attribute_values(":evt", AttributeValue::S("EVT#".into()))
        .expression_attribute_values(":step", AttributeValue::S(format!("STEP#{step:05}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let items = out.items();
    assert_eq!(items.len(), 1, "one event carries answer {step}: {items:?}");
    items[0]["sk"].as_s().unwrap().clone()
}

#[tokio::test]
async fn an_answer_whose_progress_was_written_but_not_the_answer_is_asked_again_and_paid_once() {
    let (app, id, answered) = died_during_the_third_call().await;
    // A step is two writes, the progress and then the answer: a worker that died between them
    // left the second answer's progress on the record and no answer. Made so by taking the
    // answer away.
    let key = answer_event_key(&app, &id, 2).await;
    app.dynamodb
        .delete_item()
        .table_name(&app.table)
        .key("pk", AttributeValue::S(format!("TASK#{id}")))
        .key("sk", AttributeValue::S(key))
        .send()
        .await
        .unwrap();
    let mid = app.get_task(&id).await.1;
    assert_eq!(mid["iterations"], 2, "the record's progress counts the lost answer: {mid}");

    let task = app.run_until_terminal(&id, PATIENCE).await;
    // The lost answer is asked for again; the bill is the recorded answers', each once.
    assert_paid_once(&task, 5);
    assert_eq!(answered.load(Ordering::SeqCst), 6, "the second answer was asked for twice");
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let numbered: Vec<(u64, &str)> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_u64().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        numbered,
        [
            (1, "model"),
            (1, "tool"),
            (2, "model"),
            (2, "tool"),
            (3, "model"),
            (3, "tool"),
            (4, "model"),
            (4, "tool"),
            (5, "model")
        ]
    );
    let (_, events) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/events"), &[]).await;
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "task.step").count(), 5, "the log passes over the lost seq: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"task.succeeded"));
    app.drain().await;
}

#[tokio::test]
async fn a_task_longer_than_one_invocation_continues_in_the_next() {
    let mut app = TestApp::spawn().await;
    // Each invocation has 3 s, of which 2 s are kept back: about one 600 ms step fits.
    app.invocation = Duration::from_secs(3);
    let script = Steps::new(3, Duration::from_millis(600));
    let answered = script.answered.clone();
    Mock::given(method("POST")).respond_with(script).mount(&app.model).await;

    let id = app.submit("take your time").await;
    let mut deliveries = 0;
    let task = loop {
        let (_, t) = app.get_task(&id).await;
        if t["status"] == "succeeded" || t["status"] == "failed" {
            break t;
        }
        deliveries += app.deliver_once().await.received;
        assert!(deliveries < 20, "never finished: {t}");
    };
    assert_paid_once(&task, 4);
    assert!(deliveries > 1, "it took {deliveries} invocation(s)");
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    app.drain().await;
}

#[tokio::test]
async fn the_same_message_delivered_many_times_runs_once() {
    let app = TestApp::spawn().await;
    let script = Steps::new(2, Duration::from_millis(20));
    let answered = script.answered.clone();
    Mock::given(method("POST")).respond_with(script).mount(&app.model).await;
    let id = app.submit("once only").await;
    for _ in 0..30 {
        app.send_raw(&json!({"task_id": id, "priority": "default"}).to_string()).await;
    }
    let task = app.run_until_terminal(&id, PATIENCE).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.queue_depth(&app.queues.default).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "duplicates were never acknowledged");
        app.deliver_once().await;
    }
    assert_paid_once(&task, 3);
    assert_eq!(answered.load(Ordering::SeqCst), 3, "31 deliveries, one run");
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0);
    app.drain().await;
}

#[tokio::test]
async fn steps_are_the_tasks_own() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(Steps::new(1, Duration::ZERO)).mount(&app.model).await;
    let id = app.submit("one tool").await;
    app.run_until_terminal(&id, PATIENCE).await;
    let (status, body) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    assert_eq!(status, 200);
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps[0]["kind"], "model");
    assert_eq!(steps[0]["content"][0]["name"], "calculator");
    assert_eq!(steps[0]["usage"]["input_tokens"], 40);
    // How long the tool ran varies; the rest is exact.
    let mut tool = steps[1].clone();
    assert!(tool.as_object_mut().unwrap().remove("duration_ms").is_some_and(|d| d.is_u64()), "{tool}");
    assert_eq!(
        tool,
        json!({"kind": "tool", "step": 1, "tool_use_id": "toolu_0", "name": "calculator", "content": "1", "is_error": false})
    );
    let other = app.tenant("globex", Limits::default()).await;
    let (status, _) = app.call_status(&other, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    assert_eq!(status, 404);
    app.drain().await;
}

#[tokio::test]
async fn prompts_results_and_steps_too_large_for_an_item_round_trip_through_s3() {
    let app = TestApp::spawn().await;
    let prompt = "p".repeat(900_000);
    let result = "r".repeat(300_000);
    let seen = Arc::new(Mutex::new(0usize));
    let saw = seen.clone();
    let reply = result.clone();
    Mock::given(method("POST"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let text = body["messages"][0]["content"][0]["text"].as_str();
            assert!(text.is_some(), "{}", &body.to_string()[..300.min(body.to_string().len())]);
            *saw.lock().unwrap() = text.unwrap().len();
            answer(&reply, json!({"input_tokens": 225_000, "output_tokens": 75_000}))
        })
        .mount(&app.model)
        .await;
    let (status, body) = app.post_task(&json!({"prompt": prompt})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap().to_owned();
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{}", &task.to_string()[..500]);
    assert_eq!(*seen.lock().unwrap(), 900_000, "the model got the whole prompt");
    assert_eq!(task["result"]["text"].as_str().unwrap().len(), 300_000, "nothing truncated");
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    assert_eq!(steps["steps"][0]["content"][0]["text"].as_str().unwrap().len(), 300_000);
    app.drain().await;
}

#[tokio::test]
async fn a_task_whose_message_is_dead_lettered_ends_delivery_failed_and_a_redrive_runs_it() {
    let mut app = TestApp::spawn().await;
    // 4 s invocations of which 2 s are for work (the rest is the margin to write state).
    app.invocation = Duration::from_secs(4);
    // A model that never answers, and a worker that dies every time (its invocation is cut
    // off): no delivery ever records why, and the message runs out of receives.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3600)))
        .mount(&app.model)
        .await;
    let id = app.submit("doomed, then saved").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.queue_depth(&app.dlq_url).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message never reached the DLQ");
        let _ = tokio::time::timeout(Duration::from_millis(300), app.deliver_once()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get_task(&id).await.1["status"], "running", "nobody has told the client yet");

    let (seen, marked) = app.sweep().await;
    assert_eq!((seen, marked), (1, 1));
    let task = app.get_task(&id).await.1;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "delivery_failed");
    assert_eq!(app.sweep().await, (1, 0), "sweeping again changes nothing; the message stays for redrive");
    assert_eq!(app.queue_depth(&app.dlq_url).await, 1);

    app.model.reset().await;
    Mock::given(method("POST")).respond_with(Steps::new(1, Duration::ZERO)).mount(&app.model).await;
    assert_eq!(app.redrive(Some(&id)).await, 1);
    assert_eq!(app.get_task(&id).await.1["status"], "queued");
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0);
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    app.drain().await;
}

/// The default queue's ARN, as a record's `eventSourceARN` names it.
async fn default_queue_arn(app: &TestApp) -> String {
    let out = app
        .sqs
        .get_queue_attributes()
        .queue_url(&app.queues.default)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    out.attributes.unwrap().remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).unwrap()
}

#[tokio::test]
async fn a_batch_hidden_in_one_request_stays_out_of_sight_and_a_bad_receipt_is_reported() {
    use agentq::queue::Requeue as _;
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.send_raw(&format!("{{\"n\": {i}}}")).await;
    }
    // Received for one second only: without the change below they would be back at once.
    let mut receipts = Vec::new();
    while receipts.len() < 3 {
        let out = app
            .sqs
            .receive_message()
            .queue_url(&app.queues.default)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        receipts.extend(out.messages.unwrap_or_default().into_iter().filter_map(|m| m.receipt_handle));
    }
    let arn = default_queue_arn(&app).await;
    let requeue = agentq::queue::SqsRequeue::new(app.sqs.clone());
    let handles: Vec<&str> = receipts.iter().map(String::as_str).collect();
    requeue.set_visibility_all(&arn, &handles, Duration::from_secs(60)).await.expect("the batch is hidden");

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let again = app.sqs.receive_message().queue_url(&app.queues.default).wait_time_seconds(1).send().await.unwrap();
    assert!(again.messages.unwrap_or_default().is_empty(), "a hidden message came back before its time");
    assert_eq!(app.queue_depth(&app.queues.default).await, 3, "the messages are still in flight");

    let refused = requeue.set_visibility_all(&arn, &[handles[0], "not-a-receipt"], Duration::from_secs(60)).await;
    assert!(refused.is_err(), "a receipt the queue refuses is an error, not silence");
}
