//! The store's rules as one suite, run against every adapter: the in-memory fake in the unit
//! tests and DynamoDB Local in the integration tests (`tests/conformance.rs`). The handler
//! tests trust the fake because it passes the suite the real store passes.
//!
//! Each check uses a tenant of its own, so the suite can run on a table other tests share.
//! A check panics, naming the rule, when an adapter breaks it.

use std::time::Duration;

use time::OffsetDateTime;

use super::{
    Admission, Admitted, Cancelled, Claim, Finish, Idempotency, Lease, Progress, RateLimiter, Slot, StepAck,
    StoreError, TaskCancel, TaskCreate, TaskDeadLetter, TaskInput, TaskRead, TaskReconcile, TaskRun, TenantAdmin,
    UsageRead, Wait, WebhookStore, day_of, month_of,
};
use super::{BatchKey, BatchStore, Metered, ModelMeter, ScheduleStore, minute_of, minute_start};
use crate::domain::approval::{Action, Decision, PendingCall};
use crate::domain::events::{EventKind, TaskEvent};
use crate::domain::steps::Step;
use crate::domain::steps::{ModelStep, Spend};
use crate::domain::task::{ErrorCode, TaskError, TaskId, TaskRecord, TaskRequest, TaskResult, TaskStatus};
use crate::domain::tenant::Limits;
use crate::domain::usage::Usage;

/// Everything an adapter implements.
pub trait Store:
    TaskCreate
    + TaskRead
    + TaskRun
    + TaskCancel
    + TaskDeadLetter
    + TaskReconcile
    + UsageRead
    + RateLimiter
    + TenantAdmin
    + WebhookStore
    + TaskInput
    + BatchStore
    + ScheduleStore
    + ModelMeter
{
}
impl<T> Store for T where
    T: TaskCreate
        + TaskRead
        + TaskRun
        + TaskCancel
        + TaskDeadLetter
        + TaskReconcile
        + UsageRead
        + RateLimiter
        + TenantAdmin
        + WebhookStore
        + TaskInput
        + BatchStore
        + ScheduleStore
        + ModelMeter
{
}

/// Runs every check against `store`, whose grace period before the reconciler looks at an
/// open task is `reconcile_after`.
pub async fn run(store: &dyn Store, reconcile_after: Duration) {
    claims_run_a_task_once_and_take_over_an_expired_lease(store).await;
    a_lost_lease_refuses_every_write(store).await;
    cancel_ends_a_queued_task_and_stops_a_running_one(store).await;
    finishing_counts_usage_and_frees_the_slot(store).await;
    an_unqueued_task_fails_and_frees_its_key(store).await;
    only_tasks_no_live_lease_holds_are_failed_as_abandoned(store).await;
    usage_is_counted_once_through_failure_redrive_and_success(store).await;
    admission_keeps_the_cap_and_the_idempotency_key(store).await;
    concurrent_admissions_of_one_tenant_all_land_and_count_once(store).await;
    open_tasks_fall_due_after_their_grace_and_ended_ones_never(store, reconcile_after).await;
    the_rate_limit_allows_its_burst_then_refuses(store).await;
    a_submits_request_and_slot_are_taken_together_and_a_slot_unused_is_given_back(store).await;
    a_tasks_log_numbers_every_change_in_order(store).await;
    endpoints_are_the_tenants_own_and_attempts_read_in_order(store).await;
    a_waiting_task_holds_no_slot_and_resumes_once_with_its_decisions(store).await;
    a_fork_is_listed_on_its_parent_and_inherits_each_step_once(store).await;
    steps_read_back_in_order_whole_and_page_by_page_wherever_they_are_kept(store).await;
    a_runs_last_answer_is_recorded_with_its_end_or_not_at_all(store).await;
    a_batch_is_admitted_under_the_cap_and_kept_for_its_tenant(store).await;
    held_tasks_take_no_slot_and_start_in_line_as_slots_free(store).await;
    schedules_are_the_tenants_own_fall_due_once_and_move_on_one_writer_at_a_time(store).await;
    model_calls_are_metered_per_tenant_per_minute(store).await;
    a_long_prompt_is_read_back_whole_by_the_worker_a_fork_and_a_batch(store).await;
}

async fn a_long_prompt_is_read_back_whole_by_the_worker_a_fork_and_a_batch(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let long = "Résumé the attached report, then answer. ".repeat(120);
    let body = serde_json::to_vec(&serde_json::json!({"prompt": long})).unwrap();
    let request = TaskRequest::parse(&body, &Default::default()).expect("a valid request");
    let task = TaskRecord::new(request.clone(), &t, now);
    let admission = Admission { max_running: 1_000, idempotency: None, slot: Slot::Take };
    assert_eq!(store.admit(&task, admission).await.unwrap(), Admitted::Created);
    assert_eq!(store.get_with_prompt(task.task_id).await.unwrap().unwrap().prompt, long, "as a fork reads it");
    let Claim::Claimed(claimed) =
        store.claim(task.task_id, &lease("w", now + Duration::from_secs(60)), now).await.unwrap()
    else {
        panic!("claimed")
    };
    assert_eq!(claimed.prompt, long, "as the worker reads it");
    let batch: Vec<TaskRecord> = (0..2).map(|_| TaskRecord::new(request.clone(), &t, now)).collect();
    assert_eq!(store.admit_many(&batch, 1_000).await.unwrap().admitted, 2);
    for task in &batch {
        assert_eq!(store.get_with_prompt(task.task_id).await.unwrap().unwrap().prompt, long);
    }
}

async fn model_calls_are_metered_per_tenant_per_minute(store: &dyn Store) {
    let (a, b) = (tenant(store).await, tenant(store).await);
    // Early in a minute, so the checks below all fall in it.
    let minute = minute_of(crate::now()) + 10;
    let at = |s: i64| minute_start(minute) + time::Duration::seconds(s);
    let calls = Limits { requests_per_minute: Some(2), ..Limits::default() };
    assert_eq!(store.take_model_call(&a, &calls, at(1)).await.unwrap(), Metered::Go);
    assert_eq!(store.take_model_call(&a, &calls, at(2)).await.unwrap(), Metered::Go);
    assert_eq!(store.take_model_call(&a, &calls, at(3)).await.unwrap(), Metered::WaitUntil(minute_start(minute + 1)));
    assert_eq!(store.take_model_call(&b, &calls, at(3)).await.unwrap(), Metered::Go, "tenants are metered apart");
    assert_eq!(store.take_model_call(&a, &calls, at(61)).await.unwrap(), Metered::Go, "a new minute counts afresh");

    let tokens = Limits { tokens_per_minute: Some(100), ..Limits::default() };
    let c = tenant(store).await;
    assert_eq!(store.take_model_call(&c, &tokens, at(1)).await.unwrap(), Metered::Go);
    store.count_model_tokens(&c, 60, at(1)).await.unwrap();
    assert_eq!(store.take_model_call(&c, &tokens, at(2)).await.unwrap(), Metered::Go, "60 of 100 tokens used");
    store.count_model_tokens(&c, 60, at(2)).await.unwrap();
    assert_eq!(store.take_model_call(&c, &tokens, at(3)).await.unwrap(), Metered::WaitUntil(minute_start(minute + 1)));
    // Tokens of a call that started in an earlier minute do not count in this one.
    store.count_model_tokens(&b, 1_000, at(-5)).await.unwrap();
    assert_eq!(store.take_model_call(&b, &tokens, at(4)).await.unwrap(), Metered::Go);
}

