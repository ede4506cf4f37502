//! The fault suite: drives a running local stack (started by `scripts/faults.sh` with
//! agentq-local's own Lambda service, whose processes can be killed) through the failures
//! Celery-style stacks lose tasks to, and checks every task's outcome against what the fake
//! model saw and what the table recorded:
//!
//! - **lost**: a task accepted that is not terminal at the end;
//! - **duplicate runs**: a task with more recorded model calls than a clean run makes;
//! - **double-counted cost**: a task whose cost is not exactly the sum of its recorded steps';
//! - **double-counted usage**: the tenant's usage counters (`GET /v1/usage`) moved by other
//!   than the scenario's tasks' own usage.
//!
//! Every run has a tenant of its own, so its counters hold nothing but its scenarios' tasks.
//! The report is Markdown (RELIABILITY.md); the run fails if any of these is not zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::fake_model::digest;

/// Where the stack is.
pub struct Harness {
    pub http: reqwest::Client,
    pub url: String,
    pub key: String,
    pub model_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub store: agentq::store::DynamoStore,
    pub queues: agentq::queue::QueueUrls,
    pub dlqs: Vec<String>,
    /// The run's own tenant, whose key is `key`.
    pub tenant: String,
}

/// One scenario's figures.
#[derive(Debug, Default)]
pub struct Report {
    pub name: String,
    pub setup: String,
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: BTreeMap<String, usize>,
    pub lost: usize,
    pub duplicate_runs: usize,
    pub double_counted: usize,
    /// Nano-dollars and tokens the tenant's counters moved beyond (or short of) the tasks'.
    pub usage_drift: u64,
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicate_runs == 0 && self.double_counted == 0 && self.usage_drift == 0
    }
}

impl Harness {
    async fn control(&self, knobs: Value) -> anyhow::Result<()> {
        self.http.post(format!("{}/control", self.model_url)).json(&knobs).send().await?.error_for_status()?;
        Ok(())
    }

    async fn model_stats(&self) -> anyhow::Result<BTreeMap<String, crate::fake_model::PromptStats>> {
        Ok(self.http.get(format!("{}/stats", self.model_url)).send().await?.json().await?)
    }

    /// The tenant's usage counters, all time (as far as `/v1/usage` reaches): nano-dollars and
    /// input tokens.
    async fn counted(&self) -> anyhow::Result<(u64, u64)> {
        let report = self.get("/v1/usage?from=2026-01-01").await?;
        let usage = &report["total"]["usage"];
        let nanos = (usage["cost_usd"].as_f64().unwrap_or(0.0) * 1e9).round() as u64;
        Ok((nanos, usage["input_tokens"].as_u64().unwrap_or(0)))
    }

    async fn submit(&self, prompt: &str) -> anyhow::Result<String> {
        self.submit_with(&json!({"prompt": prompt})).await
    }

