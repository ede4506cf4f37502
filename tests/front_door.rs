//! The front door against the emulators: keys, tenant isolation, the shared rate limit, caps,
//! priorities, idempotent submit, cancel (in every state, and racing the worker), listing and
//! usage.

use std::collections::HashSet;
use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq::store::{TaskReconcile as _, TenantAdmin};
use agentq_tests::{CalculatorScript, TestApp, answer, body_json, message, prompt_of};
use futures::future::join_all;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, Request, ResponseTemplate};

const PATIENCE: Duration = Duration::from_secs(60);

fn limits(rate: f64, burst: u32, max_running: u32, budget_usd: Option<f64>) -> Limits {
    Limits {
        rate_per_sec: rate,
        burst,
        max_running,
        monthly_budget_nanos: budget_usd.map(|b| (b * 1e9) as u64),
        ..Limits::default()
    }
}

async fn answers_quickly(app: &TestApp) {
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 1000, "output_tokens": 100})))
        .mount(&app.model)
        .await;
}

#[tokio::test]
async fn a_missing_wrong_or_revoked_key_gets_401_with_a_challenge() {
    let app = TestApp::spawn().await;
    let revoked = app.tenant("initech", Limits::default()).await;
    let key_id = app.store.list_keys(Some("initech")).await.unwrap()[0].key_id.clone();
    app.store.revoke_key(&key_id, agentq::now()).await.unwrap();
    for key in ["", "aq_not-a-real-key", revoked.as_str()] {
        let r = app.post_as(key, &json!({"prompt": "hi"}), &[]).await;
        assert_eq!(r.status(), 401, "{key:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"agentq\"");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let (status, _) = app.call_status(key, "GET", "/v1/tasks", &[]).await;
        assert_eq!(status, 401);
    }
    let body = body_json(app.post_as(&revoked, &json!({"prompt": "hi"}), &[]).await.body());
    assert!(body["detail"].as_str().unwrap().contains("revoked"));
    app.drain().await;
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_task() {
    let app = TestApp::spawn().await;
    let other = app.tenant("globex", Limits::default()).await;
    let id = app.submit("acme's secret work").await;
    for method in ["GET", "DELETE"] {
        let (status, body) = app.call_status(&other, method, &format!("/v1/tasks/{id}"), &[]).await;
        assert_eq!(status, 404, "{method}");
        assert_eq!(body["detail"], format!("no task with id {id:?}"), "exactly as for an unknown id");
    }
    let (_, list) = app.call_status(&other, "GET", "/v1/tasks", &[]).await;
    assert_eq!(list["tasks"], json!([]));
    assert_eq!(app.get_task(&id).await.1["status"], "queued", "the other tenant's cancel did nothing");
    app.drain().await;
}

#[tokio::test]
async fn the_rate_limit_holds_under_a_burst_from_two_concurrent_clients() {
    let app = TestApp::spawn().await;
    let key = app.tenant("bursty", limits(0.01, 5, 100, None)).await;
    let client = |n: usize| {
        let (app, key) = (&app, &key);
        async move {
            join_all(
                (0..n).map(|i| async move { app.post_as(key, &json!({"prompt": format!("burst {i}")}), &[]).await }),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(client(8), client(8));
    let responses: Vec<_> = a.into_iter().chain(b).collect();
    let accepted = responses.iter().filter(|r| r.status() == 202).count();
    assert_eq!(accepted, 5, "no more accepted than the bucket holds");
    for r in responses.iter().filter(|r| r.status() != 202) {
        assert_eq!(r.status(), 429);
        assert_eq!(body_json(r.body())["code"], "rate_limited");
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
        assert_eq!(r.headers()["ratelimit-limit"], "5");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        assert!(r.headers().contains_key("ratelimit-reset"));
    }
    app.drain().await;
}

#[tokio::test]
async fn a_tenant_at_its_running_cap_is_refused_until_a_task_finishes() {
    let app = TestApp::spawn().await;
    answers_quickly(&app).await;
    let key = app.tenant("capped", limits(100.0, 100, 2, None)).await;
    let post = |p: &'static str| {
        let (app, key) = (&app, &key);
        async move { app.post_as(key, &json!({"prompt": p}), &[]).await }
    };
    assert_eq!(post("one").await.status(), 202);
    let second = post("two").await;
    assert_eq!(second.status(), 202);
    let refused = post("three").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(body_json(refused.body())["code"], "concurrency_limited");

    let id = body_json(second.body())["task_id"].as_str().unwrap().to_owned();
    let (_, task) = {
        app.deliver_once().await;
        app.call_status(&key, "GET", &format!("/v1/tasks/{id}"), &[]).await
    };
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(post("four").await.status(), 202, "a finished task frees its slot");
    app.drain().await;
}

#[tokio::test]
async fn a_tenant_over_its_monthly_budget_is_refused_with_budget_exhausted() {
    let app = TestApp::spawn().await;
    answers_quickly(&app).await;
    // One task costs 1000 × $3 + 100 × $15 per MTok = $0.0045.
    let key = app.tenant("thrifty", limits(100.0, 100, 100, Some(0.004))).await;
    let first = app.post_as(&key, &json!({"prompt": "spend"}), &[]).await;
    assert_eq!(first.status(), 202);
    let id = body_json(first.body())["task_id"].as_str().unwrap().to_owned();
    loop {
        app.deliver_once().await;
        let (_, t) = app.call_status(&key, "GET", &format!("/v1/tasks/{id}"), &[]).await;
        if t["status"] == "succeeded" {
            break;
        }
    }
    let refused = app.post_as(&key, &json!({"prompt": "more"}), &[]).await;
    assert_eq!(refused.status(), 402);
    let body = body_json(refused.body());
    assert_eq!(body["code"], "budget_exhausted");
    assert!(body["detail"].as_str().unwrap().contains("0.0045"), "{body}");
    assert_count_is_true(&app, "thrifty").await;
    app.drain().await;
}

/// The tenant's running count equals its open tasks: no slot was kept by a refused submit.
async fn assert_count_is_true(app: &TestApp, tenant: &str) {
    let never = Duration::from_secs(10 * 365 * 86_400);
    let drift = app.store.repair_counts(never, agentq::now()).await.unwrap();
    assert!(drift.iter().all(|r| r.tenant != tenant), "a refused submit kept a running slot: {drift:?}");
}

#[tokio::test]
async fn a_request_refused_as_invalid_spends_neither_the_rate_limit_nor_a_running_slot() {
    let app = TestApp::spawn().await;
    let key = app.tenant("sloppy", limits(0.01, 1, 1, None)).await;
    for bad in [json!({"prompt": 5}), json!({"prompt": "hi", "webhook": {"url": "ftp://example.com"}})] {
        let r = app.post_as(&key, &bad, &[]).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_count_is_true(&app, "sloppy").await;
    let first = app.post_as(&key, &json!({"prompt": "valid"}), &[]).await;
    assert_eq!(first.status(), 202, "the burst of one is whole");
    assert_eq!(first.headers()["ratelimit-remaining"], "0");
    let second = app.post_as(&key, &json!({"prompt": "again"}), &[]).await;
    assert_eq!(body_json(second.body())["code"], "rate_limited");
    assert_count_is_true(&app, "sloppy").await;
    app.drain().await;
}

#[tokio::test]
async fn a_flood_of_low_priority_work_does_not_delay_a_high_priority_task() {
    let app = TestApp::spawn().await;
    answers_quickly(&app).await;
    let mut low = Vec::new();
    for i in 0..30 {
        let (status, body) = app.post_task(&json!({"prompt": format!("low {i}"), "priority": "low"})).await;
        assert_eq!(status, 202);
        low.push(body["task_id"].as_str().unwrap().to_owned());
    }
    let (_, high) = app.post_task(&json!({"prompt": "urgent", "priority": "high"})).await;
    let high = high["task_id"].as_str().unwrap().to_owned();

    let mut polls = 0;
    while app.get_task(&high).await.1["status"] != "succeeded" {
        app.deliver_once().await;
        polls += 1;
        assert!(polls < 20, "the high-priority task never ran");
    }
    let mut low_done = 0;
    for id in &low {
        if app.get_task(id).await.1["status"] == "succeeded" {
            low_done += 1;
        }
    }
    assert_eq!(low_done, 0, "the high-priority task ran before any of the {} low ones", low.len());
    app.drain().await;
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_original_task() {
    let app = TestApp::spawn().await;
    answers_quickly(&app).await;
    let body = json!({"prompt": "charge the card", "priority": "high"});
    let first = app.post_as(&app.key, &body, &[("idempotency-key", "order-17")]).await;
    assert_eq!(first.status(), 202);
    let id = body_json(first.body())["task_id"].clone();
    // Same meaning, other key order and spacing.
    let same = json!({"priority": "high", "prompt": "charge the card"});
    let again = app.post_as(&app.key, &same, &[("idempotency-key", "order-17")]).await;
    assert_eq!(again.status(), 202);
    assert_eq!(body_json(again.body())["task_id"], id);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let other = app.post_as(&app.key, &json!({"prompt": "charge it twice"}), &[("idempotency-key", "order-17")]).await;
    assert_eq!(other.status(), 409);
    assert_eq!(body_json(other.body())["code"], "idempotency_key_reused");

    app.run_until_terminal(id.as_str().unwrap(), PATIENCE).await;
    let (_, list) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "one task");
    assert_eq!(app.model_requests().await.len(), 1, "one run");
    app.drain().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_task() {
    let app = TestApp::spawn().await;
    let body = json!({"prompt": "exactly once"});
    let responses = join_all((0..8).map(|_| app.post_as(&app.key, &body, &[("idempotency-key", "same-key")]))).await;
    let ids: HashSet<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status(), 202, "{:?}", body_json(r.body()));
            body_json(r.body())["task_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (_, list) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    // A replay of a task still queued sends its message again (the first request may have
    // died before sending it); the copies run it once.
    let messages = app.queue_depth(&app.queues.default).await;
    assert!((1..=8).contains(&messages), "{messages} messages");
    app.drain().await;
    assert_eq!(app.model_requests().await.len(), 1, "one run, however many messages");
}

#[tokio::test]
async fn cancelling_a_queued_task_ends_it_and_no_worker_runs_it() {
    let app = TestApp::spawn().await;
    answers_quickly(&app).await;
    let id = app.submit("never mind").await;
    let (status, task) = app.call_status(&app.key, "DELETE", &format!("/v1/tasks/{id}"), &[]).await;
    assert_eq!((status, task["status"].as_str()), (200, Some("cancelled")));
    app.deliver_once().await;
    assert_eq!(app.get_task(&id).await.1["status"], "cancelled");
    assert!(app.model_requests().await.is_empty(), "the worker did not run it");
    assert_eq!(app.queue_depth(&app.queues.default).await, 0, "its message was acknowledged");
    let (status, body) = app.call_status(&app.key, "DELETE", &format!("/v1/tasks/{id}"), &[]).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("task_finished")));
    app.drain().await;
}

#[tokio::test]
async fn cancelling_a_running_task_stops_it_at_the_next_step_with_its_usage() {
    let app = TestApp::spawn().await;
    // A model that keeps asking for the calculator, slowly.
    Mock::given(method("POST"))
        .respond_with(|_: &Request| {
            ResponseTemplate::new(200)
                .set_body_json(message(
                    json!([{"type": "tool_use", "id": "t", "name": "calculator", "input": {"expression": "1+1"}}]),
                    "tool_use",
                    json!({"input_tokens": 10, "output_tokens": 5}),
                ))
                .set_delay(Duration::from_millis(200))
        })
        .mount(&app.model)
        .await;
    let id = app.submit("loop for a while").await;
    let cancel = async {
        loop {
            let task = app.get_task(&id).await.1;
            if task["status"] == "running" && task["progress"]["step"].as_u64() >= Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app.call_status(&app.key, "DELETE", &format!("/v1/tasks/{id}"), &[]).await
    };
    let (_, (status, body)) = tokio::join!(app.deliver_once(), cancel);
    assert_eq!(status, 202);
    assert_eq!(body["cancel_requested"], true);
    let task = app.run_until_terminal(&id, PATIENCE).await;
    assert_eq!(task["status"], "cancelled", "{task}");
    let steps = task["iterations"].as_u64().unwrap();
    assert!((1..10).contains(&steps), "stopped early, at a step boundary: {steps}");
    assert_eq!(task["usage"]["input_tokens"].as_u64().unwrap(), 10 * steps, "the usage spent is kept");
    app.drain().await;
}

#[tokio::test]
async fn a_cancel_racing_the_workers_claim_never_leaves_a_task_running() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(|_: &Request| {
            answer("raced", json!({"input_tokens": 10, "output_tokens": 1})).set_delay(Duration::from_millis(30))
        })
        .mount(&app.model)
        .await;
    for round in 0..8 {
        let id = app.submit(&format!("race {round}")).await;
        let path = format!("/v1/tasks/{id}");
        let (_, (status, _)) = tokio::join!(app.deliver_once(), app.call_status(&app.key, "DELETE", &path, &[]));
        let task = app.run_until_terminal(&id, PATIENCE).await;
        let ran = app.model_requests().await.iter().any(|r| prompt_of(r) == format!("race {round}"));
        match status {
            // Cancelled while queued: it must end cancelled without running.
            200 => assert!(task["status"] == "cancelled" && !ran, "round {round}: {task}"),
            // Cancelled while running: it ends cancelled, or finished first.
            202 => assert!(matches!(task["status"].as_str(), Some("cancelled" | "succeeded")), "round {round}: {task}"),
            // It finished before the cancel arrived.
            409 => assert_eq!(task["status"], "succeeded", "round {round}"),
            other => panic!("round {round}: cancel answered {other}"),
        }
    }
    assert_eq!(app.queue_depth(&app.queues.default).await, 0);
    app.drain().await;
}

#[tokio::test]
async fn pagination_returns_every_task_exactly_once_newest_first() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(app.submit(&format!("task {i}")).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("limit", "10")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let (status, page) = app.call_status(&app.key, "GET", "/v1/tasks", &q).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(page["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let (_, cancelled) = app.call_status(&app.key, "DELETE", &format!("/v1/tasks/{}", ids[3]), &[]).await;
    assert_eq!(cancelled["status"], "cancelled");
    let (_, page) = app.call_status(&app.key, "GET", "/v1/tasks", &[("status", "cancelled")]).await;
    let only: Vec<&Value> = page["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["task_id"], ids[3].as_str());
    app.drain().await;
}

#[tokio::test]
async fn tasks_written_before_the_tasks_index_are_listed_after_the_newer_ones() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let app = TestApp::spawn().await;
    let old = app.submit("written by the last release").await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new = app.submit("written by this one").await;
    // The older task as the last release wrote it: listed by gsi1 (`TASKS#<tenant>`, its id).
    app.dynamodb
        .update_item()
        .table_name(&app.table)
        .key("pk", AttributeValue::S(format!("TASK#{old}")))
        .key("sk", AttributeValue::S("META".into()))
        .update_expression("SET gsi1pk = :pk, gsi1sk = :id REMOVE tasks_pk")
        .expression_attribute_values(":pk", AttributeValue::S("TASKS#acme".into()))
        .expression_attribute_values(":id", AttributeValue::S(old.clone()))
        .send()
        .await
        .unwrap();
    let ids = |page: &Value| -> Vec<String> {
        page["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all), [new.clone(), old.clone()]);
    assert_eq!(all["tasks"][1]["status"], "queued", "a whole summary: {all}");

    let (_, first) = app.call_status(&app.key, "GET", "/v1/tasks", &[("limit", "1")]).await;
    assert_eq!(ids(&first)[..], [new.as_str()]);
    let cursor = first["next_cursor"].as_str().expect("a second page").to_owned();
    let (_, second) = app.call_status(&app.key, "GET", "/v1/tasks", &[("limit", "1"), ("cursor", &cursor)]).await;
    assert_eq!(ids(&second)[..], [old.as_str()]);
    assert!(second["next_cursor"].is_null(), "{second}");

    let (_, queued) = app.call_status(&app.key, "GET", "/v1/tasks", &[("status", "queued")]).await;
    assert_eq!(ids(&queued), [new, old]);
    app.drain().await;
}

#[tokio::test]
async fn usage_reports_tasks_tokens_and_cost_per_day() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let a = app.submit("What is 6 * 7?").await;
    let b = app.submit("What is 2 + 2?").await;
    let c = app.submit("not needed").await;
    app.call_status(&app.key, "DELETE", &format!("/v1/tasks/{c}"), &[]).await;
    let tasks = app.run_all_until_terminal(&[a, b], PATIENCE).await;
    let cost: f64 = tasks.iter().map(|t| t["usage"]["cost_usd"].as_f64().unwrap()).sum();

    let (status, report) = app.call_status(&app.key, "GET", "/v1/usage", &[]).await;
    assert_eq!(status, 200, "{report}");
    let today = agentq::store::day_of(agentq::now());
    let day = report["days"].as_array().unwrap().iter().find(|d| d["date"] == today.as_str()).cloned().unwrap();
    assert_eq!(day["tasks"], json!({"succeeded": 2, "failed": 0, "cancelled": 1}));
    assert_eq!(day["usage"]["input_tokens"], 200, "two tasks of two 50-token calls");
    assert!((day["usage"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    assert_eq!(report["total"]["tasks"]["succeeded"], 2);
    app.drain().await;
}