/// A new tenant, known to the store (so its running count is checked even with nothing open).
async fn tenant(store: &dyn Store) -> String {
    let id = format!("conf-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let tenant =
        crate::domain::tenant::Tenant { tenant_id: id.clone(), limits: Limits::default(), created_at: crate::now() };
    store.put_tenant(&tenant).await.expect("put_tenant");
    id
}

fn record(tenant: &str, at: OffsetDateTime) -> TaskRecord {
    let request = TaskRequest::parse(br#"{"prompt":"conformance"}"#, &Default::default()).expect("a valid request");
    TaskRecord::new(request, tenant, at)
}

async fn admitted(store: &dyn Store, tenant: &str, at: OffsetDateTime) -> TaskRecord {
    let task = record(tenant, at);
    let admission = Admission { max_running: 1_000, idempotency: None, slot: Slot::Take };
    assert_eq!(store.admit(&task, admission).await.expect("admit"), Admitted::Created);
    task
}

fn lease(owner: &str, until: OffsetDateTime) -> Lease {
    Lease { owner: owner.into(), until }
}

fn usage(input: u64, cost_nanos: u64) -> Usage {
    Usage { input_tokens: input, output_tokens: 1, cost_nanos, ..Usage::default() }
}

/// What `step` model calls that cost `spent` in all, all by model `m`, add up to.
fn spend(step: u32, spent: Usage) -> Spend {
    Spend { step, usage: spent, usage_by_model: [("m".to_owned(), spent)].into(), model: Some("m".into()) }
}

/// The next seq of the task's log, as the store has it.
async fn next_seq(store: &dyn Store, id: TaskId) -> u32 {
    store.get(id).await.expect("get").expect("the task exists").events + 1
}

/// The progress of model step `step` (its answer cost `spent` in all), with its event.
async fn progress(store: &dyn Store, id: TaskId, step: u32, spent: Usage, now: OffsetDateTime) -> Progress {
    let spend = spend(step, spent);
    let event = TaskEvent::step(id, next_seq(store, id).await, &answer(step, spent), &spend, now);
    Progress { spend, now, event }
}

/// Model step `n`, an answer that cost `spent`.
fn answer(n: u32, spent: Usage) -> ModelStep {
    ModelStep {
        step: n,
        model: "m".into(),
        content: vec![],
        stop_reason: crate::llm::StopReason::EndTurn,
        usage: spent,
        call: None,
    }
}

async fn finish(
    store: &dyn Store,
    id: TaskId,
    status: TaskStatus,
    step: u32,
    spent: Usage,
    now: OffsetDateTime,
) -> Finish {
    let event = TaskEvent::ended(id, next_seq(store, id).await, status, &spend(step, spent), None, now);
    Finish {
        event,
        status,
        result: (status == TaskStatus::Succeeded).then(|| TaskResult::text("done")),
        error: None,
        spend: spend(step, spent),
        now,
        last_step: None,
    }
}

async fn status(store: &dyn Store, id: TaskId) -> TaskStatus {
    store.get(id).await.expect("get").expect("the task exists").status
}

/// The tenant's running count agrees with its open tasks (a repair that is never due shows
/// any difference).
async fn count_is_true(store: &dyn Store, tenant: &str, now: OffsetDateTime) {
    let never = Duration::from_secs(10 * 365 * 86_400);
    let drift = store.repair_counts(never, now).await.expect("repair_counts");
    assert!(drift.iter().all(|r| r.tenant != tenant), "the running count drifted: {drift:?}");
}

async fn claims_run_a_task_once_and_take_over_an_expired_lease(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let first = lease("first", now + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &first, now).await.unwrap() else {
        panic!("a queued task is claimed")
    };
    assert_eq!((claimed.status, claimed.attempts), (TaskStatus::Running, 1));
    assert!(claimed.started_at.is_some(), "a claim records the first start");
    let second = lease("second", now + Duration::from_secs(60));
    assert!(
        matches!(store.claim(task.task_id, &second, now).await.unwrap(), Claim::Leased { .. }),
        "a live lease keeps a second delivery out"
    );
    let later = now + Duration::from_secs(61);
    let Claim::Claimed(taken) = store.claim(task.task_id, &second, later).await.unwrap() else {
        panic!("an expired lease is taken over")
    };
    assert_eq!(taken.attempts, 2);
    assert_eq!(taken.started_at, claimed.started_at, "the first start is kept");
    store
        .finish(&taken, &second, &finish(store, taken.task_id, TaskStatus::Succeeded, 0, Usage::default(), later).await)
        .await
        .unwrap();
    assert_eq!(store.claim(task.task_id, &first, later).await.unwrap(), Claim::Terminal(TaskStatus::Succeeded));
    assert_eq!(store.claim(TaskId::new(), &first, later).await.unwrap(), Claim::NotFound);
}

async fn a_lost_lease_refuses_every_write(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let old = lease("old", now + Duration::from_secs(1));
    store.claim(task.task_id, &old, now).await.unwrap();
    let later = now + Duration::from_secs(2);
    let new = lease("new", later + Duration::from_secs(60));
    let Claim::Claimed(current) = store.claim(task.task_id, &new, later).await.unwrap() else { panic!("taken over") };
    let step = answer(1, usage(1, 1));
    let made = progress(store, task.task_id, 1, usage(1, 1), later).await;
    let conflict = |r: Result<_, StoreError>, what: &str| {
        assert!(matches!(r, Err(StoreError::Conflict)), "{what} with a lost lease must conflict");
    };
    conflict(store.record_model_step(task.task_id, &old, &step, &made).await.map(drop), "recording a step");
    let why = TaskError::new(ErrorCode::Deadline, "out of time");
    conflict(store.release(task.task_id, &old, &why, later).await, "release");
    conflict(
        store
            .finish(&current, &old, &finish(store, current.task_id, TaskStatus::Succeeded, 1, usage(1, 1), later).await)
            .await,
        "finish",
    );
    let ack = store.record_model_step(task.task_id, &new, &step, &made).await.expect("the holder records its step");
    assert_eq!(ack, StepAck::Continue);
    assert_eq!(store.get(task.task_id).await.unwrap().unwrap().spend, made.spend, "progress goes with the step");
    conflict(store.record_model_step(task.task_id, &new, &step, &made).await.map(drop), "recording a step twice");
    store.release(task.task_id, &new, &why, later).await.expect("the holder hands the task back");
    assert_eq!(status(store, task.task_id).await, TaskStatus::Queued);
    let after = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!(after.last_error.map(|e| e.code), Some(ErrorCode::Deadline));
    assert_eq!(store.steps(task.task_id).await.unwrap().len(), 1);
    let Claim::Claimed(again) = store.claim(task.task_id, &old, later).await.unwrap() else { panic!("queued again") };
    assert_eq!(again.spend.step, 1, "a claim tells a run steps were recorded (the worker reads them only then)");
    // A pause gives the task back too, without counting the claim as an attempt.
    let paused = TaskError::new(ErrorCode::ModelRateLimited, "paused");
    conflict(store.pause(task.task_id, &new, &paused, later, later).await, "pause");
    store.pause(task.task_id, &old, &paused, later + Duration::from_secs(30), later).await.expect("the holder pauses");
    let after = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!((after.status, after.attempts), (TaskStatus::Queued, again.attempts - 1));
    let Claim::Claimed(again) = store.claim(task.task_id, &old, later).await.unwrap() else { panic!("queued again") };
    assert_eq!(again.attempts, after.attempts + 1);
    store
        .finish(&again, &old, &finish(store, again.task_id, TaskStatus::Succeeded, 1, usage(1, 1), later).await)
        .await
        .unwrap();
}

async fn cancel_ends_a_queued_task_and_stops_a_running_one(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let queued = admitted(store, &t, now).await;
    assert_eq!(store.cancel(queued.task_id, now).await.unwrap(), Cancelled::Now);
    assert_eq!(status(store, queued.task_id).await, TaskStatus::Cancelled);
    assert_eq!(store.cancel(queued.task_id, now).await.unwrap(), Cancelled::AlreadyFinished(TaskStatus::Cancelled));
    let until = now + Duration::from_secs(60);
    assert_eq!(
        store.claim(queued.task_id, &lease("w", until), now).await.unwrap(),
        Claim::Terminal(TaskStatus::Cancelled)
    );

    let task = admitted(store, &t, now).await;
    let held = lease("w", until);
    let Claim::Claimed(claimed) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    assert_eq!(store.cancel(task.task_id, now).await.unwrap(), Cancelled::Requested);
    let made = progress(store, task.task_id, 1, usage(10, 100), now).await;
    let ack = store.record_model_step(task.task_id, &held, &answer(1, usage(10, 100)), &made).await.unwrap();
    assert_eq!(ack, StepAck::CancelRequested, "the runner learns of the cancel at its next step");
    assert_eq!(store.steps(task.task_id).await.unwrap().len(), 1, "the paid answer is recorded all the same");
    let why = TaskError::new(ErrorCode::Deadline, "out of time");
    assert!(
        matches!(store.release(task.task_id, &held, &why, now).await, Err(StoreError::Conflict)),
        "a task whose cancel was requested is not handed back"
    );
    store
        .finish(&claimed, &held, &finish(store, claimed.task_id, TaskStatus::Cancelled, 1, usage(10, 100), now).await)
        .await
        .unwrap();
    assert_eq!(store.cancel(TaskId::new(), now).await.unwrap(), Cancelled::NotFound);
    count_is_true(store, &t, now).await;
    let day = &store.days(&t, &day_of(now), &day_of(now)).await.unwrap()[0];
    assert_eq!((day.cancelled, day.usage.cost_nanos), (2, 100), "usage spent before a cancel is counted");
}

async fn finishing_counts_usage_and_frees_the_slot(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let held = lease("w", now + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    store
        .finish(
            &claimed,
            &held,
            &finish(store, claimed.task_id, TaskStatus::Succeeded, 2, usage(500, 7_000), now).await,
        )
        .await
        .unwrap();
    let done = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!((done.status, done.spend.step, done.spend.usage.cost_nanos), (TaskStatus::Succeeded, 2, 7_000));
    assert_eq!(done.result.map(|r| r.text), Some("done".into()));
    assert_eq!(store.month_cost(&t, &month_of(now)).await.unwrap(), 7_000);
    let day = &store.days(&t, &day_of(now), &day_of(now)).await.unwrap()[0];
    assert_eq!((day.succeeded, day.usage.input_tokens), (1, 500));
    assert!(
        matches!(
            store
                .finish(
                    &claimed,
                    &held,
                    &finish(store, claimed.task_id, TaskStatus::Failed, 2, usage(500, 7_000), now).await
                )
                .await,
            Err(StoreError::Conflict)
        ),
        "a task ends once"
    );
    assert_eq!(store.month_cost(&t, &month_of(now)).await.unwrap(), 7_000);
}

async fn an_unqueued_task_fails_and_frees_its_key(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = record(&t, now);
    let idem = Idempotency { key: "k1", request_hash: "h1" };
    let admission = Admission { max_running: 10, idempotency: Some(idem), slot: Slot::Take };
    assert_eq!(store.admit(&task, admission).await.unwrap(), Admitted::Created);
    let error = TaskError::new(ErrorCode::EnqueueFailed, "queue down");
    store.fail_unqueued(&task, &error, Some("k1"), now).await.unwrap();
    let failed = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.error.map(|e| e.code)), (TaskStatus::Failed, Some(ErrorCode::EnqueueFailed)));
    let retry = record(&t, now);
    assert_eq!(store.admit(&retry, admission).await.unwrap(), Admitted::Created, "the key is free for the retry");
    let error = TaskError::new(ErrorCode::EnqueueFailed, "queue down");
    store.fail_unqueued(&retry, &error, Some("k1"), now).await.unwrap();
}

async fn only_tasks_no_live_lease_holds_are_failed_as_abandoned(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let held = lease("w", now + Duration::from_secs(60));
    store.claim(task.task_id, &held, now).await.unwrap();
    let error = TaskError::new(ErrorCode::DeliveryFailed, "set aside");
    assert!(!store.fail_abandoned(task.task_id, &error, now).await.unwrap(), "a live run is left alone");
    let later = now + Duration::from_secs(61);
    assert!(store.fail_abandoned(task.task_id, &error, later).await.unwrap());
    assert_eq!(status(store, task.task_id).await, TaskStatus::Failed);
    assert!(!store.fail_abandoned(task.task_id, &error, later).await.unwrap(), "an ended task stays as it ended");
    let queued = admitted(store, &t, now).await;
    assert!(store.fail_abandoned(queued.task_id, &error, now).await.unwrap(), "a queued task has no live lease");
    count_is_true(store, &t, now).await;
}

async fn usage_is_counted_once_through_failure_redrive_and_success(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let first = lease("first", now + Duration::from_secs(1));
    store.claim(task.task_id, &first, now).await.unwrap();
    let made = progress(store, task.task_id, 1, usage(100, 1_000), now).await;
    store.record_model_step(task.task_id, &first, &answer(1, usage(100, 1_000)), &made).await.unwrap();
    // Its worker died; its message was dead-lettered.
    let later = now + Duration::from_secs(2);
    let error = TaskError::new(ErrorCode::DeliveryFailed, "set aside");
    assert!(store.fail_abandoned(task.task_id, &error, later).await.unwrap());
    assert_eq!(store.month_cost(&t, &month_of(now)).await.unwrap(), 1_000, "counted when it failed");
    assert!(store.requeue(task.task_id, later).await.unwrap(), "a failed task is queued again");
    assert!(!store.requeue(task.task_id, later).await.unwrap(), "only a failed one");
    let second = lease("second", later + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &second, later).await.unwrap() else { panic!("claimed") };
    store
        .finish(
            &claimed,
            &second,
            &finish(store, claimed.task_id, TaskStatus::Succeeded, 2, usage(250, 2_500), later).await,
        )
        .await
        .unwrap();
    assert_eq!(store.month_cost(&t, &month_of(now)).await.unwrap(), 2_500, "each nano-dollar once");
    let days = store.days(&t, &day_of(now), &day_of(later)).await.unwrap();
    let (succeeded, failed, input, cost) = days.iter().fold((0, 0, 0, 0), |a, d| {
        (a.0 + d.succeeded, a.1 + d.failed, a.2 + d.usage.input_tokens, a.3 + d.usage.cost_nanos)
    });
    assert_eq!((succeeded, failed), (1, 0), "the redriven task no longer counts as failed");
    assert_eq!((input, cost), (250, 2_500), "each token once");
    let by_model: u64 = days.iter().filter_map(|d| d.cost_by_model.get("m")).sum();
    assert_eq!(by_model, 2_500, "each model's nano-dollar once: {days:?}");
    count_is_true(store, &t, now).await;
}

async fn admission_keeps_the_cap_and_the_idempotency_key(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let capped = Admission { max_running: 1, idempotency: None, slot: Slot::Take };
    let first = record(&t, now);
    assert_eq!(store.admit(&first, capped).await.unwrap(), Admitted::Created);
    assert_eq!(store.admit(&record(&t, now), capped).await.unwrap(), Admitted::ConcurrencyLimited { max: 1 });
    assert_eq!(store.cancel(first.task_id, now).await.unwrap(), Cancelled::Now);
    let keyed = Admission {
        max_running: 1,
        idempotency: Some(Idempotency { key: "order-1", request_hash: "same" }),
        slot: Slot::Take,
    };
    let original = record(&t, now);
    assert_eq!(store.admit(&original, keyed).await.unwrap(), Admitted::Created, "a slot freed by the cancel");
    assert_eq!(store.admit(&record(&t, now), keyed).await.unwrap(), Admitted::Replayed(original.task_id));
    let other = Admission { idempotency: Some(Idempotency { key: "order-1", request_hash: "other" }), ..keyed };
    assert_eq!(store.admit(&record(&t, now), other).await.unwrap(), Admitted::KeyReused);
    let roomy = Admission { max_running: 5, ..keyed };
    assert_eq!(store.admit(&record(&t, now), roomy).await.unwrap(), Admitted::Replayed(original.task_id));
    count_is_true(store, &t, now).await;
    assert_eq!(store.cancel(original.task_id, now).await.unwrap(), Cancelled::Now);
}

async fn concurrent_admissions_of_one_tenant_all_land_and_count_once(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let open = Admission { max_running: 100, idempotency: None, slot: Slot::Take };
    let tasks: Vec<TaskRecord> = (0..20).map(|_| record(&t, now)).collect();
    let admitted = futures::future::join_all(tasks.iter().map(|task| store.admit(task, open))).await;
    assert!(admitted.iter().all(|a| matches!(a, Ok(Admitted::Created))), "{admitted:?}");
    count_is_true(store, &t, now).await;
    for task in &tasks {
        assert_eq!(store.cancel(task.task_id, now).await.unwrap(), Cancelled::Now);
    }
    count_is_true(store, &t, now).await;
}

async fn open_tasks_fall_due_after_their_grace_and_ended_ones_never(store: &dyn Store, after: Duration) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let due = |at: OffsetDateTime| async move { store.due(at, 10_000).await.unwrap().contains(&task.task_id) };
    assert!(!due(now + after / 2).await, "within its grace");
    assert!(due(now + after + Duration::from_secs(1)).await, "past its grace");
    let seen = store.get(task.task_id).await.unwrap().unwrap();
    let next = now + after * 3;
    assert!(store.reschedule(&seen, next, true, now).await.unwrap());
    assert!(!due(now + after * 2).await, "rescheduled");
    assert!(due(next + Duration::from_secs(1)).await);
    assert_eq!(store.get(task.task_id).await.unwrap().unwrap().resends, 1);
    // Claimed: the claim leaves the due time (no index write); the reconciler puts it off.
    let until = now + after * 4;
    let Claim::Claimed(claimed) = store.claim(task.task_id, &lease("w", until), now).await.unwrap() else {
        panic!("claimed")
    };
    assert!(due(next + Duration::from_secs(1)).await, "a claim does not move the due time");
    assert!(!store.reschedule(&seen, next, true, now).await.unwrap(), "a stale view reschedules nothing");
    assert!(!store.put_off_while_leased(task.task_id, until).await.unwrap(), "a lease that has ended");
    assert!(store.put_off_while_leased(task.task_id, now).await.unwrap());
    assert!(!due(until).await);
    assert!(due(until + after + Duration::from_secs(1)).await, "a grace period past its lease");
    assert_eq!(store.get(task.task_id).await.unwrap().unwrap().resends, 1, "put off, not resent");
    store
        .finish(
            &claimed,
            &lease("w", until),
            &finish(store, claimed.task_id, TaskStatus::Succeeded, 0, Usage::default(), now).await,
        )
        .await
        .unwrap();
    assert!(!due(until + after * 10).await, "an ended task is never due");
    let repairs = store.repair_counts(Duration::ZERO, now + after * 10).await.unwrap();
    assert!(repairs.iter().all(|r| r.tenant != t), "a tenant whose count is right needs no repair: {repairs:?}");
}

