//! Fair dispatch: a task's message carries its tenant as the fairness key (`MessageGroupId`),
//! and the event source (locally, the stand-in of SQS fair queues) serves tenants with a
//! backlog round-robin, so a tenant that floods the queue does not hold up the others.

use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq_tests::{TestApp, answer, body_json};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::json;
use wiremock::Mock;
use wiremock::matchers::method;

fn roomy() -> Limits {
    Limits { rate_per_sec: 1000.0, burst: 1000, max_running: 1000, ..Limits::default() }
}

async fn submit_as(app: &TestApp, key: &str, prompt: String) -> String {
    let r = app.post_as(key, &json!({"prompt": prompt}), &[]).await;
    assert_eq!(r.status(), 202, "{}", body_json(r.body()));
    body_json(r.body())["task_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_tasks_message_carries_its_tenant_as_the_fairness_key() {
    let app = TestApp::spawn().await;
    app.submit("Which tenant?").await;
    let received = app
        .sqs
        .receive_message()
        .queue_url(&app.queues.default)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .send()
        .await
        .unwrap();
    let message = &received.messages.unwrap()[0];
    let group = message.attributes.as_ref().unwrap().get(&MessageSystemAttributeName::MessageGroupId);
    assert_eq!(group.map(String::as_str), Some("acme"));
    assert!(!message.body.as_deref().unwrap().contains("acme"), "the tenant is not in the body");
}

/// How many of `ids` have ended.
async fn ended(app: &TestApp, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        let task = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
        n += usize::from(task.status.is_terminal());
    }
    n
}

#[tokio::test]
async fn a_tenant_of_weight_three_gets_three_deliveries_for_every_one_of_a_tenant_of_weight_one() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 5, "output_tokens": 1})))
        .mount(&app.model)
        .await;
    let heavy = app.tenant("paid", Limits { weight: 3, ..roomy() }).await;
    let light = app.tenant("free", roomy()).await;
    let (mut paid, mut free) = (Vec::new(), Vec::new());
    for i in 0..120 {
        paid.push(submit_as(&app, &heavy, format!("paid {i}")).await);
        if i % 2 == 0 {
            free.push(submit_as(&app, &light, format!("free {i}")).await);
        }
    }
    // Both tenants keep a backlog throughout: 80 deliveries take at most 60 of the paid
    // tenant's 120 and 20 of the free tenant's 60.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut p, mut f) = (0, 0);
    while p + f < 80 {
        assert!(tokio::time::Instant::now() < deadline, "only {} tasks ended", p + f);
        app.deliver_once().await;
        (p, f) = (ended(&app, &paid).await, ended(&app, &free).await);
    }
    let ratio = p as f64 / f.max(1) as f64;
    assert!((2.7..=3.3).contains(&ratio), "paid {p} : free {f} is {ratio:.2}, not 3:1 within 10 %");
}

#[tokio::test]
async fn quiet_tenants_tasks_run_before_a_noisy_tenants_backlog_is_worked_off() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 5, "output_tokens": 1})))
        .mount(&app.model)
        .await;
    let noisy = app.tenant("noisy", roomy()).await;
    let mut backlog = Vec::new();
    for i in 0..120 {
        backlog.push(submit_as(&app, &noisy, format!("backlog {i}")).await);
    }
    // Three quiet tenants submit after the whole backlog is queued.
    let mut quiet = Vec::new();
    for name in ["quiet-a", "quiet-b", "quiet-c"] {
        let key = app.tenant(name, roomy()).await;
        for i in 0..4 {
            quiet.push(submit_as(&app, &key, format!("{name} {i}")).await);
        }
    }

    // Deliver until every quiet task has ended, counting the backlog's finished tasks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        app.deliver_once().await;
        let mut open = 0;
        for id in &quiet {
            let task = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
            open += usize::from(!task.status.is_terminal());
        }
        if open == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} quiet tasks still open");
    }
    let mut backlog_done = 0;
    for id in &backlog {
        let task = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
        backlog_done += usize::from(task.status.is_terminal());
    }
    // Round-robin over four tenants: the twelve quiet tasks are done within about four
    // batches of ten, while first in, first out would run all 120 of the backlog first.
    assert!(backlog_done <= 30, "{backlog_done} of the noisy tenant's 120 ran before the quiet tenants' 12");

    // The backlog is worked off too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let mut open = 0;
        for id in &backlog {
            let task = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
            assert_ne!(task.status.to_string(), "failed", "{task:?}");
            open += usize::from(!task.status.is_terminal());
        }
        if open == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} of the backlog still open");
        app.deliver_once().await;
    }
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn a_tenant_over_its_model_limits_per_minute_pauses_until_the_next_minute_while_others_run() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(agentq_tests::CalculatorScript).mount(&app.model).await;
    // Each task makes two model calls of 60 tokens: the first fits either limit, the second
    // does not, in the same minute. Start early in a minute, so both calls would fall in it.
    let second = agentq::now().second();
    if second >= 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
    let by_calls = app.tenant("calls-capped", Limits { requests_per_minute: Some(1), ..roomy() }).await;
    let by_tokens = app.tenant("tokens-capped", Limits { tokens_per_minute: Some(50), ..roomy() }).await;
    let capped = [
        (by_calls.clone(), submit_as(&app, &by_calls, "6 * 7?".into()).await),
        (by_tokens.clone(), submit_as(&app, &by_tokens, "6 * 7?".into()).await),
    ];
    let view = |key: &str, id: &str| {
        let (app, key, path) = (&app, key.to_owned(), format!("/v1/tasks/{id}"));
        async move { app.call_status(&key, "GET", &path, &[]).await.1 }
    };
    app.deliver_once().await;
    for (key, id) in &capped {
        let task = view(key, id).await;
        assert_eq!(task["status"], "queued", "paused at its second model call: {task}");
        assert_eq!(task["iterations"], 1, "{task}");
        let record = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(record.last_error.map(|e| e.code.to_string()).as_deref(), Some("model_rate_limited"));
    }
    assert_eq!(app.model_requests().await.len(), 2, "one call each");

    // Another tenant's task runs meanwhile, unhindered.
    let other = app.submit("6 * 7?").await;
    let task = app.run_until_terminal(&other, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    // In the next minute both resume from their recorded step and finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    for (key, id) in &capped {
        let task = loop {
            let task = view(key, id).await;
            if task["status"] != "queued" && task["status"] != "running" {
                break task;
            }
            assert!(tokio::time::Instant::now() < deadline, "{task}");
            app.deliver_once().await;
        };
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["iterations"], 2, "{task}");
        let record = agentq::store::TaskRead::get(app.store.as_ref(), id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(record.attempts, 1, "a pause is not an attempt");
        let started = record.started_at.unwrap();
        assert!(
            record.updated_at.unix_timestamp() / 60 > started.unix_timestamp() / 60,
            "the second call waited for the next minute"
        );
    }
    assert_eq!(app.model_requests().await.len(), 6);
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0, "nothing dead-lettered");
}
