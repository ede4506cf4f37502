//! Structured results: a task's `output_schema` (a JSON Schema its final answer must match),
//! how the model is told, how an answer is checked, and what the model is told when it is not
//! valid. The schema is limited in size and depth when submitted, so checking an answer is
//! cheap and a schema cannot take the worker down.

use serde_json::Value;

/// The largest schema a task may carry, serialized.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// The deepest nesting of objects and arrays a schema may have.
pub const MAX_SCHEMA_DEPTH: usize = 16;
/// How many times an invalid answer goes back to the model before the task fails
/// `output_invalid`.
pub const MAX_CORRECTIONS: u32 = 2;
/// Validation errors reported at most (to the model and in the task's error).
const MAX_ERRORS: usize = 10;

/// A task's output schema, compiled.
#[derive(Debug)]
pub struct OutputSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

impl OutputSchema {
    /// Checks a submitted schema: an object, within the limits, that compiles as a JSON
    /// Schema. The error says what is wrong, for the `output_schema` field.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        Self::check_shape(schema)?;
        let validator = jsonschema::validator_for(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))?;
        Ok(Self { schema: schema.clone(), validator })
    }

    /// What [`Self::compile`] checks short of compiling: an object, within the size and depth
    /// limits.
    pub fn check_shape(schema: &Value) -> Result<(), String> {
        if !schema.is_object() {
            return Err("must be a JSON Schema object".into());
        }
        let size = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
        if size > MAX_SCHEMA_BYTES {
            return Err(format!("is {size} bytes serialized; the limit is {MAX_SCHEMA_BYTES}"));
        }
        if depth(schema) > MAX_SCHEMA_DEPTH {
            return Err(format!("nests deeper than {MAX_SCHEMA_DEPTH} levels"));
        }
        Ok(())
    }

    /// What the model is told up front (the system prompt).
    pub fn instruction(&self) -> String {
        format!(
            "When you give your final answer, reply with only a JSON value (no prose, no code fence) \
             that is valid against this JSON Schema:\n{}",
            self.schema
        )
    }

    /// The JSON of a final answer if it is valid, else what is wrong with it. A code fence
    /// around the JSON is tolerated.
    pub fn check(&self, text: &str) -> Result<Value, Vec<String>> {
        let value: Value =
            serde_json::from_str(unfenced(text)).map_err(|e| vec![format!("the answer is not JSON: {e}")])?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(MAX_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
            })
            .collect();
        if errors.is_empty() { Ok(value) } else { Err(errors) }
    }

    /// What the model is told after an invalid answer.
    pub fn correction(errors: &[String]) -> String {
        format!(
            "Your answer is not valid against the required JSON Schema:\n- {}\nReply with only the corrected JSON value.",
            errors.join("\n- ")
        )
    }
}

/// The text inside a ```json … ``` fence, or the text itself.
fn unfenced(text: &str) -> &str {
    let t = text.trim();
    let Some(inner) = t.strip_prefix("```").and_then(|r| r.strip_suffix("```")) else { return t };
    // The fence's language tag runs to the end of its first line.
    inner.split_once('\n').map_or(inner, |(_, body)| body).trim()
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn person() -> OutputSchema {
        OutputSchema::compile(&json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_answer_is_its_json_with_or_without_a_fence() {
        let s = person();
        assert_eq!(s.check(r#"{"name":"Ada","age":36}"#).unwrap(), json!({"name": "Ada", "age": 36}));
        assert_eq!(s.check("```json\n{\"name\":\"Ada\",\"age\":36}\n```").unwrap()["age"], 36);
    }

    #[test]
    fn an_invalid_answer_names_each_problem() {
        let s = person();
        let errors = s.check(r#"{"name": 7, "age": -1, "extra": true}"#).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("/name")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/age")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("extra")), "{errors:?}");
        assert!(s.check("Ada is 36.").unwrap_err()[0].starts_with("the answer is not JSON"));
    }

    #[test]
    fn schemas_that_are_not_objects_too_big_too_deep_or_invalid_are_refused() {
        assert!(OutputSchema::compile(&json!("string")).is_err());
        assert!(
            OutputSchema::compile(&json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)})).is_err()
        );
        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_SCHEMA_DEPTH {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(OutputSchema::compile(&deep).unwrap_err().contains("deeper"));
        assert!(
            OutputSchema::compile(&json!({"type": "no such type"})).unwrap_err().contains("not a valid JSON Schema")
        );
    }
}