async fn the_rate_limit_allows_its_burst_then_refuses(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let limits = Limits { rate_per_sec: 1.0, burst: 3, ..Limits::default() };
    for left in [2, 1, 0] {
        let d = store.take(&t, &limits, now).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, left);
    }
    let refused = store.take(&t, &limits, now).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1));
    assert!(store.take(&t, &limits, now + Duration::from_millis(1001)).await.unwrap().allowed, "a second refills one");
}

async fn a_submits_request_and_slot_are_taken_together_and_a_slot_unused_is_given_back(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let limits = Limits { rate_per_sec: 1.0, burst: 5, max_running: 1, ..Limits::default() };
    let entry = store.take_with_slot(&t, &limits, now).await.unwrap();
    assert_eq!((entry.rate.allowed, entry.rate.remaining, entry.slot), (true, 4, Slot::Taken));
    let taken = Admission { max_running: 1, idempotency: None, slot: entry.slot };
    let task = record(&t, now);
    assert_eq!(store.admit(&task, taken).await.unwrap(), Admitted::Created);
    count_is_true(store, &t, now).await;

    let at_cap = store.take_with_slot(&t, &limits, now).await.unwrap();
    assert_eq!((at_cap.rate.allowed, at_cap.rate.remaining, at_cap.slot), (true, 3, Slot::Full), "the request alone");
    let full = Admission { slot: at_cap.slot, ..taken };
    assert_eq!(store.admit(&record(&t, now), full).await.unwrap(), Admitted::ConcurrencyLimited { max: 1 });
    count_is_true(store, &t, now).await;

    assert_eq!(store.cancel(task.task_id, now).await.unwrap(), Cancelled::Now);
    let unused = store.take_with_slot(&t, &limits, now).await.unwrap();
    assert_eq!((unused.rate.allowed, unused.slot), (true, Slot::Taken), "the cancel freed the slot");
    store.give_slot_back(&t).await;
    count_is_true(store, &t, now).await;

    // A replayed key's request took a slot with its request: the replay gives it back.
    let keyed = Admission { idempotency: Some(Idempotency { key: "entry-1", request_hash: "same" }), ..taken };
    let entry = store.take_with_slot(&t, &limits, now).await.unwrap();
    let original = record(&t, now);
    assert_eq!(store.admit(&original, Admission { slot: entry.slot, ..keyed }).await.unwrap(), Admitted::Created);
    assert_eq!(store.cancel(original.task_id, now).await.unwrap(), Cancelled::Now);
    let entry = store.take_with_slot(&t, &limits, now).await.unwrap();
    assert_eq!((entry.rate.remaining, entry.slot), (0, Slot::Taken));
    let again = store.admit(&record(&t, now), Admission { slot: entry.slot, ..keyed }).await.unwrap();
    assert_eq!(again, Admitted::Replayed(original.task_id));
    count_is_true(store, &t, now).await;

    let refused = store.take_with_slot(&t, &limits, now).await.unwrap();
    assert_eq!((refused.rate.allowed, refused.slot), (false, Slot::Take), "over the rate, no slot either");
    count_is_true(store, &t, now).await;
    let later = store.take_with_slot(&t, &limits, now + Duration::from_millis(1001)).await.unwrap();
    assert_eq!((later.rate.allowed, later.slot), (true, Slot::Taken), "a second refills one");
    store.give_slot_back(&t).await;
    count_is_true(store, &t, now).await;
}

