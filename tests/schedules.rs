//! Schedules through the submit and status functions, the scheduler and the worker against the
//! emulators: a schedule's tick creates one task (even when two dispatchers race, or one runs
//! again), the task runs and the schedule lists it with its status, missed ticks are not run
//! one by one, `overlap: skip` skips a tick while the last task is open, pause, resume and
//! delete, the tenant's cap applies at the tick, and bad schedules are refused with what is
//! wrong. The clock is the test's: the scheduler is run at chosen instants.

use std::time::Duration;

use agentq::domain::tenant::Limits;
use agentq_tests::{CalculatorScript, TestApp};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wiremock::Mock;
use wiremock::matchers::method;

async fn create(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    app.post_path(key, "/v1/schedules", &body).await
}

async fn schedule(app: &TestApp, key: &str, id: &str) -> (u16, Value) {
    app.call_status(key, "GET", &format!("/v1/schedules/{id}"), &[]).await
}

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

/// The task ids of a schedule's runs, newest first (tracked, so the drain waits for them).
async fn run_tasks(app: &TestApp, id: &str) -> Vec<String> {
    let (_, s) = schedule(app, &app.key, id).await;
    let ids: Vec<String> =
        s["runs"].as_array().unwrap().iter().filter_map(|r| r["task_id"].as_str().map(str::to_owned)).collect();
    for task in &ids {
        app.track(task);
    }
    ids
}

async fn dispatch(app: &TestApp, now: OffsetDateTime) -> scheduler::Report {
    scheduler::dispatch(&app.scheduler(), now).await.expect("a dispatch")
}

