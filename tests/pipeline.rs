//! The whole pipeline against DynamoDB Local, LocalStack SQS and a fake model over HTTP:
//! submit → queue → local event source → worker → table → status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentq_tests::{CalculatorScript, MAX_RECEIVE_COUNT, TestApp, answer};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_submitted_task_reaches_succeeded_with_the_models_text_usage_and_cost() {
    let app = TestApp::spawn().await;
    let usage = json!({"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100});
    Mock::given(method("POST")).and(path("/v1/messages")).respond_with(answer("Paris.", usage)).mount(&app.model).await;

    let id = app.submit("What is the capital of France?").await;
    let (status, queued) = app.get_task(&id).await;
    assert_eq!((status, queued["status"].as_str()), (200, Some("queued")));

    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "Paris.");
    assert_eq!(task["iterations"], 1);
    assert_eq!(task["model"], "claude-sonnet-4-5");
    assert_eq!(task["progress"], json!({"step": 1, "max_steps": 10}));
    // Sonnet 4.5 list prices per MTok: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
    let expected = 1000.0 * 3.0e-6 + 500.0 * 15.0e-6 + 200.0 * 0.30e-6 + 100.0 * 3.75e-6;
    assert_eq!(task["usage"]["input_tokens"], 1000);
    assert_eq!(task["usage"]["output_tokens"], 500);
    assert_eq!(task["usage"]["cache_read_input_tokens"], 200);
    assert_eq!(task["usage"]["cache_creation_input_tokens"], 100);
    assert!((task["usage"]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{task}");
    assert_eq!(task["usage"]["cost_usd"], 0.010935);

    let sent = &app.model_requests().await[0];
    assert_eq!(sent["messages"][0]["content"][0]["text"], "What is the capital of France?");
    assert_eq!(app.queue_depth(&app.queues.default).await, 0, "the message was deleted");
    app.drain().await;
}

#[tokio::test]
async fn a_tool_using_conversation_runs_the_tool_and_sends_its_result_back() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).and(path("/v1/messages")).respond_with(CalculatorScript).mount(&app.model).await;

    let id = app.submit("What is 6 * 7?").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["text"], "The answer is 42.");
    assert_eq!(task["iterations"], 2);
    assert_eq!(task["usage"]["input_tokens"], 100);

    let requests = app.model_requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["tools"][0]["name"], "calculator");
    let turn = &requests[1]["messages"];
    assert_eq!(turn[1]["role"], "assistant");
    assert_eq!(turn[1]["content"][0]["type"], "tool_use");
    // The conversation's last block also carries the prompt-cache breakpoint.
    let mut result = turn[2]["content"][0].clone();
    assert_eq!(result.as_object_mut().unwrap().remove("cache_control"), Some(json!({"type": "ephemeral"})));
    assert_eq!(result, json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}));
    app.drain().await;
}

#[tokio::test]
async fn a_message_for_an_unknown_task_is_acknowledged_not_retried() {
    let app = TestApp::spawn().await;
    app.send_raw(&json!({"task_id": "01KB3Z5Q9V1W7E6D8C4B2A0F9G", "priority": "default"}).to_string()).await;
    app.send_raw("this is not a task message").await;
    let mut report = app.deliver_once().await;
    if report.received < 2 {
        let more = app.deliver_once().await;
        report.received += more.received;
        report.deleted += more.deleted;
    }
    assert_eq!((report.received, report.deleted), (2, 2), "{report:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.queue_depth(&app.queues.default).await, 0);
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0);
    assert!(app.model_requests().await.is_empty());
}

#[tokio::test]
async fn a_failure_the_worker_reports_as_retryable_ends_in_the_dlq_after_max_receive_count_deliveries() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(529).set_body_json(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        )
        .mount(&app.model)
        .await;

    let id = app.submit("anyone there?").await;
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.queue_depth(&app.dlq_url).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message never reached the DLQ");
        deliveries += app.deliver_once().await.received;
    }
    assert_eq!(deliveries, MAX_RECEIVE_COUNT as usize, "delivered maxReceiveCount times, then dead-lettered");
    assert_eq!(app.queue_depth(&app.queues.default).await, 0);

    // The client is not left polling a task that will never finish.
    let (_, task) = app.get_task(&id).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "models_unavailable");
    assert_eq!(
        task["error"]["message"], "The models are unavailable; try again later.",
        "the deployment's words, not the provider's"
    );
    // Both models of the chain were tried on every delivery.
    let asked: std::collections::HashSet<String> =
        app.model_requests().await.iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    app.drain().await;
}

#[tokio::test]
async fn two_deliveries_of_the_same_message_call_the_model_for_one_run_only() {
    let mut app = TestApp::spawn().await;
    // A duplicate that finds the task running is hidden until the runner's lease (this
    // invocation's deadline) runs out: keep it short so the wait below is bounded well inside
    // PATIENCE.
    app.invocation = Duration::from_secs(6);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // A slow answer, so the duplicate arrives while the first delivery is still running.
    Mock::given(method("POST"))
        .respond_with(move |_: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            answer("once", json!({"input_tokens": 10, "output_tokens": 1})).set_delay(Duration::from_millis(500))
        })
        .mount(&app.model)
        .await;

    let id = app.submit("run me once").await;
    app.send_raw(&json!({"task_id": id, "priority": "default"}).to_string()).await;

    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "succeeded");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.queue_depth(&app.queues.default).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the duplicate was never acknowledged");
        app.deliver_once().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one run, one model call");
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_model_that_rejects_the_request_fails_the_task_with_its_message() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 300000 tokens > 200000 maximum"}}),
        ))
        .expect(1)
        .mount(&app.model)
        .await;
    let id = app.submit("a very long prompt").await;
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "model_error");
    assert!(task["error"]["message"].as_str().unwrap().contains("prompt is too long"), "{task}");
    app.drain().await;
}

#[tokio::test]
async fn an_unknown_task_id_is_a_404() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_task("01KB3Z5Q9V1W7E6D8C4B2A0F9G").await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
}

#[tokio::test]
async fn metadata_with_any_json_numbers_is_kept_and_returned() {
    let app = TestApp::spawn().await;
    // DynamoDB numbers cannot hold these; found by schemathesis.
    let metadata = json!({"tiny": 5e-324, "huge": 1e300, "nested": {"list": [1, "two", null]}});
    let (status, body) = app.post_task(&json!({"prompt": "keep my metadata", "metadata": metadata})).await;
    assert_eq!(status, 202, "{body}");
    let (_, task) = app.get_task(body["task_id"].as_str().unwrap()).await;
    assert_eq!(task["metadata"], metadata);
    app.drain().await;
}