async fn kinds(store: &dyn Store, id: TaskId, after: u32) -> Vec<(u32, EventKind)> {
    store.events(id, after, 100).await.expect("events").events.iter().map(|e| (e.seq, e.kind)).collect()
}

async fn a_tasks_log_numbers_every_change_in_order(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let held = lease("w", now + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    assert_eq!(claimed.events, task.events + 1, "the claim reserves its started event's seq");
    let started = TaskEvent::started(&claimed, claimed.events, now);
    store.record_started(task.task_id, &started).await.unwrap();
    assert!(
        matches!(store.record_started(task.task_id, &started).await, Err(StoreError::Conflict)),
        "a seq is written once"
    );
    let made = progress(store, task.task_id, 1, usage(10, 100), now).await;
    store.record_model_step(task.task_id, &held, &answer(1, usage(10, 100)), &made).await.unwrap();
    store
        .finish(&claimed, &held, &finish(store, task.task_id, TaskStatus::Succeeded, 1, usage(10, 100), now).await)
        .await
        .unwrap();
    use EventKind as E;
    assert_eq!(kinds(store, task.task_id, 0).await, [(1, E::Queued), (2, E::Started), (3, E::Step), (4, E::Succeeded)]);
    assert_eq!(kinds(store, task.task_id, 2).await, [(3, E::Step), (4, E::Succeeded)], "read after a seq");
    let page = store.events(task.task_id, 0, 2).await.unwrap();
    assert_eq!((page.events.len(), page.next), (2, Some(2)));
    assert_eq!(store.events(task.task_id, 2, 2).await.unwrap().next, None);
    let ids: std::collections::HashSet<String> =
        store.events(task.task_id, 0, 100).await.unwrap().events.into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    let first = store.events(task.task_id, 0, 1).await.unwrap();
    assert_eq!(first.events, [TaskEvent::accepted(&task)], "the first event is the task's, whoever reads it");
    assert_eq!(first.next, Some(1));
    assert!(store.events(TaskId::new(), 0, 10).await.unwrap().events.is_empty(), "an unknown task has no log");

    // The transitions other functions make write to the log too.
    let cancelled = admitted(store, &t, now).await;
    store.cancel(cancelled.task_id, now).await.unwrap();
    assert_eq!(kinds(store, cancelled.task_id, 0).await, [(1, E::Queued), (2, E::Cancelled)]);
    let abandoned = admitted(store, &t, now).await;
    let error = TaskError::new(ErrorCode::DeliveryFailed, "set aside");
    assert!(store.fail_abandoned(abandoned.task_id, &error, now).await.unwrap());
    assert!(store.requeue(abandoned.task_id, now).await.unwrap());
    assert_eq!(kinds(store, abandoned.task_id, 0).await, [(1, E::Queued), (2, E::Failed), (3, E::Queued)]);
    assert_eq!(store.cancel(abandoned.task_id, now).await.unwrap(), Cancelled::Now);
    assert_eq!(kinds(store, abandoned.task_id, 3).await, [(4, E::Cancelled)]);
}

async fn endpoints_are_the_tenants_own_and_attempts_read_in_order(store: &dyn Store) {
    use crate::domain::webhooks::{Attempt, Endpoint, Target};
    let (mine, theirs) = (tenant(store).await, tenant(store).await);
    let now = crate::now();
    let first = Endpoint::new(&mine, "https://a.example/hook".into(), vec![], now);
    let mut second =
        Endpoint::new(&mine, "https://b.example/hook".into(), vec![EventKind::Succeeded], now + Duration::from_secs(1));
    store.put_endpoint(&first).await.unwrap();
    store.put_endpoint(&second).await.unwrap();
    let ids: Vec<String> = store.endpoints(&mine).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, [first.id.clone(), second.id.clone()], "a tenant's endpoints, oldest first");
    assert!(store.endpoints(&theirs).await.unwrap().is_empty(), "another tenant sees none");
    assert!(store.endpoint(&theirs, &first.id).await.unwrap().is_none(), "nor reads one by id");

    second.rotate(now);
    store.put_endpoint(&second).await.unwrap();
    assert_eq!(store.endpoint(&mine, &second.id).await.unwrap().as_ref(), Some(&second), "a put replaces");
    assert!(!store.delete_endpoint(&theirs, &first.id).await.unwrap(), "another tenant cannot delete it");
    assert!(store.delete_endpoint(&mine, &first.id).await.unwrap());
    assert!(!store.delete_endpoint(&mine, &first.id).await.unwrap(), "a second delete finds nothing");
    assert_eq!(store.endpoints(&mine).await.unwrap().len(), 1);

    let task = TaskId::new();
    let attempt = |n: u32, seq: u32, target: Target| Attempt {
        id: crate::domain::webhooks::new_id("att"),
        attempt: n,
        event_id: format!("evt_{seq}"),
        seq,
        kind: EventKind::Step,
        target,
        url: "https://a.example/hook".into(),
        time: now,
        status: Some(500),
        error: None,
        latency_ms: 3,
        delivered: false,
        next_attempt_at: None,
        dead_lettered: false,
    };
    let made = [
        attempt(1, 2, Target::Task),
        attempt(1, 1, Target::Endpoint { id: second.id.clone() }),
        attempt(2, 1, Target::Endpoint { id: second.id.clone() }),
    ];
    for a in &made {
        store.record_attempt(task, a).await.unwrap();
    }
    let page = store.attempts(task, None, 2).await.unwrap();
    assert_eq!(page.attempts, [made[1].clone(), made[2].clone()], "by event, then target, then time");
    let rest = store.attempts(task, page.next.as_deref(), 2).await.unwrap();
    assert_eq!((rest.attempts, rest.next), (vec![made[0].clone()], None));
}

