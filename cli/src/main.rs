//! `agentq`: the command line for agentq. Task commands speak the HTTP API with an API key;
//! `keys` commands are admin operations on the store with AWS credentials.
//!
//! Settings come from flags, then the environment, then `.run/cli.env` (written by `make up`,
//! found from the current directory upwards), so inside a checkout with the local stack
//! running, `agentq submit "…"` just works.
//!
//! Exit codes: 0 success; 1 the task ended `failed` or `cancelled`; 2 bad usage; 3 the API
//! refused the request (4xx); 4 the service could not be reached or failed (5xx, network,
//! store); 5 the task waits for your decision on a tool call (`agentq pending`); 6 a replay
//! departed from the recorded run.

/// `println!` that does not panic when stdout is a closed pipe (`agentq list | head -1`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod api;
mod batch;
mod dlq;
mod fork;
mod keys;
mod logs;
mod schedules;
mod tenants;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentq", version, about = "Run LLM agent tasks on agentq")]
pub struct Cli {
    /// Base URL of the agentq API.
    #[arg(long, global = true, env = "AGENTQ_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Base URL of the event stream, when it is not the API's (deployed: the stack's
    /// `StreamUrl` output).
    #[arg(long, global = true, env = "AGENTQ_STREAM_URL")]
    stream_url: Option<String>,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, global = true, env = "AGENTQ_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON instead of text, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a task.
    Submit {
        prompt: String,
        #[arg(long, value_parser = ["high", "default", "low"])]
        priority: Option<String>,
        #[arg(long)]
        max_iterations: Option<u32>,
        /// A model of the deployment's chain.
        #[arg(long)]
        model: Option<String>,
        /// Stop the task once it has cost this much.
        #[arg(long)]
        max_cost_usd: Option<f64>,
        /// Makes retries of this submission safe: the same key returns the same task.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the task to finish, showing its progress.
        #[arg(long)]
        wait: bool,
        /// A JSON Schema the final answer must match: a file, or the JSON itself.
        #[arg(long, value_name = "FILE|JSON")]
        output_schema: Option<String>,
        /// Tools whose calls wait for your decision (`agentq approve` / `reject`), comma-separated.
        #[arg(long, value_name = "TOOLS", value_delimiter = ',')]
        approve_tools: Vec<String>,
        /// How long a decision may take before the calls are rejected (default: the deployment's).
        #[arg(long, value_name = "SECS", requires = "approve_tools")]
        approval_timeout: Option<u64>,
    },
    /// Tasks waiting for your decision on a tool call, with the calls.
    Pending,
    /// A new task from a step of this one: its first steps are this one's (not paid again),
    /// then it runs on, its next turn edited as you say.
    Fork {
        id: String,
        /// How many of the task's model steps the fork keeps.
        #[arg(long)]
        from_step: u32,
        /// Added to the fork's next turn (required after a final answer).
        #[arg(long)]
        message: Option<String>,
        /// Another model of the chain for the fork.
        #[arg(long)]
        model: Option<String>,
        /// A corrected result of one of step FROM_STEP's tool calls.
        #[arg(long, value_name = "TOOL_USE_ID=CONTENT")]
        tool_result: Vec<String>,
        #[arg(long)]
        max_iterations: Option<u32>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the fork to finish, showing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// Run the tasks that ended STATUS lately again (as forks, after a fix).
    Rerun {
        #[arg(long, value_parser = ["failed", "cancelled", "succeeded"], default_value = "failed")]
        status: String,
        /// How far back: 30m, 2h, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Go on from each task's last step that asked for tools, rather than from the start.
        #[arg(long)]
        from_last_good_step: bool,
        /// List the tasks and what rerunning them is likely to cost, from their recorded usage.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a task's agent loop again here, against its recorded model answers (no model call,
    /// no cost), and report where the new run departs from the recorded one. Exits 6 if it does.
    Replay {
        id: String,
        /// `recorded`: reuse the tools' recorded results; `live`: run the built-in tools again
        /// and compare (other tools give their recorded results).
        #[arg(long, value_parser = ["recorded", "live"], default_value = "recorded")]
        tools: String,
    },
    /// Approve a waiting task's tool calls: they run and the task goes on.
    Approve {
        id: String,
        /// Run the call on this input instead (a file or the JSON); only when one call waits.
        #[arg(long, value_name = "FILE|JSON")]
        edit: Option<String>,
    },
    /// Reject a waiting task's tool calls: they do not run, and the model reads your message.
    Reject {
        id: String,
        #[arg(long)]
        message: Option<String>,
    },
    /// Show a task.
    Get { id: String },
    /// Follow a task's events until it ends (its progress and cost), then show it; exits as
    /// `submit --wait` does.
    Watch { id: String },
    /// Cancel a task.
    Cancel { id: String },
    /// List your tasks, newest first.
    List {
        #[arg(long, value_parser = ["queued", "running", "waiting_for_input", "succeeded", "failed", "cancelled"])]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// Tasks, tokens and cost per day.
    Usage {
        /// First day, YYYY-MM-DD (default: 29 days before `to`).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today).
        #[arg(long)]
        to: Option<String>,
    },
    /// Batches of up to 1,000 tasks: submit a JSONL file, follow one, write its results, cancel it.
    Batch {
        #[command(subcommand)]
        command: batch::BatchCommand,
    },
    /// Tasks created on a timetable: `cron(…)` or `rate(…)`, paused, resumed, deleted.
    Schedules {
        #[command(subcommand)]
        command: schedules::SchedulesCommand,
    },
    /// A tenant's settings: its limits, and what a submit over its running cap gets (admin).
    Tenants {
        #[command(subcommand)]
        command: tenants::TenantsCommand,
    },
    /// Manage API keys (admin: needs AWS credentials and AGENTQ_TABLE).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Inspect and redrive the dead-letter queues (admin: needs AWS credentials).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Webhook endpoints (add, list, remove, rotate, test), a task's deliveries, and redrive of
    /// dead-lettered deliveries (admin).
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// One task's log lines across submit and worker, in order (the local stack's logs).
    Logs {
        id: String,
        /// Where the logs are (default: the `.run` directory `make up` writes).
        #[arg(long, env = "AGENTQ_LOG_DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    TaskDidNotSucceed(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Waiting(String),
    #[error("{0}")]
    Diverged(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            Self::TaskDidNotSucceed(_) => 1,
            Self::Usage(_) => 2,
            Self::Rejected(_) => 3,
            Self::Unavailable(_) => 4,
            Self::Waiting(_) => 5,
            Self::Diverged(_) => 6,
        }
    }
}

fn main() -> ExitCode {
    let run_dir = load_env_file();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logs { id, dir } => logs::run(dir.clone().or(run_dir), id, cli.json),
        _ => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            runtime.block_on(run(cli))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentq: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// JSON given inline (`{…}`) or as a file's path.
fn read_json(arg: &str) -> Result<serde_json::Value, CliError> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).map_err(|e| CliError::Usage(format!("cannot read {arg}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{arg} is not JSON: {e}")))
}

/// Reads `.run/cli.env` from the nearest directory that has one, without overriding what
/// the environment already says; returns that `.run` directory (where the logs are).
fn load_env_file() -> Option<std::path::PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join(".run/cli.env");
        if candidate.is_file() {
            let _ = dotenvy::from_path(&candidate);
            return Some(dir.join(".run"));
        }
        if !dir.pop() {
            return None;
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let client = || api::Client::new(&cli.url, cli.stream_url.as_deref(), cli.api_key.as_deref(), cli.json);
    match cli.command {
        Command::Keys { command } => keys::run(command, cli.json).await,
        Command::Tenants { command } => tenants::run(command, cli.json).await,
        Command::Dlq { command } => dlq::run(command, cli.json).await,
        Command::Webhooks { command: webhooks::WebhooksCommand::Redrive { task } } => {
            webhooks::redrive(task, cli.json).await
        }
        Command::Batch { command } => batch::run(command, &client()?).await,
        Command::Schedules { command } => schedules::run(command, &client()?).await,
        Command::Webhooks { command } => webhooks::run(command, &client()?).await,
        ref command => {
            let client = client()?;
            match command {
                Command::Submit {
                    prompt,
                    priority,
                    max_iterations,
                    model,
                    max_cost_usd,
                    idempotency_key,
                    wait,
                    output_schema,
                    approve_tools,
                    approval_timeout,
                } => {
                    let mut body = serde_json::json!({"prompt": prompt});
                    if !approve_tools.is_empty() {
                        body["approval"] = serde_json::json!({"tools": approve_tools});
                        if let Some(secs) = approval_timeout {
                            body["approval"]["timeout_secs"] = (*secs).into();
                        }
                    }
                    if let Some(schema) = output_schema {
                        body["output_schema"] = read_json(schema)?;
                    }
                    if let Some(p) = priority {
                        body["priority"] = p.as_str().into();
                    }
                    if let Some(n) = max_iterations {
                        body["max_iterations"] = (*n).into();
                    }
                    if let Some(m) = model {
                        body["model"] = m.as_str().into();
                    }
                    if let Some(c) = max_cost_usd {
                        body["max_cost_usd"] = (*c).into();
                    }
                    client.submit(&body, idempotency_key.as_deref(), *wait).await
                }
                Command::Get { id } => client.get(id).await,
                Command::Watch { id } => client.watch(id).await,
                Command::Cancel { id } => client.cancel(id).await,
                Command::Pending => client.pending().await,
                Command::Fork { id, from_step, message, model, tool_result, max_iterations, idempotency_key, wait } => {
                    let args = fork::ForkArgs {
                        id: id.clone(),
                        from_step: *from_step,
                        message: message.clone(),
                        model: model.clone(),
                        tool_results: tool_result.clone(),
                        max_iterations: *max_iterations,
                        idempotency_key: idempotency_key.clone(),
                        wait: *wait,
                    };
                    fork::fork(&client, args).await
                }
                Command::Rerun { status, since, from_last_good_step, dry_run } => {
                    let args = fork::RerunArgs {
                        status: status.clone(),
                        since: *since,
                        from_last_good_step: *from_last_good_step,
                        dry_run: *dry_run,
                    };
                    fork::rerun(&client, args).await
                }
                Command::Replay { id, tools } => client.replay(id, tools == "live").await,
                Command::Approve { id, edit } => {
                    let edit = edit.as_deref().map(read_json).transpose()?;
                    client.decide(id, api::Verdict::Approve { edit }).await
                }
                Command::Reject { id, message } => {
                    client.decide(id, api::Verdict::Reject { message: message.clone() }).await
                }
                Command::List { status, limit, all } => client.list(status.as_deref(), *limit, *all).await,
                Command::Usage { from, to } => client.usage(from.as_deref(), to.as_deref()).await,
                Command::Keys { .. }
                | Command::Tenants { .. }
                | Command::Dlq { .. }
                | Command::Logs { .. }
                | Command::Webhooks { .. }
                | Command::Batch { .. }
                | Command::Schedules { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}
