//! Human in the loop: tool calls a person must approve before they run.
//!
//! A tool needs approval when the deployment says so for every task (`AGENTQ_APPROVAL_TOOLS`,
//! or `"approval": "always"` on an HTTP tool) or the task asks for it on submit
//! (`"approval": {"tools": [...]}`). When the model asks for such a tool, the run stops at that
//! step boundary: the task waits `waiting_for_input` with the calls [`PendingCall`]s, holding no
//! worker, no lease and no slot of its tenant's running cap. Each pending call is answered by a
//! [`Decision`] — approve, reject (the message goes back to the model as an error result) or
//! edit (the tool runs on corrected input) — recorded as a step of the task, and the task goes
//! back to the queue. A wait that outlives its timeout is rejected on the client's behalf.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::task::FieldError;

/// Longest wait a task may ask for: a week.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Shortest wait a task may ask for.
pub const MIN_TIMEOUT_SECS: u64 = 10;
/// Longest reviewer message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Largest edited input, serialized.
pub const MAX_EDIT_BYTES: usize = 64 * 1024;
/// Who decides when nobody did in time.
pub const TIMEOUT_DECIDER: &str = "agentq:timeout";

/// A task's own approval rules, from its submit body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Tools whose every call waits for a decision.
    pub tools: Vec<String>,
    /// How long a wait may last before its calls are rejected; the deployment's default if
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl ApprovalPolicy {
    /// Parses the `approval` field of a submit body; `known` says the tools a task may name.
    pub fn parse(value: Value, known: &crate::domain::task::Allowed, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Value::Object(mut fields) = value else {
            errors.push(FieldError::new("approval", "must be an object like {\"tools\": [\"http_get\"]}"));
            return None;
        };
        let mut policy = Self::default();
        match fields.remove("tools") {
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(name) if !known.knows_tool(&name) => errors.push(FieldError::new(
                            "approval.tools",
                            format!("{name:?} is not a known tool; known: {}", known.known_tools()),
                        )),
                        Value::String(name) if policy.tools.contains(&name) => {}
                        Value::String(name) => policy.tools.push(name),
                        _ => errors.push(FieldError::new("approval.tools", "must hold tool names (strings)")),
                    }
                }
            }
            None => errors.push(FieldError::new("approval.tools", "is required")),
            Some(_) => errors.push(FieldError::new("approval.tools", "must be an array of tool names")),
        }
        match fields.remove("timeout_secs") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_u64() {
                Some(s) if (MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&s) => policy.timeout_secs = Some(s),
                _ => errors.push(FieldError::new(
                    "approval.timeout_secs",
                    format!("must be a whole number of seconds from {MIN_TIMEOUT_SECS} to {MAX_TIMEOUT_SECS}"),
                )),
            },
            Some(_) => errors.push(FieldError::new("approval.timeout_secs", "must be a number of seconds")),
        }
        let mut extra: Vec<_> = fields.keys().cloned().collect();
        extra.sort();
        errors.extend(extra.into_iter().map(|k| FieldError::new(format!("approval.{k}"), "is not a known field")));
        Some(policy)
    }
}

/// A tool call waiting for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCall {
    /// The model step that asked for it.
    pub step: u32,
    pub tool_use_id: String,
    pub name: String,
    pub input: Value,
}

/// What a reviewer decided about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Run it as the model asked.
    Approve,
    /// Do not run it; the model is told (with the reviewer's message, if any).
    Reject,
    /// Run it on the reviewer's input instead.
    Edit,
}

/// A decision on one pending call, recorded as a step of the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub step: u32,
    pub tool_use_id: String,
    pub name: String,
    pub action: Action,
    /// For a rejection: what the model is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For an edit: the input the tool runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Who decided: the API key's id, or [`TIMEOUT_DECIDER`].
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Decision {
    /// What the model reads for a rejected call.
    pub fn rejection_text(&self) -> String {
        match &self.message {
            Some(m) => format!("The reviewer rejected this tool call: {m}"),
            None => "The reviewer rejected this tool call; it was not run.".to_owned(),
        }
    }

    /// The rejections applied to calls nobody decided on within `timeout_secs`.
    pub fn timed_out(pending: &[PendingCall], timeout_secs: u64, at: OffsetDateTime) -> Vec<Self> {
        pending
            .iter()
            .map(|p| Self {
                step: p.step,
                tool_use_id: p.tool_use_id.clone(),
                name: p.name.clone(),
                action: Action::Reject,
                message: Some(format!("no decision was made within {timeout_secs} seconds")),
                input: None,
                by: TIMEOUT_DECIDER.to_owned(),
                at,
            })
            .collect()
    }
}