/// Claims `task`, records one model answer and stops it waiting for a decision on one call.
async fn waiting(store: &dyn Store, task: &TaskRecord, now: OffsetDateTime) -> (TaskRecord, PendingCall) {
    let held = lease("w", now + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    store.record_started(task.task_id, &TaskEvent::started(&claimed, claimed.events, now)).await.unwrap();
    let made = progress(store, task.task_id, 1, usage(10, 100), now).await;
    store.record_model_step(task.task_id, &held, &answer(1, usage(10, 100)), &made).await.unwrap();
    let call = PendingCall {
        step: 1,
        tool_use_id: "toolu_1".into(),
        name: "http_get".into(),
        input: serde_json::json!({"url": "https://example.com", "n": 1e300}),
    };
    let until = now + Duration::from_secs(600);
    let event =
        TaskEvent::waiting(task.task_id, next_seq(store, task.task_id).await, std::slice::from_ref(&call), until, now);
    store.wait(&claimed, &held, &Wait { pending: vec![call.clone()], until, event, now }).await.unwrap();
    let seen = store.get(task.task_id).await.unwrap().unwrap();
    (seen, call)
}

async fn a_waiting_task_holds_no_slot_and_resumes_once_with_its_decisions(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let (seen, call) = waiting(store, &task, now).await;
    assert_eq!(seen.status, TaskStatus::WaitingForInput);
    assert_eq!(
        seen.pending.as_deref(),
        Some(std::slice::from_ref(&call)),
        "the pending calls are kept as the model sent them"
    );
    assert_eq!(seen.waiting_until, Some(now + Duration::from_secs(600)));
    count_is_true(store, &t, now).await;
    assert!(
        matches!(
            store.claim(task.task_id, &lease("x", now + Duration::from_secs(60)), now).await.unwrap(),
            Claim::Leased { .. }
        ),
        "a waiting task is not claimed by a stray delivery"
    );
    let later = now + Duration::from_secs(601);
    assert!(!store.due(now, 10_000).await.unwrap().contains(&task.task_id), "not due before its timeout");
    assert!(store.due(later, 10_000).await.unwrap().contains(&task.task_id), "due once its wait times out");

    let decision = Decision {
        step: 1,
        tool_use_id: call.tool_use_id.clone(),
        name: call.name.clone(),
        action: Action::Reject,
        message: Some("not that one".into()),
        input: None,
        by: "key_1".into(),
        at: now,
    };
    let resumed = TaskEvent::resumed(task.task_id, seen.events + 1, std::slice::from_ref(&decision), now);
    store.resume(&seen, std::slice::from_ref(&decision), &resumed, now).await.unwrap();
    assert!(
        matches!(store.resume(&seen, std::slice::from_ref(&decision), &resumed, now).await, Err(StoreError::Conflict)),
        "a decision is taken once"
    );
    let queued = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!((queued.status, queued.pending.is_none(), queued.attempts), (TaskStatus::Queued, true, 0));
    count_is_true(store, &t, now).await;
    let steps = store.steps(task.task_id).await.unwrap();
    assert!(matches!(&steps[..], [Step::Model(_), Step::Decision(d)] if *d == decision), "{steps:?}");
    assert_eq!(
        kinds(store, task.task_id, 0).await,
        [
            (1, EventKind::Queued),
            (2, EventKind::Started),
            (3, EventKind::Step),
            (4, EventKind::WaitingForInput),
            (5, EventKind::Resumed)
        ]
    );

    let other = admitted(store, &t, now).await;
    waiting(store, &other, now).await;
    assert_eq!(store.cancel(other.task_id, now).await.unwrap(), Cancelled::Now, "a waiting task is cancelled at once");
    count_is_true(store, &t, now).await;
    let abandoned = admitted(store, &t, now).await;
    waiting(store, &abandoned, now).await;
    let limit = TaskError::new(ErrorCode::RunTooLong, "too long");
    assert!(store.fail_abandoned(abandoned.task_id, &limit, now).await.unwrap());
    count_is_true(store, &t, now).await;
}

async fn a_fork_is_listed_on_its_parent_and_inherits_each_step_once(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let parent = admitted(store, &t, now).await;
    let fork = admitted(store, &t, now).await;
    let listed = crate::domain::fork::ForkRef { task_id: fork.task_id, from_step: 1, created_at: now };
    store.note_fork(parent.task_id, &listed).await.unwrap();
    assert_eq!(store.get(parent.task_id).await.unwrap().unwrap().forks, [listed]);
    let first = Step::Model(answer(1, usage(10, 100)));
    store.inherit(fork.task_id, std::slice::from_ref(&first)).await.unwrap();
    let mut changed = answer(1, usage(99, 999));
    changed.model = "other".into();
    store.inherit(fork.task_id, &[Step::Model(changed), Step::Model(answer(2, usage(1, 1)))]).await.unwrap();
    let steps = store.steps(fork.task_id).await.unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0], first, "a step inherited before is kept");
    assert!(store.get_with_prompt(fork.task_id).await.unwrap().is_some_and(|f| f.prompt == "conformance"));
}

