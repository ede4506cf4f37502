//! `agentq batch`: submit a JSONL file of tasks as one batch, follow it with a progress bar,
//! write its results as JSONL, cancel it (docs/batches.md).

use std::io::Write as _;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::CliError;
use crate::api::Client;

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Submit a JSONL file of tasks (one submit body a line, `custom_id` optional) as a batch.
    Submit {
        file: std::path::PathBuf,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for every task to end, with a progress bar, then write the results.
        #[arg(long)]
        wait: bool,
        /// Where `--wait` writes the results, as JSONL (default: standard output).
        #[arg(long, value_name = "FILE")]
        results: Option<std::path::PathBuf>,
    },
    /// Show a batch's counts; with --wait, follow it to its end and write its results.
    Get {
        id: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, value_name = "FILE")]
        results: Option<std::path::PathBuf>,
    },
    /// Cancel every task of a batch that has not ended.
    Cancel { id: String },
}

pub async fn run(command: BatchCommand, client: &Client) -> Result<(), CliError> {
    match command {
        BatchCommand::Submit { file, idempotency_key, wait, results } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let tasks: Vec<Value> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| CliError::Usage(format!("{} line {}: not JSON: {e}", file.display(), n + 1)))
                })
                .collect::<Result<_, _>>()?;
            let (_, accepted) = client.post_batch(&json!({"tasks": tasks}), idempotency_key.as_deref()).await?;
            let id = accepted["batch_id"].as_str().unwrap_or_default().to_owned();
            if client.json() {
                out!("{accepted}");
            } else {
                out!("{id}");
                eprintln!("accepted {}, rejected {}", accepted["accepted"], accepted["rejected"]);
                for item in accepted["items"].as_array().into_iter().flatten().filter(|i| i.get("error").is_some()) {
                    eprintln!(
                        "  {}: {} {}",
                        item["custom_id"].as_str().unwrap_or("-"),
                        item["error"]["code"].as_str().unwrap_or(""),
                        item["error"]["message"].as_str().unwrap_or("")
                    );
                }
            }
            if wait { follow(client, &id, results.as_deref()).await } else { Ok(()) }
        }
        BatchCommand::Get { id, wait: true, results } => follow(client, &id, results.as_deref()).await,
        BatchCommand::Get { id, wait: false, .. } => {
            let batch = client.batch_page(&id, None).await?;
            if client.json() {
                out!("{batch}");
            } else {
                out!("{id}: {} tasks, {}", batch["total"], counts(&batch));
            }
            Ok(())
        }
        BatchCommand::Cancel { id } => {
            let (_, answer) = client.send("DELETE", &format!("/v1/batches/{id}"), None).await?;
            if client.json() {
                out!("{answer}");
            } else {
                out!(
                    "{id}: {} cancelled, {} stop at their next step, {} had ended",
                    answer["cancelled"],
                    answer["cancel_requested"],
                    answer["already_finished"]
                );
            }
            Ok(())
        }
    }
}

fn counts(batch: &Value) -> String {
    batch["counts"]
        .as_object()
        .map(|c| c.iter().filter(|(_, n)| n.as_u64() != Some(0)).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>())
        .unwrap_or_default()
        .join(", ")
}

/// Follows a batch to its end with a progress bar, then writes every item as a JSONL line.
async fn follow(client: &Client, id: &str, results: Option<&std::path::Path>) -> Result<(), CliError> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {bar:30} {pos}/{len} ended · {elapsed} · {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix(id.to_owned());
    loop {
        let batch = client.batch_page(id, None).await?;
        let c = &batch["counts"];
        let ended = ["succeeded", "failed", "cancelled"].iter().filter_map(|k| c[*k].as_u64()).sum::<u64>();
        let accepted = batch["total"].as_u64().unwrap_or(0) - c["rejected"].as_u64().unwrap_or(0);
        bar.set_length(accepted);
        bar.set_position(ended);
        bar.set_message(counts(&batch));
        if batch["done"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bar.finish_and_clear();
    let mut out: Box<dyn std::io::Write> = match results {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut cursor: Option<String> = None;
    let (mut failed, mut total) = (0, 0);
    loop {
        let page = client.batch_page(id, cursor.as_deref()).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            total += 1;
            if item["status"] != "succeeded" {
                failed += 1;
            }
            let _ = writeln!(out, "{item}");
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    if failed > 0 {
        return Err(CliError::TaskDidNotSucceed(format!("{failed} of {total} items of {id} did not succeed")));
    }
    Ok(())
}