/// Why a body of decisions was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionError {
    NotJson(String),
    /// The body is malformed (a 422).
    Invalid(Vec<FieldError>),
    /// It answers calls that are not waiting (a stale or repeated decision: a 409).
    Stale(String),
}

/// Parses `{"decisions": [...]}` against the calls now pending: exactly one decision per
/// pending call, each naming a call that is pending.
pub fn parse_decisions(
    body: &[u8],
    pending: &[PendingCall],
    by: &str,
    at: OffsetDateTime,
) -> Result<Vec<Decision>, DecisionError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| DecisionError::NotJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(DecisionError::Invalid(vec![FieldError::new("", "the body must be a JSON object")]));
    };
    let mut errors = Vec::new();
    let items = match fields.remove("decisions") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(DecisionError::Invalid(vec![FieldError::new("decisions", "must not be empty")]));
        }
        None => return Err(DecisionError::Invalid(vec![FieldError::new("decisions", "is required")])),
        Some(_) => return Err(DecisionError::Invalid(vec![FieldError::new("decisions", "must be an array")])),
    };
    errors.extend(fields.keys().map(|k| FieldError::new(k.clone(), "is not a known field")));

    let mut decisions = Vec::new();
    let mut stale = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let at_field = |f: &str| format!("decisions[{i}].{f}");
        let Value::Object(mut d) = item else {
            errors.push(FieldError::new(format!("decisions[{i}]"), "must be an object"));
            continue;
        };
        let id = match d.remove("tool_use_id") {
            Some(Value::String(id)) => id,
            _ => {
                errors.push(FieldError::new(at_field("tool_use_id"), "is required, a string"));
                continue;
            }
        };
        let action = match d.remove("action") {
            Some(Value::String(a)) => match a.as_str() {
                "approve" => Action::Approve,
                "reject" => Action::Reject,
                "edit" => Action::Edit,
                _ => {
                    errors.push(FieldError::new(at_field("action"), "must be \"approve\", \"reject\" or \"edit\""));
                    continue;
                }
            },
            _ => {
                errors.push(FieldError::new(at_field("action"), "is required: \"approve\", \"reject\" or \"edit\""));
                continue;
            }
        };
        let message = match d.remove("message") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if m.chars().count() <= MAX_MESSAGE_CHARS => Some(m),
            Some(Value::String(_)) => {
                errors.push(FieldError::new(at_field("message"), format!("is over {MAX_MESSAGE_CHARS} characters")));
                None
            }
            Some(_) => {
                errors.push(FieldError::new(at_field("message"), "must be a string"));
                None
            }
        };
        let input = match (d.remove("input"), action) {
            (None | Some(Value::Null), Action::Edit) => {
                errors.push(FieldError::new(at_field("input"), "is required to edit a call: the input it runs on"));
                None
            }
            (None | Some(Value::Null), _) => None,
            (Some(_), Action::Approve | Action::Reject) => {
                errors.push(FieldError::new(at_field("input"), "is only for \"edit\""));
                None
            }
            (Some(Value::Object(m)), Action::Edit) if serialized_len(&m) <= MAX_EDIT_BYTES => Some(Value::Object(m)),
            (Some(Value::Object(_)), Action::Edit) => {
                errors.push(FieldError::new(at_field("input"), format!("is over {MAX_EDIT_BYTES} bytes")));
                None
            }
            (Some(_), Action::Edit) => {
                errors.push(FieldError::new(at_field("input"), "must be an object, as tool inputs are"));
                None
            }
        };
        errors.extend(d.keys().map(|k| FieldError::new(at_field(k), "is not a known field")));
        if !seen.insert(id.clone()) {
            errors.push(FieldError::new(at_field("tool_use_id"), format!("{id:?} is decided twice")));
            continue;
        }
        let Some(call) = pending.iter().find(|p| p.tool_use_id == id) else {
            stale.push(id);
            continue;
        };
        decisions.push(Decision {
            step: call.step,
            tool_use_id: id,
            name: call.name.clone(),
            action,
            message,
            input,
            by: by.to_owned(),
            at,
        });
    }
    if !errors.is_empty() {
        return Err(DecisionError::Invalid(errors));
    }
    if !stale.is_empty() {
        return Err(DecisionError::Stale(format!(
            "no call {} is waiting for a decision (already decided, or from an earlier wait)",
            stale.join(", ")
        )));
    }
    let missing: Vec<&str> =
        pending.iter().filter(|p| !seen.contains(&p.tool_use_id)).map(|p| p.tool_use_id.as_str()).collect();
    if !missing.is_empty() {
        return Err(DecisionError::Invalid(vec![FieldError::new(
            "decisions",
            format!("must answer every pending call; missing: {}", missing.join(", ")),
        )]));
    }
    Ok(decisions)
}