/// Steps inherited by a fork, answers recorded with their events and tool results recorded
/// apart read back as one history, in step order, whole and a page at a time.
async fn steps_read_back_in_order_whole_and_page_by_page_wherever_they_are_kept(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let tool = |n: u32| crate::domain::steps::ToolStep {
        step: n,
        tool_use_id: format!("toolu_{n}"),
        name: "calculator".into(),
        content: n.to_string(),
        is_error: false,
        duration_ms: Some(1),
    };
    let inherited = [Step::Model(answer(1, usage(1, 1))), Step::Tool(tool(1))];
    store.inherit(task.task_id, &inherited).await.unwrap();
    let held = lease("w", now + Duration::from_secs(60));
    let Claim::Claimed(_) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    let mut expected = inherited.to_vec();
    for n in 2..=4 {
        let step = answer(n, usage(n as u64, n as u64));
        let made = progress(store, task.task_id, n, usage(n as u64, n as u64), now).await;
        assert_eq!(store.record_model_step(task.task_id, &held, &step, &made).await.unwrap(), StepAck::Continue);
        expected.push(Step::Model(step));
        if n < 4 {
            store.record_tool_step(task.task_id, &tool(n)).await.unwrap();
            expected.push(Step::Tool(tool(n)));
        }
    }
    assert_eq!(store.steps(task.task_id).await.unwrap(), expected, "the whole history, in order");
    let (mut paged, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = store.step_page(task.task_id, after.as_deref(), 2).await.unwrap();
        assert!(!page.steps.is_empty() && page.steps.len() <= 2, "a page holds one to `limit` steps");
        paged.extend(page.steps);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, expected, "page by page, the same history, each step once");
    let step_events = kinds(store, task.task_id, 0).await.into_iter().filter(|(_, k)| *k == EventKind::Step).count();
    assert_eq!(step_events, 3, "each recorded answer is announced once in the log");
}

