//! The task commands: thin calls to the HTTP API, printed for people or as JSON.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::CliError;

/// How often `--wait` and `watch` read the task's log again when it has nothing new (where
/// there is no event stream).
const POLL: Duration = Duration::from_millis(500);
/// The longest one stream connection may last (a deployed stream ends before: 300 s).
const STREAM_LIFE: Duration = Duration::from_secs(900);

/// How one connection to the event stream ended.
enum Listened {
    /// The task's terminal event arrived.
    Ended,
    /// The stream closed first (its maximum life, or the network): connect again.
    Closed,
    /// There is no stream here.
    NoStream,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Where the event stream is served (deployed: the stack's `StreamUrl`).
    stream_base: String,
    key: String,
    json: bool,
}

impl Client {
    pub fn new(base: &str, stream_base: Option<&str>, key: Option<&str>, json: bool) -> Result<Self, CliError> {
        let key = key.ok_or_else(|| {
            CliError::Usage("no API key: pass --api-key, set AGENTQ_API_KEY, or run `make up` in the checkout".into())
        })?;
        let http = agentq::net::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Unavailable(e.to_string()))?;
        let stream_base = stream_base.unwrap_or(base).trim_end_matches('/').to_owned();
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), stream_base, key: key.to_owned(), json })
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// `method` on the API's `path`, with a JSON body when given; the answer's status and body.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), CliError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.call(req).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), CliError> {
        let response = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| CliError::Unavailable(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=299 => Ok((status, body)),
            400..=499 => Err(CliError::Rejected(problem(status, &body))),
            _ => Err(CliError::Unavailable(problem(status, &body))),
        }
    }

    pub async fn submit(&self, body: &Value, idempotency_key: Option<&str>, wait: bool) -> Result<(), CliError> {
        let mut req = self.http.post(format!("{}/v1/tasks", self.base)).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let (_, accepted) = self.call(req).await?;
        let id = accepted["task_id"].as_str().unwrap_or_default().to_owned();
        if !wait {
            if self.json {
                out!("{accepted}");
            } else {
                out!("{id}");
            }
            return Ok(());
        }
        self.watch(&id).await
    }

    async fn task(&self, id: &str) -> Result<Value, CliError> {
        Ok(self.call(self.http.get(format!("{}/v1/tasks/{id}", self.base))).await?.1)
    }

    /// Follows a task's events until it ends: a progress bar on stderr (step, status, cost so
    /// far), or with `--json` each event as a line; then the task. It listens on the event
    /// stream, reconnecting after the last event it got when a stream ends early, and falls back
    /// to reading the log every half second where no stream is served (an API without the
    /// stream function). Either way nothing is missed or shown twice.
    pub async fn watch(&self, id: &str) -> Result<(), CliError> {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} step {pos}/{len} · {elapsed} · {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(id.to_owned());
        bar.set_length(self.task(id).await?["progress"]["max_steps"].as_u64().unwrap_or(1));
        if !self.json {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        let mut after = 0;
        let mut ended = false;
        while !ended {
            match self.listen(id, &bar, &mut after).await? {
                Listened::Ended => ended = true,
                Listened::Closed => {}
                Listened::NoStream => {
                    self.poll(id, &bar, &mut after).await?;
                    ended = true;
                }
            }
        }
        bar.finish_and_clear();
        let task = self.task(id).await?;
        if !self.json {
            self.print_task(&task);
        }
        outcome(&task)
    }

    /// One connection to the task's event stream, from after `after`.
    async fn listen(&self, id: &str, bar: &ProgressBar, after: &mut u64) -> Result<Listened, CliError> {
        use eventsource_stream::Eventsource as _;
        use futures::StreamExt as _;
        let url = format!("{}/v1/tasks/{id}/stream", self.stream_base);
        let sent = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .header("last-event-id", after.to_string())
            .header("accept", "text/event-stream")
            .timeout(STREAM_LIFE)
            .send()
            .await;
        let Ok(response) = sent else { return Ok(Listened::NoStream) };
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            // Our own refusal (a problem+json with a code) stands; anything else means this
            // API has no stream.
            return match (status, body["code"].as_str()) {
                (400..=499, Some(_)) => Err(CliError::Rejected(problem(status, &body))),
                _ => Ok(Listened::NoStream),
            };
        }
        let mut events = response.bytes_stream().eventsource();
        while let Some(message) = events.next().await {
            let Ok(message) = message else { return Ok(Listened::Closed) };
            let Ok(event) = serde_json::from_str::<Value>(&message.data) else { continue };
            *after = event["seq"].as_u64().unwrap_or(*after);
            if self.show(bar, &event) && self.settled(id, &event).await? {
                return Ok(Listened::Ended);
            }
        }
        Ok(Listened::Closed)
    }

    /// Reads the task's log after `after` until its end.
    async fn poll(&self, id: &str, bar: &ProgressBar, after: &mut u64) -> Result<(), CliError> {
        loop {
            let url = format!("{}/v1/tasks/{id}/events", self.base);
            let (_, page) = self.call(self.http.get(url).query(&[("after", after.to_string())])).await?;
            for event in page["events"].as_array().into_iter().flatten() {
                *after = event["seq"].as_u64().unwrap_or(*after);
                if self.show(bar, event) && self.settled(id, event).await? {
                    return Ok(());
                }
            }
            if page.get("next_after").is_none() {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Whether the watch is over at `event`, which [`show`](Self::show) flagged: a terminal
    /// event always; a wait only if the task still waits (the log may hold earlier waits).
    async fn settled(&self, id: &str, event: &Value) -> Result<bool, CliError> {
        if event["type"] != "task.waiting_for_input" {
            return Ok(true);
        }
        Ok(self.task(id).await?["status"] == "waiting_for_input")
    }

    /// Shows one event; whether it may be where the watch stops (the end, or a wait).
    fn show(&self, bar: &ProgressBar, event: &Value) -> bool {
        if self.json {
            out!("{event}");
        }
        let data = &event["data"];
        if let Some(step) = data["spent"]["steps"].as_u64() {
            bar.set_position(step);
        }
        let cost = data["spent"]["cost_usd"].as_f64().unwrap_or(0.0);
        bar.set_message(format!("{} · ${cost:.6}", event["type"].as_str().unwrap_or("?")));
        matches!(
            event["type"].as_str(),
            Some("task.succeeded" | "task.failed" | "task.cancelled" | "task.waiting_for_input")
        )
    }

    /// Tasks waiting for a decision, one line per pending call.
    pub async fn pending(&self) -> Result<(), CliError> {
        let mut cursor: Option<String> = None;
        let mut shown = 0;
        loop {
            let page = self.tasks_page(Some("waiting_for_input"), 100, cursor.as_deref()).await?;
            for task in page["tasks"].as_array().into_iter().flatten() {
                if self.json {
                    out!("{task}");
                    continue;
                }
                for call in task["pending"].as_array().into_iter().flatten() {
                    shown += 1;
                    out!(
                        "{}  {}({})  until {}",
                        task["task_id"].as_str().unwrap_or(""),
                        call["name"].as_str().unwrap_or(""),
                        call["input"],
                        task["waiting_until"].as_str().unwrap_or("?"),
                    );
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        if !self.json && shown == 0 {
            eprintln!("no task is waiting for a decision");
        }
        Ok(())
    }

    /// Every recorded step of a task as the API shows it, following the pages.
    pub async fn steps_json(&self, id: &str) -> Result<Vec<Value>, CliError> {
        let mut steps = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut req = self.http.get(format!("{}/v1/tasks/{id}/steps", self.base)).query(&[("limit", "500")]);
            if let Some(c) = &cursor {
                req = req.query(&[("cursor", c)]);
            }
            let (_, page) = self.call(req).await?;
            steps.extend(page["steps"].as_array().cloned().unwrap_or_default());
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                return Ok(steps);
            }
        }
    }

    /// Every recorded step of a task, as the agent loop reads them.
    async fn all_steps(&self, id: &str) -> Result<Vec<agentq::domain::steps::Step>, CliError> {
        self.steps_json(id)
            .await?
            .into_iter()
            .map(|s| {
                serde_json::from_value(s)
                    .map_err(|e| CliError::Unavailable(format!("a step this CLI cannot read: {e}")))
            })
            .collect()
    }

    /// `POST /v1/batches`: the answer.
    pub async fn post_batch(&self, body: &Value, idempotency_key: Option<&str>) -> Result<(u16, Value), CliError> {
        let mut req = self.http.post(format!("{}/v1/batches", self.base)).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        self.call(req).await
    }

    /// One page of `GET /v1/batches/{id}` (the whole batch's counts, 1,000 items).
    pub async fn batch_page(&self, id: &str, cursor: Option<&str>) -> Result<Value, CliError> {
        let mut req = self.http.get(format!("{}/v1/batches/{id}", self.base)).query(&[("limit", "1000")]);
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]);
        }
        Ok(self.call(req).await?.1)
    }

    /// `POST /v1/tasks/{id}/fork`: the answer.
    pub async fn fork(&self, id: &str, body: &Value, idempotency_key: Option<&str>) -> Result<(u16, Value), CliError> {
        let mut req = self.http.post(format!("{}/v1/tasks/{id}/fork", self.base)).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        self.call(req).await
    }

    /// The tenant's tasks of `status` created since `since`, newest first.
    pub async fn tasks_since(&self, status: &str, since: time::OffsetDateTime) -> Result<Vec<Value>, CliError> {
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.tasks_page(Some(status), 100, cursor.as_deref()).await?;
            for task in page["tasks"].as_array().into_iter().flatten() {
                let created = task["created_at"]
                    .as_str()
                    .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
                match created {
                    Some(at) if at < since => return Ok(found),
                    _ => found.push(task.clone()),
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                return Ok(found);
            }
        }
    }

    /// Replays a task's recorded run here and reports how the replay departs from it.
    pub async fn replay(&self, id: &str, live: bool) -> Result<(), CliError> {
        use agentq::agent::replay::{Recording, ToolsMode, replay};
        let task = self.task(id).await?;
        let steps = self.all_steps(id).await?;
        let output = match task.get("output_schema") {
            Some(schema) => Some(
                agentq::domain::output::OutputSchema::compile(schema)
                    .map_err(|e| CliError::Usage(format!("the task's output_schema {e}")))?,
            ),
            None => None,
        };
        let max_iterations = task["progress"]["max_steps"].as_u64().unwrap_or(10) as u32;
        let recording = Recording {
            inherited: task["parent"]["from_step"].as_u64().unwrap_or(0) as u32,
            fork_message: task["parent"]["message"].as_str(),
            ..Recording::of(&steps, max_iterations, output.as_ref())
        };
        let mode = if live { ToolsMode::Live } else { ToolsMode::Recorded };
        let replayed = replay(recording, &agentq::agent::ToolRegistry::builtin(), mode).await;
        let outcome = match &replayed.outcome {
            agentq::agent::Outcome::Succeeded(r) => serde_json::json!({"status": "succeeded", "text": r.text}),
            agentq::agent::Outcome::Failed(e) => serde_json::json!({"status": "failed", "error": e}),
            agentq::agent::Outcome::WaitingForInput(p) => {
                serde_json::json!({"status": "waiting_for_input", "pending": p})
            }
            other => serde_json::json!({"status": "interrupted", "detail": format!("{other:?}")}),
        };
        let recorded_text = task["result"]["text"].as_str();
        let same_end = outcome["status"] == task["status"]
            && (recorded_text.is_none() || outcome["text"].as_str() == recorded_text);
        if self.json {
            out!(
                "{}",
                serde_json::json!({
                    "task_id": id,
                    "tools": if live { "live" } else { "recorded" },
                    "model_calls": replayed.model_calls,
                    "tool_results": replayed.tool_results.len(),
                    "outcome": outcome,
                    "recorded_status": task["status"],
                    "same_ending": same_end,
                    "divergences": replayed.divergences,
                })
            );
        } else {
            out!(
                "replayed {id}: {} recorded model answers, {} tool results ({}), ended {}",
                replayed.model_calls,
                replayed.tool_results.len(),
                if live { "built-in tools run again" } else { "recorded" },
                outcome["status"].as_str().unwrap_or("?"),
            );
            for d in &replayed.divergences {
                out!("  diverges: {}", serde_json::to_string(d).unwrap_or_default());
            }
            if !same_end {
                out!("  the ending differs: recorded {}, replayed {outcome}", task["status"]);
            }
        }
        if replayed.divergences.is_empty() && same_end {
            if !self.json {
                out!("  no divergence: the run is reproduced exactly");
            }
            Ok(())
        } else {
            Err(CliError::Diverged(format!("the replay of {id} departs from the recorded run")))
        }
    }

    /// Decides every pending call of a waiting task the same way.
    pub async fn decide(&self, id: &str, verdict: Verdict) -> Result<(), CliError> {
        let task = self.task(id).await?;
        let pending = task["pending"].as_array().cloned().unwrap_or_default();
        if pending.is_empty() {
            let status = task["status"].as_str().unwrap_or("?");
            return Err(CliError::Rejected(format!("{id} is {status}: no tool call waits for a decision")));
        }
        if matches!(verdict, Verdict::Approve { edit: Some(_) }) && pending.len() > 1 {
            return Err(CliError::Usage(format!(
                "{} calls wait; --edit needs exactly one (POST /v1/tasks/{id}/input decides them one by one)",
                pending.len()
            )));
        }
        let decisions: Vec<Value> = pending
            .iter()
            .map(|call| {
                let mut d = serde_json::json!({"tool_use_id": call["tool_use_id"]});
                match &verdict {
                    Verdict::Approve { edit: None } => d["action"] = "approve".into(),
                    Verdict::Approve { edit: Some(input) } => {
                        d["action"] = "edit".into();
                        d["input"] = input.clone();
                    }
                    Verdict::Reject { message } => {
                        d["action"] = "reject".into();
                        if let Some(m) = message {
                            d["message"] = m.as_str().into();
                        }
                    }
                }
                d
            })
            .collect();
        let body = serde_json::json!({"decisions": decisions});
        let (_, task) = self.call(self.http.post(format!("{}/v1/tasks/{id}/input", self.base)).json(&body)).await?;
        if self.json {
            out!("{task}");
        } else {
            let names: Vec<&str> = pending.iter().filter_map(|c| c["name"].as_str()).collect();
            let done = if matches!(verdict, Verdict::Reject { .. }) { "rejected" } else { "approved" };
            out!("{id}: {done} {}; the task goes on (agentq watch {id})", names.join(", "));
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<(), CliError> {
        let task = self.task(id).await?;
        self.print_task(&task);
        Ok(())
    }

    pub async fn cancel(&self, id: &str) -> Result<(), CliError> {
        let (status, task) = self.call(self.http.delete(format!("{}/v1/tasks/{id}", self.base))).await?;
        if self.json {
            out!("{task}");
        } else if status == 202 {
            out!("{id} cancel requested: it stops at its next step");
        } else {
            out!("{id} cancelled");
        }
        Ok(())
    }

    /// One page of `GET /v1/tasks`.
    async fn tasks_page(&self, status: Option<&str>, limit: u32, cursor: Option<&str>) -> Result<Value, CliError> {
        let mut req = self.http.get(format!("{}/v1/tasks", self.base)).query(&[("limit", limit.to_string())]);
        if let Some(s) = status {
            req = req.query(&[("status", s)]);
        }
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]);
        }
        Ok(self.call(req).await?.1)
    }

    pub async fn list(&self, status: Option<&str>, limit: u32, all: bool) -> Result<(), CliError> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self.tasks_page(status, limit, cursor.as_deref()).await?;
            for task in page["tasks"].as_array().into_iter().flatten() {
                if self.json {
                    out!("{task}");
                } else {
                    out!(
                        "{}  {:<9}  {:>3} steps  ${:.6}  {}",
                        task["task_id"].as_str().unwrap_or(""),
                        task["status"].as_str().unwrap_or(""),
                        task["iterations"],
                        cost(task),
                        task["created_at"].as_str().unwrap_or(""),
                    );
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if !all || cursor.is_none() {
                if let (false, Some(c)) = (self.json, &cursor) {
                    eprintln!("more: --all, or the next page's cursor is {c}");
                }
                return Ok(());
            }
        }
    }

    pub async fn usage(&self, from: Option<&str>, to: Option<&str>) -> Result<(), CliError> {
        let mut req = self.http.get(format!("{}/v1/usage", self.base));
        for (k, v) in [("from", from), ("to", to)] {
            if let Some(v) = v {
                req = req.query(&[(k, v)]);
            }
        }
        let (_, report) = self.call(req).await?;
        if self.json {
            out!("{report}");
            return Ok(());
        }
        out!(
            "{:<10}  {:>9} {:>6} {:>9}  {:>10} {:>10}  {:>10}",
            "date",
            "succeeded",
            "failed",
            "cancelled",
            "in tok",
            "out tok",
            "cost"
        );
        let rows = report["days"].as_array().cloned().unwrap_or_default();
        for d in rows.iter().chain(std::iter::once(&report["total"])) {
            out!(
                "{:<10}  {:>9} {:>6} {:>9}  {:>10} {:>10}  ${:>9.4}",
                d["date"].as_str().unwrap_or("total"),
                d["tasks"]["succeeded"],
                d["tasks"]["failed"],
                d["tasks"]["cancelled"],
                d["usage"]["input_tokens"],
                d["usage"]["output_tokens"],
                d["usage"]["cost_usd"].as_f64().unwrap_or(0.0),
            );
        }
        Ok(())
    }

    fn print_task(&self, task: &Value) {
        if self.json {
            out!("{task}");
            return;
        }
        let id = task["task_id"].as_str().unwrap_or("");
        let status = task["status"].as_str().unwrap_or("");
        out!("{id} {status} after {} steps, ${:.6}", task["iterations"], cost(task));
        if let Some(text) = task["result"]["text"].as_str() {
            out!("{text}");
        }
        if let Some(code) = task["error"]["code"].as_str() {
            out!("error {code}: {}", task["error"]["message"].as_str().unwrap_or(""));
        }
        for call in task["pending"].as_array().into_iter().flatten() {
            out!(
                "waiting for your decision on {}({}) [{}]",
                call["name"].as_str().unwrap_or(""),
                call["input"],
                call["tool_use_id"].as_str().unwrap_or("")
            );
        }
        if task["status"] == "waiting_for_input" {
            out!("decide: agentq approve {id} [--edit JSON] | agentq reject {id} --message TEXT");
        }
    }
}

fn cost(task: &Value) -> f64 {
    task["usage"]["cost_usd"].as_f64().unwrap_or(0.0)
}

/// How to answer a waiting task's calls.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Run them; with `edit`, the one call on this input.
    Approve {
        edit: Option<Value>,
    },
    Reject {
        message: Option<String>,
    },
}

fn outcome(task: &Value) -> Result<(), CliError> {
    match task["status"].as_str() {
        Some("succeeded") => Ok(()),
        Some("waiting_for_input") => Err(CliError::Waiting(format!(
            "the task waits for your decision (agentq approve|reject {})",
            task["task_id"].as_str().unwrap_or("")
        ))),
        other => Err(CliError::TaskDidNotSucceed(format!("the task ended {}", other.unwrap_or("in an unknown state")))),
    }
}

/// A problem+json answer in one line.
fn problem(status: u16, body: &Value) -> String {
    let detail = body["detail"].as_str().unwrap_or("");
    let fields: Vec<String> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}: {}", e["field"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect();
    let code = body["code"].as_str().unwrap_or("error");
    if fields.is_empty() {
        format!("{status} {code}: {detail}")
    } else {
        format!("{status} {code}: {}", fields.join("; "))
    }
}
