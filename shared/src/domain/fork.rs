//! Fork: a new task that starts where another one was at a step, without paying again for the
//! steps before. The fork inherits the parent's first `from_step` model answers (and their
//! tool results and decisions), copied under its own id and shown as inherited; its next model
//! call is its first own one, and its input may be edited: a message added to the next turn,
//! corrected results for step `from_step`'s tool calls, another model of the chain.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::conversation::{ContentBlock, StopReason};
use crate::domain::steps::Step;
use crate::domain::task::{
    Allowed, FieldError, MAX_METADATA_BYTES, RequestError, TaskId, parse_max_cost, parse_max_iterations,
};

/// Longest message a fork may add to its next turn, in characters.
pub const MAX_MESSAGE_CHARS: usize = 64 * 1024;
/// Most forks a task lists (it may have more; the list keeps the first).
pub const MAX_LISTED_FORKS: usize = 100;

/// A corrected result for one of step `from_step`'s tool calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolEdit {
    pub tool_use_id: String,
    pub content: String,
    #[serde(default)]
    pub is_error: bool,
}

/// Where a fork comes from, and how its next turn is edited: kept on the fork's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    pub task_id: TaskId,
    pub from_step: u32,
    /// Added to the next turn, after step `from_step`'s tool results (or as the next user
    /// message, after a final answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolEdit>,
}