/// A finish that carries the run's last answer records it, its event and the end as one
/// write; one that cannot write all of it writes nothing.
async fn a_runs_last_answer_is_recorded_with_its_end_or_not_at_all(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let task = admitted(store, &t, now).await;
    let held = lease("w", now + Duration::from_secs(60));
    let Claim::Claimed(claimed) = store.claim(task.task_id, &held, now).await.unwrap() else { panic!("claimed") };
    let first = answer(1, usage(10, 100));
    let made = progress(store, task.task_id, 1, usage(10, 100), now).await;
    store.record_model_step(task.task_id, &held, &first, &made).await.unwrap();
    let last = answer(2, usage(30, 300));
    let last_event = TaskEvent::step(task.task_id, made.event.seq + 1, &last, &spend(2, usage(30, 300)), now);
    let mut end = finish(store, task.task_id, TaskStatus::Succeeded, 2, usage(30, 300), now).await;
    end.event = TaskEvent::ended(task.task_id, last_event.seq + 1, TaskStatus::Succeeded, &end.spend, None, now);
    // The last answer under the first one's event: that seq is written, so nothing lands.
    let taken = TaskEvent::step(task.task_id, made.event.seq, &last, &spend(2, usage(30, 300)), now);
    let twice = Finish { last_step: Some((last.clone(), taken)), ..end.clone() };
    assert!(matches!(store.finish(&claimed, &held, &twice).await, Err(StoreError::Conflict)), "a seq is written once");
    assert_eq!(status(store, task.task_id).await, TaskStatus::Running, "nothing of a refused finish is written");
    assert_eq!(kinds(store, task.task_id, 0).await.len(), 2, "nor any of its events");

    store.finish(&claimed, &held, &Finish { last_step: Some((last.clone(), last_event)), ..end }).await.unwrap();
    assert_eq!(store.steps(task.task_id).await.unwrap(), [Step::Model(first), Step::Model(last)]);
    let log: Vec<EventKind> = kinds(store, task.task_id, 0).await.into_iter().map(|(_, kind)| kind).collect();
    assert_eq!(log, [EventKind::Queued, EventKind::Step, EventKind::Step, EventKind::Succeeded]);
    // Written together, read apart: from any seq, one page at a time, each once.
    let (answered, ended) = (made.event.seq + 1, made.event.seq + 2);
    assert_eq!(kinds(store, task.task_id, answered).await, [(ended, EventKind::Succeeded)]);
    assert_eq!(kinds(store, task.task_id, ended).await, []);
    let page = store.events(task.task_id, made.event.seq, 1).await.unwrap();
    assert_eq!((page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), page.next), (vec![answered], Some(answered)));
    let page = store.events(task.task_id, answered, 1).await.unwrap();
    assert_eq!((page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), page.next), (vec![ended], None));
    let ended = store.get(task.task_id).await.unwrap().unwrap();
    assert_eq!((ended.status, ended.spend.step, ended.spend.usage.cost_nanos), (TaskStatus::Succeeded, 2, 300));
    count_is_true(store, &t, now).await;
}

