//! The JSON shapes of the HTTP API, shared by the handlers and by anything that reads them
//! (tests, the local tools).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::task::{TaskError, TaskId, TaskRecord, TaskResult, TaskStatus};
use crate::usage::Usage;

/// The answer to an accepted submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub task_id: TaskId,
    pub status: TaskStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressView {
    pub step: u32,
    pub max_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cost_usd: u.cost_usd(),
        }
    }
}

/// A task as a client sees it: everything but the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: TaskId,
    pub status: TaskStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub progress: ProgressView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub usage: UsageView,
    /// Usage and cost per model that answered (more than one after a fallback).
    pub usage_by_model: BTreeMap<String, UsageView>,
    /// Model calls made.
    pub iterations: u32,
    /// The model that gave the latest answer, once one has.
    pub model: Option<String>,
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        Self {
            task_id: r.task_id,
            status: r.status,
            created_at: r.created_at,
            updated_at: r.updated_at,
            progress: ProgressView { step: r.step, max_steps: r.max_iterations },
            result: r.result.clone(),
            error: r.error.clone(),
            usage: r.usage.into(),
            usage_by_model: r.usage_by_model.iter().map(|(m, u)| (m.clone(), (*u).into())).collect(),
            iterations: r.step,
            model: r.model.clone(),
        }
    }
}