/// A fork, as its parent lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRef {
    pub task_id: TaskId,
    pub from_step: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A validated `POST /v1/tasks/{id}/fork` body (checked against the parent's steps by
/// [`ForkRequest::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ForkRequest {
    pub from_step: u32,
    pub message: Option<String>,
    pub tool_results: Vec<ToolEdit>,
    pub model: Option<String>,
    pub max_iterations: Option<u32>,
    pub max_cost_nanos: Option<u64>,
    pub metadata: Option<Map<String, Value>>,
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

impl ForkRequest {
    /// Parses the body, naming every bad field; `allowed` says which models it may name.
    pub fn parse(body: &[u8], allowed: &Allowed) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(RequestError::Invalid(vec![invalid("", "the body must be a JSON object")]));
        };
        let mut errors = Vec::new();
        let from_step = match fields.remove("from_step") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_else(|| {
                errors.push(invalid("from_step", "must be a whole number of steps, 0 or more"));
                0
            }),
            None => {
                errors.push(invalid("from_step", "is required: how many of the task's model steps to keep"));
                0
            }
            Some(_) => {
                errors.push(invalid("from_step", "must be a number"));
                0
            }
        };
        let (mut message, mut tool_results, mut model) = (None, Vec::new(), None);
        match fields.remove("edit") {
            None | Some(Value::Null) => {}
            Some(Value::Object(mut edit)) => {
                match edit.remove("message") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(m)) if m.trim().is_empty() => {
                        errors.push(invalid("edit.message", "must not be empty"))
                    }
                    Some(Value::String(m)) if m.chars().count() > MAX_MESSAGE_CHARS => {
                        errors.push(invalid("edit.message", format!("is over {MAX_MESSAGE_CHARS} characters")))
                    }
                    Some(Value::String(m)) => message = Some(m),
                    Some(_) => errors.push(invalid("edit.message", "must be a string")),
                }
                match edit.remove("tool_results") {
                    None | Some(Value::Null) => {}
                    Some(v @ Value::Array(_)) => match serde_json::from_value::<Vec<ToolEdit>>(v) {
                        Ok(edits) => tool_results = edits,
                        Err(e) => errors.push(invalid(
                            "edit.tool_results",
                            format!("must be [{{\"tool_use_id\", \"content\", \"is_error\"?}}]: {e}"),
                        )),
                    },
                    Some(_) => errors.push(invalid("edit.tool_results", "must be an array")),
                }
                match edit.remove("model") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(m)) if allowed.models.contains(&m) => model = Some(m),
                    Some(Value::String(m)) => errors.push(invalid(
                        "edit.model",
                        format!("{m:?} is not an allowed model; choose one of {}", allowed.models.join(", ")),
                    )),
                    Some(_) => errors.push(invalid("edit.model", "must be a string")),
                }
                let mut extra: Vec<_> = edit.keys().cloned().collect();
                extra.sort();
                errors.extend(extra.into_iter().map(|k| invalid(&format!("edit.{k}"), "is not a known field")));
            }
            Some(_) => errors.push(invalid("edit", "must be an object")),
        }
        // Checked as a task checks them.
        let max_iterations = match fields.remove("max_iterations") {
            None | Some(Value::Null) => None,
            Some(v) => parse_max_iterations(v, &mut errors),
        };
        let max_cost_nanos = match fields.remove("max_cost_usd") {
            None | Some(Value::Null) => None,
            Some(v) => parse_max_cost(v, &mut errors),
        };
        let metadata = match fields.remove("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                if serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_METADATA_BYTES {
                    errors.push(invalid("metadata", format!("is over {MAX_METADATA_BYTES} bytes serialized")));
                }
                Some(m)
            }
            Some(_) => {
                errors.push(invalid("metadata", "must be an object"));
                None
            }
        };
        let mut unknown: Vec<_> = fields.keys().cloned().collect();
        unknown.sort();
        errors.extend(unknown.into_iter().map(|k| invalid(&k, "is not a known field")));
        if !errors.is_empty() {
            return Err(RequestError::Invalid(errors));
        }
        Ok(Self { from_step, message, tool_results, model, max_iterations, max_cost_nanos, metadata })
    }

    /// Checks the request against the parent's recorded steps: `from_step` must be one it
    /// has, each corrected result must answer one of that step's tool calls, and a fork from a
    /// final answer needs a message to go on with.
    pub fn check(&self, parent_steps: &[Step]) -> Result<(), Vec<FieldError>> {
        let answers: Vec<_> = parent_steps
            .iter()
            .filter_map(|s| match s {
                Step::Model(m) => Some(m),
                _ => None,
            })
            .collect();
        if self.from_step as usize > answers.len() {
            return Err(vec![invalid(
                "from_step",
                format!("the task has {} recorded model steps; from_step is at most that", answers.len()),
            )]);
        }
        let Some(last) = self.from_step.checked_sub(1).map(|i| answers[i as usize]) else {
            return match self.tool_results.is_empty() {
                true => Ok(()),
                false => Err(vec![invalid("edit.tool_results", "from step 0 there are no tool calls to correct")]),
            };
        };
        let calls: Vec<&str> = last
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let mut errors: Vec<FieldError> = self
            .tool_results
            .iter()
            .filter(|e| !calls.contains(&e.tool_use_id.as_str()))
            .map(|e| {
                invalid(
                    "edit.tool_results",
                    format!("{:?} is not a tool call of step {}", e.tool_use_id, self.from_step),
                )
            })
            .collect();
        let goes_on = matches!(last.stop_reason, StopReason::ToolUse | StopReason::PauseTurn);
        if !goes_on && self.message.is_none() {
            errors.push(invalid(
                "edit.message",
                format!(
                    "step {} is the task's final answer: give a message for the fork to go on with",
                    self.from_step
                ),
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// The steps a fork inherits from its parent's: the model answers up to `from_step`, their
/// decisions, and their tool results, with step `from_step`'s corrected as the fork says.
pub fn inherited(parent_steps: &[Step], origin: &ForkOrigin) -> Vec<Step> {
    parent_steps
        .iter()
        .filter(|s| s.step() <= origin.from_step)
        .map(|s| match s {
            Step::Tool(t) if t.step == origin.from_step => {
                let mut t = t.clone();
                if let Some(edit) = origin.tool_results.iter().find(|e| e.tool_use_id == t.tool_use_id) {
                    t.content = edit.content.clone();
                    t.is_error = edit.is_error;
                }
                Step::Tool(t)
            }
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps() -> Vec<Step> {
        crate::domain::steps::fixtures::two_steps()
    }

    fn parse(body: Value) -> Result<ForkRequest, RequestError> {
        let allowed = Allowed { models: vec!["m".into()], tools: vec![], ..Default::default() };
        ForkRequest::parse(body.to_string().as_bytes(), &allowed)
    }

    #[test]
    fn a_fork_from_a_tool_step_may_correct_its_results() {
        let r = parse(json!({"from_step": 1, "edit": {"tool_results": [{"tool_use_id": "tu_1", "content": "41"}]}}))
            .unwrap();
        assert_eq!(r.check(&steps()), Ok(()));
        let origin =
            ForkOrigin { task_id: TaskId::new(), from_step: 1, message: None, tool_results: r.tool_results.clone() };
        let kept = inherited(&steps(), &origin);
        assert_eq!(kept.len(), 2, "the answer of step 2 is not inherited");
        assert!(matches!(&kept[1], Step::Tool(t) if t.content == "41"));
    }

    #[test]
    fn a_fork_must_name_a_recorded_step_and_its_own_calls() {
        let far = parse(json!({"from_step": 3})).unwrap();
        assert_eq!(far.check(&steps()).unwrap_err()[0].field, "from_step");
        let wrong = parse(json!({"from_step": 1, "edit": {"tool_results": [{"tool_use_id": "tu_9", "content": "x"}]}}));
        assert_eq!(wrong.unwrap().check(&steps()).unwrap_err()[0].field, "edit.tool_results");
        let final_answer = parse(json!({"from_step": 2})).unwrap();
        assert_eq!(final_answer.check(&steps()).unwrap_err()[0].field, "edit.message");
        let go_on = parse(json!({"from_step": 2, "edit": {"message": "now in French"}})).unwrap();
        assert_eq!(go_on.check(&steps()), Ok(()));
    }

    #[test]
    fn bad_fields_are_named() {
        let Err(RequestError::Invalid(e)) =
            parse(json!({"edit": {"model": "gpt-9", "colour": 1}, "max_iterations": 0, "x": 1}))
        else {
            panic!()
        };
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["from_step", "edit.model", "edit.colour", "max_iterations", "x"]);
    }
}
