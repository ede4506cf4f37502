//! `agentq fork` (one task from a step) and `agentq rerun` (the tasks that failed lately,
//! again, after a fix): both make forks (docs/fork.md), so a rerun keeps the failed task's
//! lineage and, from its last good step, does not pay again for the steps before it.

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::CliError;
use crate::api::Client;

/// What `agentq fork` asks for.
pub struct ForkArgs {
    pub id: String,
    pub from_step: u32,
    pub message: Option<String>,
    pub model: Option<String>,
    /// `TOOL_USE_ID=CONTENT` pairs.
    pub tool_results: Vec<String>,
    pub max_iterations: Option<u32>,
    pub idempotency_key: Option<String>,
    pub wait: bool,
}

pub async fn fork(client: &Client, args: ForkArgs) -> Result<(), CliError> {
    let mut edit = serde_json::Map::new();
    if let Some(m) = args.message {
        edit.insert("message".into(), m.into());
    }
    if let Some(m) = args.model {
        edit.insert("model".into(), m.into());
    }
    let results: Vec<Value> = args
        .tool_results
        .iter()
        .map(|pair| {
            let (id, content) = pair
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--tool-result takes TOOL_USE_ID=CONTENT, not {pair:?}")))?;
            Ok(json!({"tool_use_id": id, "content": content}))
        })
        .collect::<Result<_, CliError>>()?;
    if !results.is_empty() {
        edit.insert("tool_results".into(), results.into());
    }
    let mut body = json!({"from_step": args.from_step});
    if !edit.is_empty() {
        body["edit"] = Value::Object(edit);
    }
    if let Some(n) = args.max_iterations {
        body["max_iterations"] = n.into();
    }
    let (_, accepted) = client.fork(&args.id, &body, args.idempotency_key.as_deref()).await?;
    let id = accepted["task_id"].as_str().unwrap_or_default().to_owned();
    if args.wait {
        return client.watch(&id).await;
    }
    if client.json() {
        out!("{accepted}");
    } else {
        out!("{id}");
    }
    Ok(())
}

/// What `agentq rerun` asks for.
pub struct RerunArgs {
    pub status: String,
    pub since: std::time::Duration,
    pub from_last_good_step: bool,
    pub dry_run: bool,
}

/// The last step a run can go on from: the last model answer that asked for tools (their
/// results are recorded), or 0 to start over.
fn last_good_step(steps: &[Value]) -> u32 {
    steps
        .iter()
        .filter(|s| s["kind"] == "model" && s["stop_reason"] == "tool_use")
        .filter_map(|s| s["step"].as_u64())
        .max()
        .unwrap_or(0) as u32
}

/// What the steps after `from_step` cost when they were recorded: what a rerun from there
/// is likely to cost again.
fn cost_after(steps: &[Value], from_step: u32) -> f64 {
    steps
        .iter()
        .filter(|s| s["kind"] == "model" && s["step"].as_u64().unwrap_or(0) > u64::from(from_step))
        .filter_map(|s| s["usage"]["cost_usd"].as_f64())
        .sum()
}

pub async fn rerun(client: &Client, args: RerunArgs) -> Result<(), CliError> {
    let since = OffsetDateTime::now_utc() - args.since;
    let tasks = client.tasks_since(&args.status, since).await?;
    let (mut estimate, mut forked) = (0.0, 0);
    for task in &tasks {
        let id = task["task_id"].as_str().unwrap_or_default();
        let steps = client.steps_json(id).await?;
        let from_step = if args.from_last_good_step { last_good_step(&steps) } else { 0 };
        let cost = cost_after(&steps, from_step);
        estimate += cost;
        if args.dry_run {
            if client.json() {
                out!("{}", json!({"task_id": id, "from_step": from_step, "estimated_cost_usd": cost}));
            } else {
                out!("{id}  from step {from_step}  ~${cost:.6}  {}", task["error"]["code"].as_str().unwrap_or(""));
            }
            continue;
        }
        // The same rerun twice within a day is one fork per task.
        let key = format!("rerun-{id}-{from_step}");
        match client.fork(id, &json!({"from_step": from_step}), Some(&key)).await {
            Ok((_, accepted)) => {
                forked += 1;
                if client.json() {
                    out!("{}", json!({"task_id": id, "fork": accepted["task_id"], "from_step": from_step}));
                } else {
                    out!("{id} -> {}  from step {from_step}", accepted["task_id"].as_str().unwrap_or(""));
                }
            }
            Err(e) => eprintln!("agentq: {id} was not rerun: {e}"),
        }
    }
    if !client.json() {
        let what = if args.dry_run { "would rerun" } else { "reran" };
        let n = if args.dry_run { tasks.len() } else { forked };
        eprintln!("{what} {n} of {} {} tasks; estimated cost ${estimate:.6}", tasks.len(), args.status);
    }
    if !args.dry_run && forked < tasks.len() {
        return Err(CliError::Rejected(format!("{} of {} tasks were not rerun", tasks.len() - forked, tasks.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_good_step_is_the_last_that_asked_for_tools_and_the_estimate_counts_what_follows() {
        let steps = vec![
            json!({"kind": "model", "step": 1, "stop_reason": "tool_use", "usage": {"cost_usd": 0.1}}),
            json!({"kind": "tool", "step": 1}),
            json!({"kind": "model", "step": 2, "stop_reason": "tool_use", "usage": {"cost_usd": 0.2}}),
            json!({"kind": "model", "step": 3, "stop_reason": "refusal", "usage": {"cost_usd": 0.3}}),
        ];
        assert_eq!(last_good_step(&steps), 2);
        assert!((cost_after(&steps, 2) - 0.3).abs() < 1e-12);
        assert!((cost_after(&steps, 0) - 0.6).abs() < 1e-12);
        assert_eq!(last_good_step(&[]), 0);
    }
}