    async fn submit_with(&self, body: &Value) -> anyhow::Result<String> {
        let r = self.http.post(format!("{}/v1/tasks", self.url)).bearer_auth(&self.key).json(body).send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if status != 202 {
            bail!("submit answered {status}: {body}");
        }
        body["task_id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no task id in {body}"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.key).send().await?.json().await?)
    }

    /// Polls until every task is terminal or `patience` runs out; returns the tasks.
    async fn wait(&self, ids: &[String], patience: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + patience;
        loop {
            let mut tasks = Vec::new();
            for id in ids {
                tasks.push(self.get(&format!("/v1/tasks/{id}")).await?);
            }
            let open = tasks.iter().filter(|t| !is_terminal(t)).count();
            if open == 0 || Instant::now() > deadline {
                return Ok(tasks);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Tallies tasks into `report`: terminal states, and the things that must be zero.
    /// `before` is what the tenant's counters said when the scenario started.
    async fn tally(
        &self,
        report: &mut Report,
        prompts: &[(String, String)],
        tasks: &[Value],
        clean_calls: u64,
        before: (u64, u64),
    ) -> anyhow::Result<()> {
        let stats = self.model_stats().await?;
        let after = self.counted().await?;
        let tasks_nanos: u64 =
            tasks.iter().map(|t| (t["usage"]["cost_usd"].as_f64().unwrap_or(0.0) * 1e9).round() as u64).sum();
        let tasks_tokens: u64 = tasks.iter().map(|t| t["usage"]["input_tokens"].as_u64().unwrap_or(0)).sum();
        let (moved_nanos, moved_tokens) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
        report.usage_drift = moved_nanos.abs_diff(tasks_nanos) + moved_tokens.abs_diff(tasks_tokens);
        if report.usage_drift > 0 {
            report.notes.push(format!(
                "the tenant's counters moved {moved_nanos} n$ and {moved_tokens} input tokens; its tasks spent {tasks_nanos} n$ and {tasks_tokens}"
            ));
        }
        let mut lost_answers = 0;
        let mut extra_requests = 0;
        for ((id, prompt), task) in prompts.iter().zip(tasks) {
            report.accepted += 1;
            match task["status"].as_str() {
                Some("succeeded") => report.succeeded += 1,
                Some("failed" | "cancelled") => {
                    *report.failed.entry(task["error"]["code"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                }
                _ => {
                    report.lost += 1;
                    report.notes.push(format!("task {id} still {}", task["status"]));
                    continue;
                }
            }
            let steps = self.get(&format!("/v1/tasks/{id}/steps")).await?;
            let models: Vec<&Value> =
                steps["steps"].as_array().into_iter().flatten().filter(|s| s["kind"] == "model").collect();
            let recorded = models.len() as u64;
            if task["status"] == "succeeded" && recorded > clean_calls {
                report.duplicate_runs += 1;
                report
                    .notes
                    .push(format!("task {id} recorded {recorded} model calls, a clean run makes {clean_calls}"));
            }
            let steps_cost: f64 = models.iter().map(|m| m["usage"]["cost_usd"].as_f64().unwrap_or(0.0)).sum();
            let task_cost = task["usage"]["cost_usd"].as_f64().unwrap_or(-1.0);
            if (steps_cost - task_cost).abs() > 1e-9 {
                report.double_counted += 1;
                report.notes.push(format!("task {id} cost ${task_cost}, its steps ${steps_cost}"));
            }
            let seen = stats.get(&digest(prompt)).copied().unwrap_or_default();
            lost_answers += seen.answered.saturating_sub(recorded);
            extra_requests += seen.requests.saturating_sub(recorded);
        }
        report.notes.push(format!(
            "model requests beyond the recorded calls: {extra_requests} (failed on purpose, or cut off when a worker died)"
        ));
        if lost_answers > 0 {
            report.notes.push(format!(
                "{lost_answers} model answer(s) were in flight when a worker died: paid to the provider, never received, \
                 so asked for again (not counted in the task's cost: it was never known)"
            ));
        }
        Ok(())
    }

    /// `agentq dlq redrive --task id`: how many messages moved.
    async fn redrive(&self, id: &str) -> anyhow::Result<usize> {
        agentq::usecases::deadletter::redrive(
            &agentq::queue::SqsDeadLetters::new(self.sqs.clone()),
            &self.store,
            &agentq::queue::SqsQueue::new(self.sqs.clone(), self.queues.clone()),
            &self.dlqs,
            Some(id.parse()?),
            Duration::from_secs(30),
        )
        .await
    }

    fn kill_workers(&self) -> bool {
        std::process::Command::new("pkill").args(["-KILL", "-f", "/worker$"]).status().is_ok_and(|s| s.success())
    }
}

fn is_terminal(t: &Value) -> bool {
    matches!(t["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

/// The worker killed (SIGKILL) at random moments while tasks run.
pub async fn worker_killed(h: &Harness, tasks: usize, kills: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 3, "latency_ms": 400, "fail_rate": 0.0, "down": false, "tool": "calculator"})).await?;
    let mut prompts = Vec::new();
    for i in 0..tasks {
        let prompt = format!("kill scenario task {i} {}", ulid::Ulid::generate());
        prompts.push((h.submit(&prompt).await?, prompt));
    }
    let mut landed = 0;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..=1500))).await;
        if h.kill_workers() {
            landed += 1;
        }
    }
    let ids: Vec<String> = prompts.iter().map(|(id, _)| id.clone()).collect();
    let done = h.wait(&ids, Duration::from_secs(300)).await?;
    let mut report = Report {
        name: "worker killed mid-task".into(),
        setup: format!(
            "{tasks} tasks of 4 model calls and 3 tool calls (400 ms each call); the worker processes SIGKILLed {kills} times at random 0.3–1.5 s intervals ({landed} kills hit a running worker)"
        ),
        ..Report::default()
    };
    h.tally(&mut report, &prompts, &done, 4, before).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One task's message delivered 100 times.
pub async fn duplicate_deliveries(h: &Harness, copies: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 2, "latency_ms": 50, "fail_rate": 0.0, "down": false, "tool": "calculator"})).await?;
    let prompt = format!("duplicate scenario {}", ulid::Ulid::generate());
    let id = h.submit(&prompt).await?;
    let body = json!({"task_id": id, "priority": "default"}).to_string();
    for _ in 1..copies {
        h.sqs.send_message().queue_url(&h.queues.default).message_body(&body).send().await?;
    }
    let done = h.wait(std::slice::from_ref(&id), Duration::from_secs(120)).await?;
    // Every copy must be acknowledged too, not left to the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(120);
    while depth(&h.sqs, &h.queues.default).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut report = Report {
        name: "one message delivered many times".into(),
        setup: format!("1 task of 3 model calls; its message sent {copies} times in all"),
        ..Report::default()
    };
    h.tally(&mut report, &[(id.clone(), prompt.clone())], &done, 3, before).await?;
    let answered = h.model_stats().await?.get(&digest(&prompt)).map_or(0, |s| s.answered);
    report.notes.push(format!("the model answered {answered} calls for it (a clean run: 3)"));
    if answered != 3 {
        report.duplicate_runs += 1;
    }
    let left = depth(&h.sqs, &h.queues.default).await? + depth(&h.sqs, &h.dlqs[1]).await?;
    if left > 0 {
        report.notes.push(format!("{left} copies still queued or dead-lettered"));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// 30 % of model calls fail (529 and 500) and 30 % of tool calls time out.
pub async fn flaky_world(h: &Harness, tasks: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({
        "steps": 2, "latency_ms": 50, "fail_rate": 0.3, "fail_status": 529, "down": false,
        "tool": "lookup", "tool_timeout_rate": 0.3, "tool_delay_ms": 3000
    }))
    .await?;
    let mut prompts = Vec::new();
    for i in 0..tasks {
        let prompt = format!("flaky scenario task {i} {}", ulid::Ulid::generate());
        prompts.push((h.submit(&prompt).await?, prompt));
        if i == tasks / 2 {
            h.control(json!({"fail_status": 500})).await?;
        }
    }
    let ids: Vec<String> = prompts.iter().map(|(id, _)| id.clone()).collect();
    let done = h.wait(&ids, Duration::from_secs(300)).await?;
    let mut report = Report {
        name: "flaky model and tools".into(),
        setup: format!(
            "{tasks} tasks of 3 model calls and 2 HTTP tool calls; 30 % of model calls answer 529 (then 500), 30 % of tool calls take 3 s against a 1 s timeout"
        ),
        ..Report::default()
    };
    h.tally(&mut report, &prompts, &done, 3, before).await?;
    let running = done.iter().filter(|t| t["status"] == "running").count();
    report.notes.push(format!("tasks left running: {running}"));
    h.control(json!({"fail_rate": 0.0, "tool_timeout_rate": 0.0})).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A task whose stored prompt is gone: no delivery can run it.
async fn broken_task(h: &Harness, label: &str) -> anyhow::Result<(String, String, String)> {
    // Large enough to be kept in S3; then the object is deleted.
    let prompt = format!("{label} {} {}", ulid::Ulid::generate(), "x".repeat(70_000));
    let id = h.submit(&prompt).await?;
    let key = format!("tasks/{id}/prompt");
    h.s3.delete_object().bucket(&h.bucket).key(&key).send().await.context("deleting the prompt object")?;
    Ok((id, prompt, key))
}

/// Poison: an undecodable message, and a task no delivery can run.
pub async fn poison(h: &Harness) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 0, "latency_ms": 0, "fail_rate": 0.0, "down": false})).await?;
    h.sqs.send_message().queue_url(&h.queues.default).message_body("{this is not a task").send().await?;
    let (id, prompt, _) = broken_task(h, "poison").await?;
    let done = h.wait(std::slice::from_ref(&id), Duration::from_secs(180)).await?;
    let mut report = Report {
        name: "poison messages".into(),
        setup: "an undecodable message, and a task whose stored prompt is gone (every claim fails)".into(),
        ..Report::default()
    };
    h.tally(&mut report, &[(id, prompt)], &done, 1, before).await?;
    report.notes.push(format!(
        "the undecodable message was acknowledged: {} message(s) left on the queue",
        depth(&h.sqs, &h.queues.default).await?
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A task dead-lettered, marked `delivery_failed`, then repaired and redriven.
pub async fn dead_letter_and_redrive(h: &Harness) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 0, "latency_ms": 0, "fail_rate": 0.0, "down": false})).await?;
    let (id, prompt, key) = broken_task(h, "redrive").await?;
    let first = h.wait(std::slice::from_ref(&id), Duration::from_secs(180)).await?;
    let mut report = Report {
        name: "dead-lettered, then redriven".into(),
        setup: "a task whose prompt object is gone until it is dead-lettered; the object is restored, then `agentq dlq redrive --task`".into(),
        ..Report::default()
    };
    report.notes.push(format!(
        "before redrive: {} ({})",
        first[0]["status"].as_str().unwrap_or("?"),
        first[0]["error"]["code"].as_str().unwrap_or("-")
    ));
    h.s3.put_object().bucket(&h.bucket).key(&key).body(prompt.clone().into_bytes().into()).send().await?;
    let moved = h.redrive(&id).await?;
    report.notes.push(format!("redrive moved {moved} message(s)"));
    let done = h.wait(std::slice::from_ref(&id), Duration::from_secs(120)).await?;
    h.tally(&mut report, &[(id, prompt)], &done, 1, before).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A run that needs more invocations than the queue allows receives.