fn serialized_len(m: &Map<String, Value>) -> usize {
    serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pending() -> Vec<PendingCall> {
        vec![
            PendingCall { step: 2, tool_use_id: "tu_a".into(), name: "http_get".into(), input: json!({"url": "x"}) },
            PendingCall { step: 2, tool_use_id: "tu_b".into(), name: "calculator".into(), input: json!({}) },
        ]
    }

    fn parse(body: Value) -> Result<Vec<Decision>, DecisionError> {
        parse_decisions(body.to_string().as_bytes(), &pending(), "key_1", crate::now())
    }

    #[test]
    fn one_decision_per_pending_call_is_accepted_and_attributed() {
        let d = parse(json!({"decisions": [
            {"tool_use_id": "tu_a", "action": "reject", "message": "not that site"},
            {"tool_use_id": "tu_b", "action": "edit", "input": {"expression": "2 + 2"}},
        ]}))
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].action, d[0].step, d[0].by.as_str()), (Action::Reject, 2, "key_1"));
        assert_eq!(d[0].rejection_text(), "The reviewer rejected this tool call: not that site");
        assert_eq!(d[1].input, Some(json!({"expression": "2 + 2"})));
        assert_eq!(d[1].name, "calculator");
    }

    #[test]
    fn a_decision_for_a_call_that_is_not_waiting_is_stale() {
        let r = parse(json!({"decisions": [{"tool_use_id": "tu_old", "action": "approve"}]}));
        assert!(matches!(r, Err(DecisionError::Stale(m)) if m.contains("tu_old")));
    }

    #[test]
    fn every_pending_call_must_be_answered_once() {
        let r = parse(json!({"decisions": [{"tool_use_id": "tu_a", "action": "approve"}]}));
        assert!(matches!(r, Err(DecisionError::Invalid(e)) if e[0].message.contains("tu_b")));
        let twice = json!({"decisions": [
            {"tool_use_id": "tu_a", "action": "approve"}, {"tool_use_id": "tu_a", "action": "reject"},
            {"tool_use_id": "tu_b", "action": "approve"}]});
        assert!(matches!(parse(twice), Err(DecisionError::Invalid(_))));
    }

    #[test]
    fn malformed_decisions_name_their_fields() {
        let r = parse(json!({"decisions": [
            {"tool_use_id": "tu_a", "action": "edit"},
            {"tool_use_id": "tu_b", "action": "approve", "input": {}, "colour": 1},
        ]}));
        let Err(DecisionError::Invalid(e)) = r else { panic!("{r:?}") };
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["decisions[0].input", "decisions[1].input", "decisions[1].colour"]);
        assert!(matches!(parse(json!({"decisions": []})), Err(DecisionError::Invalid(_))));
        assert!(matches!(
            parse(json!({"decisions": [{"action": "maybe", "tool_use_id": "tu_a"}]})),
            Err(DecisionError::Invalid(_))
        ));
    }

    #[test]
    fn a_policy_names_known_tools_and_a_bounded_timeout() {
        let known = crate::domain::task::Allowed {
            tools: vec!["calculator".to_owned(), "http_get".to_owned()],
            ..Default::default()
        };
        let mut errors = Vec::new();
        let p = ApprovalPolicy::parse(json!({"tools": ["http_get"], "timeout_secs": 600}), &known, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(p.unwrap().timeout_secs, Some(600));
        ApprovalPolicy::parse(json!({"tools": ["rm"], "timeout_secs": 1, "x": 1}), &known, &mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["approval.tools", "approval.timeout_secs", "approval.x"]);
    }

    #[test]
    fn a_timed_out_wait_rejects_every_pending_call() {
        let d = Decision::timed_out(&pending(), 60, crate::now());
        assert!(d.iter().all(|d| d.action == Action::Reject && d.by == TIMEOUT_DECIDER));
        assert!(d[0].rejection_text().contains("60 seconds"));
    }
}
