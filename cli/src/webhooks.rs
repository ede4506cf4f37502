//! `agentq webhooks`: the tenant's webhook endpoints and a task's deliveries over the HTTP
//! API (API key), and `redrive`, an admin operation that moves dead-lettered deliveries back
//! to the webhook queue (AWS credentials; queue URLs from the environment or `.run/cli.env`).

use std::time::Duration;

use agentq::queue::{SqsDeadLetters, SqsDeliveryQueue};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::CliError;
use crate::api::Client;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its id and its signing secret (shown this once).
    Add {
        /// Where deliveries go (https when deployed).
        #[arg(value_name = "URL")]
        endpoint: String,
        /// An event type it receives (repeat for several; default: all).
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
    },
    /// The tenant's endpoints.
    List,
    /// Remove an endpoint: nothing more is sent to it.
    Remove { id: String },
    /// A new secret for an endpoint; the old one keeps signing beside it for a day.
    Rotate { id: String },
    /// Send a signed `webhook.test` event to an endpoint now and show what it answered.
    Test { id: String },
    /// Every delivery attempt of a task's events.
    Deliveries { task_id: String },
    /// Move dead-lettered deliveries back to the webhook queue (admin: AWS credentials).
    Redrive {
        /// Only this task's deliveries.
        #[arg(long)]
        task: Option<String>,
    },
}

pub async fn run(command: WebhooksCommand, client: &Client) -> Result<(), CliError> {
    let json = client.json();
    match command {
        WebhooksCommand::Add { endpoint, events } => {
            let mut body = json!({"url": endpoint});
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            let (_, made) = client.send("POST", "/v1/webhooks", Some(&body)).await?;
            if json {
                out!("{made}");
            } else {
                print_endpoint(&made);
                out!("secret {}  (shown once: keep it where your receiver can read it)", text(&made["secret"]));
            }
        }
        WebhooksCommand::List => {
            let (_, list) = client.send("GET", "/v1/webhooks", None).await?;
            for endpoint in list["webhooks"].as_array().into_iter().flatten() {
                if json {
                    out!("{endpoint}");
                } else {
                    print_endpoint(endpoint);
                }
            }
        }
        WebhooksCommand::Remove { id } => {
            client.send("DELETE", &format!("/v1/webhooks/{id}"), None).await?;
            if json {
                out!("{}", json!({"removed": id}));
            } else {
                out!("{id} removed");
            }
        }
        WebhooksCommand::Rotate { id } => {
            let (_, rotated) = client.send("POST", &format!("/v1/webhooks/{id}/rotate"), None).await?;
            if json {
                out!("{rotated}");
            } else {
                out!(
                    "{id} new secret {}  (the old one also signs until {})",
                    text(&rotated["secret"]),
                    text(&rotated["previous_secret_expires_at"])
                );
            }
        }
        WebhooksCommand::Test { id } => {
            let (_, sent) = client.send("POST", &format!("/v1/webhooks/{id}/test"), None).await?;
            if json {
                out!("{sent}");
            } else if sent["delivered"] == true {
                out!("delivered: {} in {} ms", sent["status"], sent["latency_ms"]);
            } else {
                out!("not delivered: {} in {} ms", outcome(&sent), sent["latency_ms"]);
            }
            if sent["delivered"] != true {
                return Err(CliError::Rejected("the endpoint did not accept the test event".into()));
            }
        }
        WebhooksCommand::Deliveries { task_id } => {
            let (_, page) = client.send("GET", &format!("/v1/tasks/{task_id}/deliveries"), None).await?;
            for d in page["deliveries"].as_array().into_iter().flatten() {
                if json {
                    out!("{d}");
                    continue;
                }
                let target = d["target"]["id"].as_str().unwrap_or("task");
                let then = match (d["dead_lettered"] == true, d["next_attempt_at"].as_str()) {
                    (true, _) => "dead-lettered".to_owned(),
                    (false, Some(at)) => format!("next {at}"),
                    (false, None) => String::new(),
                };
                out!(
                    "{}  #{:<3} {:<16} {:<28} attempt {:>2}  {:<14} {:>5} ms  {then}",
                    text(&d["time"]),
                    d["seq"],
                    text(&d["type"]),
                    target,
                    d["attempt"],
                    outcome(d),
                    d["latency_ms"],
                );
            }
        }
        WebhooksCommand::Redrive { task } => redrive(task, json).await?,
    }
    Ok(())
}

/// `agentq webhooks redrive`: needs no API key, only AWS credentials.
pub async fn redrive(task: Option<String>, json: bool) -> Result<(), CliError> {
    let task = task.map(|t| t.parse().map_err(|_| CliError::Usage(format!("{t:?} is not a task id")))).transpose()?;
    let config = agentq::runtime::config::Config::from_env()
        .map_err(|e| CliError::Usage(format!("{e} (make up writes .run/cli.env)")))?;
    let (Some(queue_url), Some(dead_url)) = (&config.webhooks.queue_url, &config.webhooks.dead_letter_url) else {
        return Err(CliError::Usage(
            "AGENTQ_WEBHOOK_QUEUE_URL and AGENTQ_WEBHOOK_DLQ_URL must be set (make up writes them to .run/cli.env)"
                .into(),
        ));
    };
    let sdk = agentq::runtime::aws::sdk_config(&agentq::runtime::config::AwsTimeouts::TOOLS).await;
    let sqs = agentq::runtime::aws::sqs(&sdk);
    let moved = agentq::usecases::webhooks::redrive(
        &SqsDeadLetters::new(sqs.clone()),
        dead_url,
        &SqsDeliveryQueue::new(sqs, queue_url.clone()),
        task,
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| CliError::Unavailable(e.to_string()))?;
    if json {
        out!("{}", json!({"moved": moved}));
    } else {
        out!("moved {moved} delivery(ies) back to the webhook queue; each is attempted again from the start");
    }
    if task.is_some() && moved == 0 {
        return Err(CliError::Rejected("that task has no dead-lettered delivery".into()));
    }
    Ok(())
}

fn print_endpoint(e: &Value) {
    let events: Vec<&str> = e["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let events = if events.is_empty() { "all events".to_owned() } else { events.join(",") };
    out!("{}  {}  {events}  created {}", text(&e["id"]), text(&e["url"]), text(&e["created_at"]));
}

/// What an attempt came to, in a few words.
fn outcome(d: &Value) -> String {
    match (d["status"].as_u64(), d["error"].as_str()) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "no answer".to_owned(),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
