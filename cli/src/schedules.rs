//! `agentq schedules`: tasks created on a timetable (`cron(…)` or `rate(…)`, EventBridge's
//! syntax) over the HTTP API: create, list, get (with the latest ticks and their tasks),
//! pause, resume, delete.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::CliError;
use crate::api::Client;

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// A new schedule; prints its id and next ticks.
    Create {
        /// `cron(min hour day-of-month month day-of-week year)` or `rate(N minutes|hours|days)`.
        #[arg(value_name = "EXPRESSION")]
        schedule: String,
        /// The prompt of each tick's task (or give the whole task with --task).
        prompt: Option<String>,
        /// The task each tick submits, as `POST /v1/tasks` takes it: a file or the JSON.
        #[arg(long, value_name = "FILE|JSON")]
        task: Option<String>,
        /// IANA time zone the cron fields are read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// What a tick does while the previous tick's task is still open.
        #[arg(long, value_parser = ["skip", "allow"])]
        overlap: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// The tenant's schedules.
    List,
    /// A schedule, its next ticks and its latest ticks with their tasks' status.
    Get { id: String },
    /// Stop creating tasks until resumed.
    Pause { id: String },
    /// Start again from the next tick after now (missed ticks are not run).
    Resume { id: String },
    /// Delete a schedule; tasks it created are kept.
    Delete { id: String },
}

pub async fn run(command: SchedulesCommand, client: &Client) -> Result<(), CliError> {
    let json = client.json();
    let (path, method, body) = match command {
        SchedulesCommand::Create { schedule, prompt, task, timezone, overlap, description } => {
            let mut task = match task.as_deref().map(crate::read_json).transpose()? {
                Some(Value::Object(t)) => t,
                Some(_) => return Err(CliError::Usage("--task must be a JSON object".into())),
                None => serde_json::Map::new(),
            };
            if let Some(p) = prompt {
                task.insert("prompt".into(), p.into());
            }
            if task.is_empty() {
                return Err(CliError::Usage("give the task's PROMPT or --task FILE|JSON".into()));
            }
            let mut body = json!({"schedule": schedule, "task": task});
            for (field, value) in [("timezone", timezone), ("overlap", overlap), ("description", description)] {
                if let Some(v) = value {
                    body[field] = v.into();
                }
            }
            ("/v1/schedules".to_owned(), "POST", Some(body))
        }
        SchedulesCommand::List => {
            let (_, list) = client.send("GET", "/v1/schedules", None).await?;
            for s in list["schedules"].as_array().into_iter().flatten() {
                if json {
                    out!("{s}");
                } else {
                    print_line(s);
                }
            }
            return Ok(());
        }
        SchedulesCommand::Get { id } => (format!("/v1/schedules/{id}"), "GET", None),
        SchedulesCommand::Pause { id } => (format!("/v1/schedules/{id}/pause"), "POST", None),
        SchedulesCommand::Resume { id } => (format!("/v1/schedules/{id}/resume"), "POST", None),
        SchedulesCommand::Delete { id } => {
            let (_, deleted) = client.send("DELETE", &format!("/v1/schedules/{id}"), None).await?;
            if json {
                out!("{deleted}");
            } else {
                out!("{id} deleted (the tasks it created are kept)");
            }
            return Ok(());
        }
    };
    let (_, schedule) = client.send(method, &path, body.as_ref()).await?;
    if json {
        out!("{schedule}");
    } else {
        print_schedule(&schedule);
    }
    Ok(())
}

/// One line per schedule for `list`.
fn print_line(s: &Value) {
    let next = s["next_runs"].get(0).and_then(Value::as_str).unwrap_or("-");
    out!(
        "{}  {:<7} {:<28} {:<16} next {next}  {}",
        text(&s["id"]),
        text(&s["state"]),
        text(&s["schedule"]),
        text(&s["timezone"]),
        text(&s["description"])
    );
}

/// A schedule in full: its next ticks, then its latest ticks, newest first.
fn print_schedule(s: &Value) {
    print_line(s);
    for at in s["next_runs"].as_array().into_iter().flatten() {
        out!("  next  {}", text(at));
    }
    for run in s["runs"].as_array().into_iter().flatten() {
        let what = match (run["task_id"].as_str(), &run["skipped"]) {
            (Some(task), _) => format!("{task}  {}", text(&run["status"])),
            (None, skipped) => format!("skipped {}: {}", text(&skipped["code"]), text(&skipped["message"])),
        };
        out!("  ran   {}  {what}", text(&run["at"]));
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
