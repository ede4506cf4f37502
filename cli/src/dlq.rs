//! `agentq dlq`: look into the dead-letter queues and move messages back. Admin operations
//! on SQS and the table (AWS credentials; queue URLs and `AGENTQ_TABLE` from the environment
//! or `.run/cli.env`).

use std::time::Duration;

use agentq::queue::SqsDeadLetters;
use agentq::usecases::deadletter::{self, Decision};
use clap::Subcommand;

use crate::CliError;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// The messages in the dead-letter queues and their tasks.
    List,
    /// Put messages back on the queue of their priority and their tasks back to `queued`.
    Redrive {
        /// Only this task's message.
        #[arg(long)]
        task: Option<String>,
    },
}

fn unavailable(e: impl std::fmt::Display) -> CliError {
    CliError::Unavailable(e.to_string())
}

pub async fn run(command: DlqCommand, json: bool) -> Result<(), CliError> {
    let config = agentq::runtime::config::Config::from_env()
        .map_err(|e| CliError::Usage(format!("{e} (make up writes .run/cli.env)")))?;
    if config.dead_letter_urls.is_empty() {
        return Err(CliError::Usage("AGENTQ_DLQ_URLS is not set (make up writes it to .run/cli.env)".into()));
    }
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    let dead = SqsDeadLetters::new(agentq::runtime::aws::sqs(&sdk));
    let budget = Duration::from_secs(60);
    match command {
        DlqCommand::List => {
            for url in &config.dead_letter_urls {
                deadletter::visit(&dead, url, budget, |m| async move {
                    let task = m.task.as_ref().map_or_else(|| "(not a task message)".to_owned(), |t| t.task_id.to_string());
                    let priority = m.task.as_ref().map_or("-", |t| t.priority.as_str());
                    if json {
                        out!("{}", serde_json::json!({"queue": m.queue_url, "message_id": m.message_id, "task_id": task, "priority": priority, "receive_count": m.receive_count, "sent_at_ms": m.sent_at_ms}));
                    } else {
                        out!("{task}  {priority:<7}  received {:>2}×  {}", m.receive_count, m.queue_url.rsplit('/').next().unwrap_or(""));
                    }
                    Decision::Keep
                })
                .await
                .map_err(unavailable)?;
            }
        }
        DlqCommand::Redrive { task } => {
            let task =
                task.map(|t| t.parse().map_err(|_| CliError::Usage(format!("{t:?} is not a task id")))).transpose()?;
            let store = agentq::runtime::wiring::store(&config, &sdk);
            let queue = agentq::runtime::wiring::queue(&config, &sdk).map_err(|e| CliError::Usage(e.to_string()))?;
            let moved = deadletter::redrive(&dead, &store, &queue, &config.dead_letter_urls, task, budget)
                .await
                .map_err(unavailable)?;
            if json {
                out!("{}", serde_json::json!({"moved": moved}));
            } else {
                out!("moved {moved} message(s) back to their queues; their tasks are queued again");
            }
            if task.is_some() && moved == 0 {
                return Err(CliError::Rejected("that task has no message in the dead-letter queues".into()));
            }
        }
    }
    Ok(())
}