pub async fn long_run(h: &Harness, max_receive_count: u32) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    // 3 s a call against an 8 s invocation that keeps 2 s in hand: two calls per invocation.
    let calls = 2 * (max_receive_count + 2);
    h.control(json!({"steps": calls - 1, "latency_ms": 3000, "fail_rate": 0.0, "down": false, "tool": "calculator"}))
        .await?;
    let prompt = format!("long run {}", ulid::Ulid::generate());
    let id = h.submit_with(&json!({"prompt": prompt, "max_iterations": calls + 5})).await?;
    let done = h.wait(std::slice::from_ref(&id), Duration::from_secs(240)).await?;
    let mut report = Report {
        name: "a run longer than the receive limit".into(),
        setup: format!(
            "1 task of {calls} model calls of 3 s each against 8 s invocations: more invocations than maxReceiveCount ({max_receive_count})"
        ),
        ..Report::default()
    };
    h.tally(&mut report, &[(id.clone(), prompt)], &done, u64::from(calls), before).await?;
    let record = agentq::store::TaskRead::get(&h.store, id.parse()?).await?.ok_or_else(|| anyhow!("task {id} gone"))?;
    report.notes.push(format!("started {} times, each hand-off on a fresh message", record.attempts));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A task with real usage fails (its models go down), is dead-lettered, then redriven.
