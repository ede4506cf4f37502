//! The dead-letter sweeper: every minute it reads the dead-letter queues and marks the task
//! of each message there `failed` with code `delivery_failed` (and the last error a worker
//! recorded), so no client polls a task that will never finish. Messages stay in the queues
//! for inspection and `agentq dlq redrive`.
//!
//! A task the worker already failed on its last delivery (`models_unavailable`) is left as
//! it is; this catches the rest: a worker that crashed, timed out or could not write.

use std::sync::Arc;
use std::time::Duration;

use agentq::queue::DeadLetters;
use agentq::store::{TaskDeadLetter, TaskRead};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

/// What the sweeper reads and writes.
pub trait SweepStore: TaskDeadLetter + TaskRead {}
impl<T: TaskDeadLetter + TaskRead> SweepStore for T {}

/// The function's dependencies, built once per cold start.
#[derive(Clone)]
pub struct Sweeper {
    pub store: Arc<dyn SweepStore>,
    pub dead: Arc<dyn DeadLetters>,
    pub dlqs: Vec<String>,
}

/// How long the scheduled sweep reads the queues, within the function's timeout.
pub const SWEEP_BUDGET: Duration = Duration::from_secs(40);

/// One sweep of every dead-letter queue, within `budget`.
pub async fn sweep(s: &Sweeper, budget: Duration) -> anyhow::Result<(usize, usize)> {
    Ok(agentq::usecases::deadletter::sweep(s.dead.as_ref(), s.store.as_ref(), &s.dlqs, budget).await?)
}

/// Handles the scheduled event.
pub async fn handle(s: &Sweeper, _event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    let (seen, marked) = sweep(s, SWEEP_BUDGET).await?;
    if seen > 0 {
        tracing::warn!(dead_messages = seen, tasks_marked = marked, "dead-letter queues swept");
    }
    agentq::observe::metrics::record()
        .value("DeadLetterMessages", seen as f64, agentq::observe::metrics::Unit::Count)
        .value("DeadLetterTasksMarked", marked as f64, agentq::observe::metrics::Unit::Count)
        .emit();
    Ok(json!({"dead_messages": seen, "tasks_marked": marked}))
}