#[tokio::test]
async fn a_tick_creates_one_task_which_runs_and_the_schedule_lists_it() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(CalculatorScript).mount(&app.model).await;
    let (status, created) = create(
        &app,
        &app.key,
        json!({"schedule": "rate(1 minute)", "description": "every minute", "task": {"prompt": "What is 6 * 7?"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let runs: Vec<OffsetDateTime> = created["next_runs"].as_array().unwrap().iter().map(at).collect();
    assert_eq!(runs.len(), 5);
    assert!(runs.windows(2).all(|w| w[1] - w[0] == time::Duration::minutes(1)), "{runs:?}");
    let (first, created_at) = (runs[0], at(&created["created_at"]));
    assert_eq!(first - created_at, time::Duration::minutes(1));

    assert_eq!(dispatch(&app, first - time::Duration::seconds(1)).await.created, 0, "nothing before the tick");
    // Two dispatchers at the tick (an overlapping invocation, a retry): one task between them.
    let (a, b) = tokio::join!(dispatch(&app, first), dispatch(&app, first));
    assert_eq!((a.created + b.created, a.found + b.found), (1, 1), "{a:?} {b:?}");
    let (_, all) = app.call_status(&app.key, "GET", "/v1/tasks", &[]).await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 1, "one task for the tick: {all}");
    assert_eq!(dispatch(&app, first + time::Duration::seconds(5)).await.due, 0, "a recorded tick is not due again");
    let tasks = run_tasks(&app, &id).await;
    assert_eq!(tasks.len(), 1);

    let done = app.run_until_terminal(&tasks[0], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["schedule_id"], id.as_str());
    assert_eq!(done["result"]["text"], "The answer is 42.");
    let (_, read) = schedule(&app, &app.key, &id).await;
    assert_eq!(read["runs"][0]["task_id"], tasks[0].as_str());
    assert_eq!(read["runs"][0]["status"], "succeeded");
    assert_eq!(at(&read["runs"][0]["at"]), first);
    assert_eq!(read["description"], "every minute");

    // Ten minutes with nothing dispatching: the latest tick runs once, the rest are not made up.
    let late = first + time::Duration::minutes(10) + time::Duration::seconds(3);
    let report = dispatch(&app, late).await;
    assert_eq!((report.due, report.created), (1, 1));
    let tasks = run_tasks(&app, &id).await;
    assert_eq!(tasks.len(), 2);
    let (_, read) = schedule(&app, &app.key, &id).await;
    assert!(at(&read["next_runs"][0]) > late, "{read}");
    app.drain().await;
}

#[tokio::test]
async fn overlap_skip_skips_a_tick_while_the_last_task_is_open_and_allow_does_not() {
    let app = TestApp::spawn().await;
    let body = |overlap: &str| json!({"schedule": "rate(1 minute)", "overlap": overlap, "task": {"prompt": "slow"}});
    let (_, skip) = create(&app, &app.key, body("skip")).await;
    let (_, allow) = create(&app, &app.key, body("allow")).await;
    let first = at(&skip["next_runs"][0]).max(at(&allow["next_runs"][0]));
    // Nobody runs the tasks: the first tick's stays queued.
    dispatch(&app, first).await;
    let report = dispatch(&app, first + time::Duration::minutes(1)).await;
    assert_eq!((report.created, report.skipped), (1, 1), "{report:?}");

    let (skip_id, allow_id) = (skip["id"].as_str().unwrap(), allow["id"].as_str().unwrap());
    assert_eq!(run_tasks(&app, skip_id).await.len(), 1);
    assert_eq!(run_tasks(&app, allow_id).await.len(), 2);
    let (_, read) = schedule(&app, &app.key, skip_id).await;
    assert_eq!(read["runs"][0]["skipped"]["code"], "overlap", "{read}");
    assert!(read["runs"][0]["skipped"]["message"].as_str().unwrap().contains("still queued"));
    app.drain().await;
}

#[tokio::test]
async fn a_paused_schedule_makes_nothing_a_resumed_one_counts_from_its_resume_and_a_deleted_one_is_gone() {
    let app = TestApp::spawn().await;
    let other = app.tenant("other", Limits::default()).await;
    let (_, s) = create(&app, &app.key, json!({"schedule": "rate(5 minutes)", "task": {"prompt": "hi"}})).await;
    let id = s["id"].as_str().unwrap();
    let path = |verb: &str| format!("/v1/schedules/{id}/{verb}");

    let (status, paused) = app.call_status(&app.key, "POST", &path("pause"), &[]).await;
    assert_eq!((status, &paused["state"], &paused["next_runs"]), (200, &json!("paused"), &json!([])));
    let (status, again) = app.call_status(&app.key, "POST", &path("pause"), &[]).await;
    assert_eq!((status, &again["state"]), (200, &json!("paused")), "pausing twice is harmless");
    let report = dispatch(&app, agentq::now() + time::Duration::hours(1)).await;
    assert_eq!((report.due, report.created), (0, 0));

    let before = agentq::now();
    let (status, resumed) = app.call_status(&app.key, "POST", &path("resume"), &[]).await;
    assert_eq!((status, &resumed["state"]), (200, &json!("active")));
    let next = at(&resumed["next_runs"][0]);
    assert!(next >= before + time::Duration::minutes(5) && next < before + time::Duration::minutes(6), "{resumed}");

    assert_eq!(app.call_status(&other, "GET", &format!("/v1/schedules/{id}"), &[]).await.0, 404);
    assert_eq!(app.call_status(&other, "POST", &path("pause"), &[]).await.0, 404);
    assert_eq!(app.call_status(&other, "DELETE", &format!("/v1/schedules/{id}"), &[]).await.0, 404);
    let (status, list) = app.call_status(&app.key, "GET", "/v1/schedules", &[]).await;
    assert_eq!((status, list["schedules"].as_array().unwrap().len()), (200, 1));
    assert_eq!(app.call_status(&other, "GET", "/v1/schedules", &[]).await.1, json!({"schedules": []}));

    let (status, gone) = app.call_status(&app.key, "DELETE", &format!("/v1/schedules/{id}"), &[]).await;
    assert_eq!((status, &gone["deleted"]), (200, &json!(true)));
    assert_eq!(schedule(&app, &app.key, id).await.0, 404);
    assert_eq!(app.call_status(&app.key, "DELETE", &format!("/v1/schedules/{id}"), &[]).await.0, 404);
    assert_eq!(app.call_status(&app.key, "GET", "/v1/schedules/sch_nope", &[]).await.0, 404);
}

#[tokio::test]
async fn a_tick_over_the_tenants_cap_is_skipped_and_says_so() {
    let app = TestApp::spawn().await;
    let key = app.tenant("capped", Limits { max_running: 1, ..Limits::default() }).await;
    let busy = app.post_as(&key, &json!({"prompt": "occupies the only slot"}), &[]).await;
    assert_eq!(busy.status(), 202);
    let (_, s) =
        create(&app, &key, json!({"schedule": "cron(* * * * ? *)", "overlap": "allow", "task": {"prompt": "hi"}}))
            .await;
    let report = dispatch(&app, at(&s["next_runs"][0])).await;
    assert_eq!(report.skipped, 1, "{report:?}");
    let (_, read) = schedule(&app, &key, s["id"].as_str().unwrap()).await;
    assert_eq!(read["runs"][0]["skipped"]["code"], "concurrency_limited", "{read}");
    assert!(read["runs"][0].get("task_id").is_none());
    app.drain().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_with_what_is_wrong() {
    let app = TestApp::spawn().await;
    let fields = |body: &Value| -> Vec<String> {
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
    };
    let (status, body) = create(
        &app,
        &app.key,
        json!({"schedule": "cron(0 9 * * MON *)", "timezone": "Mars/Olympus", "task": {"prompt": "x", "model": "gpt-9"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["schedule", "timezone", "task.model"]);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("`?`"), "{body}");

    let (status, body) = create(&app, &app.key, json!({"schedule": "rate(1 minutes)", "task": {"prompt": "x"}})).await;
    assert_eq!((status, fields(&body)), (400, vec!["schedule".to_owned()]));
    let (status, body) = create(
        &app,
        &app.key,
        json!({"schedule": "rate(1 hour)", "task": {"prompt": "x", "webhook": {"url": "https://example.com"}}}),
    )
    .await;
    assert_eq!((status, fields(&body)), (400, vec!["task.webhook".to_owned()]));
    let (status, body) = create(&app, &app.key, json!({"task": {"prompt": "x"}})).await;
    assert_eq!((status, fields(&body)), (400, vec!["schedule".to_owned()]));
    let (status, body) =
        create(&app, &app.key, json!({"schedule": "cron(0 0 1 1 ? 2020)", "task": {"prompt": "x"}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("no tick"));
    let (status, _) = create(&app, "aq_wrong", json!({"schedule": "rate(1 hour)", "task": {"prompt": "x"}})).await;
    assert_eq!(status, 401);
}
