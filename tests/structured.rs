//! Structured results (`output_schema`) through submit, the worker and the status API, with
//! the model over HTTP: the model is told the schema, an invalid final answer goes back to it
//! with the validation errors, a valid one is the result's `json`, and an answer that stays
//! invalid fails the task `output_invalid`.

use std::time::Duration;

use agentq_tests::{TestApp, answer};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

fn person() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": false
    })
}

async fn model_requests(app: &TestApp) -> Vec<Value> {
    app.model.received_requests().await.unwrap().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
}

/// The text of the last user message of a request.
fn last_user_text(body: &Value) -> String {
    let last = body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "user");
    last["content"].as_array().unwrap().iter().filter_map(|b| b["text"].as_str()).collect()
}

#[tokio::test]
async fn an_answer_that_misses_the_schema_is_sent_back_and_the_corrected_one_is_the_results_json() {
    let app = TestApp::spawn().await;
    let usage = json!({"input_tokens": 20, "output_tokens": 5});
    Mock::given(method("POST"))
        .respond_with(answer("Ada is 36 years old.", usage.clone()))
        .up_to_n_times(1)
        .mount(&app.model)
        .await;
    Mock::given(method("POST"))
        .respond_with(answer("```json\n{\"name\": \"Ada\", \"age\": 36}\n```", usage))
        .mount(&app.model)
        .await;
    let (status, accepted) = app.post_task(&json!({"prompt": "Who is Ada?", "output_schema": person()})).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["task_id"].as_str().unwrap();
    let task = app.run_until_terminal(id, Duration::from_secs(60)).await;

    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["json"], json!({"name": "Ada", "age": 36}));
    assert_eq!(
        serde_json::from_str::<Value>(task["result"]["text"].as_str().unwrap()).unwrap(),
        task["result"]["json"]
    );
    assert_eq!(task["iterations"], 2, "both answers are paid for and counted");
    // The first answer, held to go with the end, is recorded once the run goes on.
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    let recorded: Vec<(u64, &str)> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_u64().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(recorded, [(1, "model"), (2, "model")], "{steps}");
    let requests = model_requests(&app).await;
    assert_eq!(requests.len(), 2);
    let system = requests[0]["system"].to_string();
    assert!(system.contains("JSON Schema") && system.contains("additionalProperties"), "{system}");
    let correction = last_user_text(&requests[1]);
    assert!(correction.contains("not valid against the required JSON Schema"), "{correction}");
    assert!(correction.contains("not JSON"), "the model is told what is wrong: {correction}");
}

#[tokio::test]
async fn an_answer_that_stays_invalid_fails_the_task_output_invalid_with_the_errors() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer(r#"{"name": 7, "age": -1}"#, json!({"input_tokens": 20, "output_tokens": 5})))
        .mount(&app.model)
        .await;
    let (_, accepted) = app.post_task(&json!({"prompt": "Who is Ada?", "output_schema": person()})).await;
    let id = accepted["task_id"].as_str().unwrap();
    let task = app.run_until_terminal(id, Duration::from_secs(60)).await;

    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "output_invalid");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("/name") && message.contains("/age"), "{message}");
    assert_eq!(model_requests(&app).await.len(), 3, "the first answer and two corrections");
    assert!(task.get("result").is_none());
}

#[tokio::test]
async fn a_task_without_a_schema_answers_in_prose_as_before() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(answer("Ada is 36.", json!({}))).mount(&app.model).await;
    let id = app.submit("Who is Ada?").await;
    let task = app.run_until_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(task["result"], json!({"text": "Ada is 36."}));
    assert!(model_requests(&app).await[0].get("system").is_none());
}

#[tokio::test]
async fn a_schema_that_is_not_one_too_big_or_too_deep_gets_400_naming_output_schema() {
    let app = TestApp::spawn().await;
    let mut deep = json!({"type": "string"});
    for _ in 0..20 {
        deep = json!({"type": "array", "items": deep});
    }
    for schema in [
        json!("an object please"),
        json!({"type": "no such type"}),
        json!({"type": "object", "description": "x".repeat(20_000)}),
        deep,
    ] {
        let (status, problem) = app.post_task(&json!({"prompt": "hi", "output_schema": schema})).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["errors"][0]["field"], "output_schema", "{problem}");
    }
}
