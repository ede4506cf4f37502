//! Starting held tasks (a tenant over its cap with `over_cap: hold`): whenever a slot may have
//! freed (a task ended or began to wait, a held submit, the reconciler's minute), the oldest
//! held tasks of the tenant leave its line, take the free slots, and get their messages.
//! Shared by the submit function, the worker and the reconciler.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::domain::task::TaskMessage;
use crate::queue::TaskQueue;
use crate::store::TaskCreate;

/// Starts what the tenant's free slots allow; returns how many tasks it started. Failures are
/// logged, not returned: a task left in line is started by the next call (the reconciler's at
/// the latest), and one whose message failed is `queued` and resent by the reconciler.
/// `holding_only`: skip a tenant that does not hold work now (see [`TaskCreate::release_held`]).
pub async fn start_held(
    store: &dyn TaskCreate,
    queue: &dyn TaskQueue,
    tenant: &str,
    holding_only: bool,
    now: OffsetDateTime,
) -> usize {
    let started = match store.release_held(tenant, holding_only, now).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(
                tenant_id = tenant,
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not start held tasks"
            );
            return 0;
        }
    };
    for task in &started {
        let message = TaskMessage::of(task);
        if let Err(e) = queue.enqueue(&message, &HashMap::new()).await {
            tracing::warn!(task_id = %task.task_id, error = format!("{:#}", e.0), "could not send a started held task's message; the reconciler will");
        }
    }
    if !started.is_empty() {
        tracing::info!(tenant_id = tenant, started = started.len(), "started held tasks");
    }
    started.len()
}