async fn a_batch_is_admitted_under_the_cap_and_kept_for_its_tenant(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let before = admitted(store, &t, now).await;
    let tasks: Vec<TaskRecord> = (0..5).map(|_| record(&t, now)).collect();
    assert_eq!(store.admit_many(&tasks, 4).await.unwrap().admitted, 3, "one slot was taken before");
    count_is_true(store, &t, now).await;
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).chain([before.task_id]).collect();
    let found = store.tasks(&ids).await.unwrap();
    assert_eq!(found.len(), 4, "the admitted three and the one before");
    let statuses = store.statuses(&ids).await.unwrap();
    assert_eq!(statuses.len(), 4);
    assert!(statuses.iter().all(|(_, s)| *s == TaskStatus::Queued));
    assert_eq!(kinds(store, tasks[0].task_id, 0).await, [(1, EventKind::Queued)]);

    let limits = Limits { rate_per_sec: 1.0, burst: 5, ..Limits::default() };
    assert_eq!(store.take_up_to(&t, &limits, 3, now).await.unwrap(), 3);
    assert_eq!(store.take_up_to(&t, &limits, 3, now).await.unwrap(), 2, "what is left of the burst");
    assert_eq!(store.take_up_to(&t, &limits, 3, now).await.unwrap(), 0);

    let key = Idempotency { key: "k", request_hash: "h1" };
    assert_eq!(store.reserve_batch_key(&t, key, "bat_1", now).await.unwrap(), BatchKey::Reserved);
    assert_eq!(store.reserve_batch_key(&t, key, "bat_2", now).await.unwrap(), BatchKey::Replayed("bat_1".into()));
    let other = Idempotency { key: "k", request_hash: "h2" };
    assert_eq!(store.reserve_batch_key(&t, other, "bat_3", now).await.unwrap(), BatchKey::KeyReused);

    let batch = crate::domain::batch::BatchRecord {
        batch_id: crate::domain::batch::new_batch_id(),
        tenant_id: t.clone(),
        created_at: now,
        items: vec![crate::domain::batch::BatchItem {
            custom_id: Some("a".into()),
            task_id: Some(tasks[0].task_id),
            error: None,
        }],
    };
    store.put_batch(&batch).await.unwrap();
    assert_eq!(store.batch(&t, &batch.batch_id).await.unwrap(), Some(batch.clone()));
    assert_eq!(store.batch("someone-else", &batch.batch_id).await.unwrap(), None, "a batch is its tenant's");
}

async fn held_tasks_take_no_slot_and_start_in_line_as_slots_free(store: &dyn Store) {
    let (t, now) = (tenant(store).await, crate::now());
    let limits = Limits { max_running: 1, ..Limits::default() };
    store.put_tenant(&crate::domain::tenant::Tenant { tenant_id: t.clone(), limits, created_at: now }).await.unwrap();
    let first = record(&t, now);
    assert_eq!(
        store.admit(&first, Admission { max_running: 1, idempotency: None, slot: Slot::Take }).await.unwrap(),
        Admitted::Created
    );
    let (a, b) = (record(&t, now + Duration::from_millis(1)), record(&t, now + Duration::from_millis(2)));
    for held in [&a, &b] {
        assert_eq!(
            store.hold(held, Admission { max_running: 1, idempotency: None, slot: Slot::Take }).await.unwrap(),
            Admitted::Created
        );
    }
    count_is_true(store, &t, now).await;
    assert!(store.get(a.task_id).await.unwrap().unwrap().held);
    assert!(store.release_held(&t, false, now).await.unwrap().is_empty(), "no slot is free");
    assert!(
        matches!(
            store.claim(a.task_id, &lease("w", now + Duration::from_secs(60)), now).await.unwrap(),
            Claim::Leased { .. }
        ),
        "a held task is not started by a stray delivery"
    );
    assert_eq!(store.cancel(first.task_id, now).await.unwrap(), Cancelled::Now);
    assert!(
        store.release_held(&t, true, now).await.unwrap().is_empty(),
        "a tenant that rejects over its cap is skipped at a task's end"
    );
    let started = store.release_held(&t, false, now).await.unwrap();
    assert_eq!(started.iter().map(|t| t.task_id).collect::<Vec<_>>(), [a.task_id], "the oldest in line, one slot");
    assert!(!store.get(a.task_id).await.unwrap().unwrap().held);
    count_is_true(store, &t, now).await;
    assert_eq!(store.cancel(b.task_id, now).await.unwrap(), Cancelled::Now, "a held task is cancelled at once");
    count_is_true(store, &t, now).await;
    assert!(store.tenants().await.unwrap().contains(&t));
}

async fn schedules_are_the_tenants_own_fall_due_once_and_move_on_one_writer_at_a_time(store: &dyn Store) {
    use crate::domain::schedule::{ScheduleRun, ScheduleState, parse_schedule};
    let (t, other) = (tenant(store).await, tenant(store).await);
    let created = crate::now() - time::Duration::minutes(10);
    let body = br#"{"schedule": "rate(1 minute)", "task": {"prompt": "tick"}}"#;
    let new = |tenant: &str| parse_schedule(body, &Default::default(), tenant, created).expect("a valid schedule");
    let (a, b) = (new(&t), new(&t));
    assert!(store.create_schedule(&a, 2).await.expect("create"));
    assert!(store.create_schedule(&b, 2).await.expect("create"));
    assert!(!store.create_schedule(&new(&t), 2).await.expect("create"), "a tenant's schedules are limited");
    let mut ids: Vec<_> = store.schedules(&t).await.expect("list").into_iter().map(|s| s.schedule_id).collect();
    ids.sort();
    let mut both = [a.schedule_id.clone(), b.schedule_id.clone()];
    both.sort();
    assert_eq!(ids, both, "a tenant's schedules are listed");
    assert!(
        store.schedule(&other, &a.schedule_id).await.expect("get").is_none(),
        "another tenant's schedule is not found"
    );

    let now = crate::now();
    let due = store.due_schedules(now, 1_000).await.expect("due");
    assert!(due.contains(&(t.clone(), a.schedule_id.clone())), "an active schedule past its tick is due");
    let mut read = store.schedule(&t, &a.schedule_id).await.expect("get").expect("stored");
    assert_eq!(read.version, 1);
    let stale = read.clone();
    let tick = read.next_run_at.expect("a next tick");
    read.record(ScheduleRun { at: tick, task_id: Some(TaskId::new()), skipped: None }, now);
    store.update_schedule(&read).await.expect("the first writer moves it on");
    assert!(
        matches!(store.update_schedule(&stale).await, Err(StoreError::Conflict)),
        "a second writer of one version loses"
    );
    let due = store.due_schedules(now, 1_000).await.expect("due");
    assert!(!due.iter().any(|(_, id)| *id == a.schedule_id), "a schedule moved past now is not due");

    let mut paused = store.schedule(&t, &b.schedule_id).await.expect("get").expect("stored");
    paused.set_state(ScheduleState::Paused, now);
    store.update_schedule(&paused).await.expect("pause");
    let due = store.due_schedules(now + time::Duration::hours(1), 1_000).await.expect("due");
    assert!(!due.iter().any(|(_, id)| *id == b.schedule_id), "a paused schedule is never due");
    assert!(!store.delete_schedule(&other, &b.schedule_id).await.expect("delete"), "another tenant cannot delete it");
    assert!(store.delete_schedule(&t, &b.schedule_id).await.expect("delete"));
    assert!(store.schedule(&t, &b.schedule_id).await.expect("get").is_none());
    assert!(
        matches!(store.update_schedule(&paused).await, Err(StoreError::Conflict)),
        "a deleted schedule is not written back"
    );
    store.delete_schedule(&t, &a.schedule_id).await.expect("delete");
}