pub async fn usage_through_redrive(h: &Harness) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 2, "latency_ms": 1500, "fail_rate": 0.0, "down": false, "tool": "calculator"})).await?;
    let prompt = format!("usage through redrive {}", ulid::Ulid::generate());
    let id = h.submit(&prompt).await?;
    // Once its first step is recorded, every model goes down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.get(&format!("/v1/tasks/{id}")).await?["iterations"].as_u64().unwrap_or(0) < 1 {
        anyhow::ensure!(Instant::now() < deadline, "task {id} never made its first step");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.control(json!({"down": true})).await?;
    let failed = h.wait(std::slice::from_ref(&id), Duration::from_secs(180)).await?;
    let mut report = Report {
        name: "usage through failure and redrive".into(),
        setup: "a task that spent a model call, then failed (`models_unavailable`) through every delivery, was redriven and succeeded".into(),
        ..Report::default()
    };
    report.notes.push(format!(
        "before redrive: {} ({}), ${} spent",
        failed[0]["status"].as_str().unwrap_or("?"),
        failed[0]["error"]["code"].as_str().unwrap_or("-"),
        failed[0]["usage"]["cost_usd"]
    ));
    h.control(json!({"down": false, "latency_ms": 0})).await?;
    // The worker failed it on its last delivery and the message went on to the DLQ.
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&h.sqs, &h.dlqs[1]).await? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the message never reached the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let moved = h.redrive(&id).await?;
    report.notes.push(format!("redrive moved {moved} message(s)"));
    let done = h.wait(std::slice::from_ref(&id), Duration::from_secs(120)).await?;
    h.tally(&mut report, &[(id, prompt)], &done, 3, before).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Tasks whose submit stored them and died before sending their message.
