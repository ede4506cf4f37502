//! Concurrency as a queue: a tenant with `over_cap: hold` has tasks over its running cap
//! accepted and held in line, none started beyond the cap, each started as a slot frees, in
//! submission order, with no message burned and none dead-lettered.

use std::time::Duration;

use agentq::domain::tenant::{Limits, OverCap};
use agentq::store::TaskRead as _;
use agentq_tests::{TestApp, answer, body_json};
use serde_json::json;
use wiremock::Mock;
use wiremock::matchers::method;

#[tokio::test]
async fn fifty_tasks_with_a_cap_of_five_all_succeed_never_more_than_five_running() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 5, "output_tokens": 1})))
        .mount(&app.model)
        .await;
    let limits =
        Limits { max_running: 5, rate_per_sec: 1000.0, burst: 1000, over_cap: OverCap::Hold, ..Limits::default() };
    let key = app.tenant("holder", limits).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = app.post_as(&key, &json!({"prompt": format!("task {i}")}), &[]).await;
        assert_eq!(r.status(), 202, "{}", body_json(r.body()));
        let body = body_json(r.body());
        assert_eq!(body["held"] == true, i >= 5, "the first five take the slots; the rest wait in line: {body}");
        ids.push(body["task_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.running_count("holder").await, 5);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut most = 0;
    loop {
        let running = app.running_count("holder").await;
        most = most.max(running);
        assert!(running <= 5, "{running} tasks counted against a cap of 5");
        let (mut open, mut line) = (0, Vec::new());
        for id in &ids {
            let task = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
            if !task.status.is_terminal() {
                open += 1;
            }
            line.push(task.held);
        }
        // The line leaves in submission order: the tasks still held are the latest submitted.
        assert!(line.windows(2).all(|w| w[0] <= w[1]), "a later task left the line first: {line:?}");
        if open == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} tasks still open");
        app.deliver_once().await;
    }
    assert_eq!(most, 5);
    for id in &ids {
        let (_, task) = app.call_status(&key, "GET", &format!("/v1/tasks/{id}"), &[]).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    assert_eq!(app.queue_depth(&app.dlq_url).await, 0, "nothing dead-lettered");
    assert_eq!(app.running_count("holder").await, 0);
    app.drain().await;
}

#[tokio::test]
async fn a_tenant_that_rejects_over_its_cap_still_gets_429() {
    let app = TestApp::spawn().await;
    let key = app.tenant("rejecter", Limits { max_running: 1, ..Limits::default() }).await;
    assert_eq!(app.post_as(&key, &json!({"prompt": "a"}), &[]).await.status(), 202);
    let r = app.post_as(&key, &json!({"prompt": "b"}), &[]).await;
    assert_eq!(
        (r.status().as_u16(), body_json(r.body())["code"].as_str().map(str::to_owned)),
        (429, Some("concurrency_limited".to_owned()))
    );
    app.drain().await;
}
