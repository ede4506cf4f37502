//! Batches: up to [`MAX_BATCH_TASKS`] tasks submitted in one request, each admitted on its own
//! (its fields checked, the rate limit, the running cap and the budget applied to it), the
//! answer listing each item's task id or error in the request's order. The batch is kept so
//! its progress and results can be read as a whole.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::task::{Allowed, FieldError, RequestError, TaskId, TaskRequest};

/// Most tasks in one batch.
pub const MAX_BATCH_TASKS: usize = 1000;
/// Longest `custom_id`, in characters.
pub const MAX_CUSTOM_ID_CHARS: usize = 64;

/// A batch id: `bat_<ULID>`.
pub fn new_batch_id() -> String {
    format!("bat_{}", ulid::Ulid::generate())
}

/// Whether `raw` has the form of a batch id.
pub fn is_batch_id(raw: &str) -> bool {
    raw.strip_prefix("bat_").is_some_and(|u| u.len() == 26 && ulid::Ulid::from_string(u).is_ok())
}

/// Why one item of a batch was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// As a submit's problem `code` would say: `validation_failed`, `rate_limited`,
    /// `concurrency_limited`, `budget_exhausted`, `enqueue_failed`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ItemError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), errors: Vec::new() }
    }
}

/// One item of a batch, as the answer lists it: its task, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

/// A stored batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch_id: String,
    pub tenant_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub items: Vec<BatchItem>,
}

/// One item of a batch body: its `custom_id`, and the task it asks for or what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRequest {
    pub custom_id: Option<String>,
    pub task: Result<TaskRequest, Vec<FieldError>>,
}

/// Parses `{"tasks": [...]}`: each item like a submit body with an optional `custom_id`. An
/// item with bad fields is answered in its place; only a body that is not a batch is refused.
pub fn parse_batch(body: &[u8], allowed: &Allowed) -> Result<Vec<ItemRequest>, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(RequestError::Invalid(vec![FieldError::new("", "the body must be a JSON object")]));
    };
    let items = match fields.remove("tasks") {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(RequestError::Invalid(vec![FieldError::new("tasks", "must not be empty")]));
        }
        Some(Value::Array(items)) if items.len() > MAX_BATCH_TASKS => {
            return Err(RequestError::Invalid(vec![FieldError::new(
                "tasks",
                format!("holds {} tasks; a batch holds at most {MAX_BATCH_TASKS}", items.len()),
            )]));
        }
        Some(Value::Array(items)) => items,
        None => return Err(RequestError::Invalid(vec![FieldError::new("tasks", "is required")])),
        Some(_) => return Err(RequestError::Invalid(vec![FieldError::new("tasks", "must be an array of tasks")])),
    };
    let mut unknown: Vec<_> = fields.keys().cloned().collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(RequestError::Invalid(
            unknown.into_iter().map(|k| FieldError::new(k, "is not a known field")).collect(),
        ));
    }
    Ok(items.into_iter().map(|item| parse_item(item, allowed)).collect())
}

fn parse_item(item: Value, allowed: &Allowed) -> ItemRequest {
    let Value::Object(mut fields) = item else {
        return ItemRequest { custom_id: None, task: Err(vec![FieldError::new("", "each task must be an object")]) };
    };
    let (custom_id, id_error) = match fields.remove("custom_id") {
        None | Some(Value::Null) => (None, None),
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_CUSTOM_ID_CHARS => (Some(id), None),
        Some(_) => (
            None,
            Some(FieldError::new("custom_id", format!("must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters"))),
        ),
    };
    let body = Value::Object(fields).to_string();
    let task = match (TaskRequest::parse(body.as_bytes(), allowed), id_error) {
        (Ok(task), None) => Ok(task),
        (Ok(_), Some(e)) => Err(vec![e]),
        (Err(RequestError::Invalid(mut errors)), e) => {
            errors.extend(e);
            Err(errors)
        }
        (Err(RequestError::NotJson(m)), _) => Err(vec![FieldError::new("", m)]),
    };
    ItemRequest { custom_id, task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<Vec<ItemRequest>, RequestError> {
        parse_batch(body.to_string().as_bytes(), &Allowed::default())
    }

    #[test]
    fn each_item_is_parsed_on_its_own_and_keeps_its_custom_id() {
        let items =
            parse(json!({"tasks": [{"prompt": "a", "custom_id": "row-1"}, {"prompt": ""}, 5, {"prompt": "c", "custom_id": 3}]}))
                .unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].custom_id.as_deref(), Some("row-1"));
        assert_eq!(items[0].task.as_ref().unwrap().prompt(), "a");
        assert_eq!(items[1].task.as_ref().unwrap_err()[0].field, "prompt");
        assert!(items[2].task.is_err());
        assert_eq!(items[3].task.as_ref().unwrap_err()[0].field, "custom_id");
    }

    #[test]
    fn a_body_that_is_not_a_batch_is_refused_whole() {
        assert!(matches!(parse(json!({"tasks": []})), Err(RequestError::Invalid(_))));
        assert!(matches!(parse(json!({"task": [{"prompt": "a"}]})), Err(RequestError::Invalid(_))));
        let many: Vec<Value> = (0..=MAX_BATCH_TASKS).map(|_| json!({"prompt": "a"})).collect();
        assert!(matches!(parse(json!({"tasks": many})), Err(RequestError::Invalid(_))));
        assert!(is_batch_id(&new_batch_id()));
        assert!(!is_batch_id("bat_nope"));
    }
}