pub async fn stranded(h: &Harness, tasks: usize) -> anyhow::Result<Report> {
    use agentq::store::TaskCreate as _;
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 1, "latency_ms": 50, "fail_rate": 0.0, "down": false, "tool": "calculator"})).await?;
    let mut prompts = Vec::new();
    for i in 0..tasks {
        let prompt = format!("stranded task {i} {}", ulid::Ulid::generate());
        let request = agentq::domain::task::TaskRequest::parse(
            json!({"prompt": prompt}).to_string().as_bytes(),
            &Default::default(),
        )?;
        let task = agentq::domain::task::TaskRecord::new(request, &h.tenant, agentq::now());
        h.store
            .admit(
                &task,
                agentq::store::Admission { max_running: u32::MAX, idempotency: None, slot: agentq::store::Slot::Take },
            )
            .await?;
        prompts.push((task.task_id.to_string(), prompt));
    }
    let ids: Vec<String> = prompts.iter().map(|(id, _)| id.clone()).collect();
    let done = h.wait(&ids, Duration::from_secs(180)).await?;
    let mut report = Report {
        name: "submits that died before sending".into(),
        setup: format!(
            "{tasks} tasks stored as a submit stores them, their messages never sent (the function died between its two writes); the scheduled reconciler finds them"
        ),
        ..Report::default()
    };
    h.tally(&mut report, &prompts, &done, 2, before).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Many submits at once from one tenant.
pub async fn burst(h: &Harness, tasks: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let before = h.counted().await?;
    h.control(json!({"steps": 0, "latency_ms": 0, "fail_rate": 0.0, "down": false})).await?;
    let prompts: Vec<String> = (0..tasks).map(|i| format!("burst {i} {}", ulid::Ulid::generate())).collect();
    let answers = futures::future::join_all(prompts.iter().map(|p| h.submit(p))).await;
    let mut report = Report {
        name: "a burst of submits from one tenant".into(),
        setup: format!("{tasks} submits at once from one tenant, well inside its rate and cap"),
        ..Report::default()
    };
    let mut accepted = Vec::new();
    for (prompt, answer) in prompts.into_iter().zip(answers) {
        match answer {
            Ok(id) => accepted.push((id, prompt)),
            Err(e) => report.notes.push(format!("refused: {e:#}")),
        }
    }
    report.notes.push(format!("{} of {tasks} answered 202", accepted.len()));
    if accepted.len() < tasks {
        report.lost += tasks - accepted.len();
    }
    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let done = h.wait(&ids, Duration::from_secs(180)).await?;
    h.tally(&mut report, &accepted, &done, 1, before).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<u64> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?;
    let attrs = out.attributes.unwrap_or_default();
    Ok([A::ApproximateNumberOfMessages, A::ApproximateNumberOfMessagesNotVisible]
        .iter()
        .map(|k| attrs.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum())
}

/// The reports as Markdown.
pub fn markdown(reports: &[Report], command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability\n");
    let _ = writeln!(
        out,
        "What the fault suite measured: every accepted task must end in exactly one terminal state, \
         its model calls paid once, with nothing lost. Produced by `{command}` (run by `make test`) against \
         the local stack with a fake model, on {}.\n",
        agentq::store::day_of(agentq::now())
    );
    let _ = writeln!(
        out,
        "| scenario | accepted | succeeded | failed (reasons) | lost | duplicate runs | double-counted cost | double-counted usage | time |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in reports {
        let failed = if r.failed.is_empty() {
            "0".to_owned()
        } else {
            r.failed.iter().map(|(k, v)| format!("{v} `{k}`")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            r.name,
            r.accepted,
            r.succeeded,
            failed,
            r.lost,
            r.duplicate_runs,
            r.double_counted,
            r.usage_drift,
            r.seconds
        );
    }
    let _ = writeln!(out);
    for r in reports {
        let _ = writeln!(out, "**{}.** {}.", r.name, r.setup);
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Definitions: *lost* = accepted but not terminal at the end; *duplicate runs* = more recorded \
         model calls than a clean run makes; *double-counted cost* = a task's cost differs from the sum of \
         its recorded steps'; *double-counted usage* = nano-dollars plus input tokens by which the tenant's \
         usage counters (`/v1/usage`, which budgets read) moved other than its tasks' own usage. How it works: \
         [docs/durability.md](docs/durability.md)."
    );
    out
}
