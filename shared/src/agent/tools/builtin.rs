//! Built-in tools that touch nothing outside the process: `calculator` and `current_time`.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolError};
use crate::llm::ToolSpec;

/// Arithmetic through evalexpr, a parser and evaluator with no access to anything outside
/// the expression: no I/O, no variables carried between calls.
pub struct Calculator {
    spec: ToolSpec,
}

impl Calculator {
    pub const NAME: &str = "calculator";

    pub fn new() -> Self {
        Self {
            spec: ToolSpec {
                name: Self::NAME.into(),
                description: "Evaluates an arithmetic expression and returns the number. Supports \
                              + - * / % ^, parentheses and math functions such as math::sqrt."
                    .into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {
                        "expression": {"type": "string", "maxLength": MAX_EXPRESSION_LEN, "description": "e.g. (2 + 3) * 4.5"}
                    },
                    "required": ["expression"],
                    "additionalProperties": false
                }),
            },
        }
    }
}

impl Default for Calculator {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest expression evaluated; the model has no reason to send more.
const MAX_EXPRESSION_LEN: usize = 1_000;

#[async_trait]
impl Tool for Calculator {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, input: &Value, _: &ToolContext) -> Result<String, ToolError> {
        let expr = input["expression"].as_str().unwrap_or_default();
        match evalexpr::eval(expr) {
            Ok(v @ (evalexpr::Value::Int(_) | evalexpr::Value::Float(_))) => Ok(v.to_string()),
            Ok(other) => Err(ToolError(format!("the expression is not a number: {other}"))),
            Err(e) => Err(ToolError(format!("cannot evaluate {expr:?}: {e}"))),
        }
    }
}

/// The current date and time in UTC.
pub struct CurrentTime {
    spec: ToolSpec,
}

impl CurrentTime {
    pub const NAME: &str = "current_time";

    pub fn new() -> Self {
        Self {
            spec: ToolSpec {
                name: Self::NAME.into(),
                description: "Returns the current date and time in UTC (RFC 3339) and as a Unix timestamp.".into(),
                input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            },
        }
    }
}

impl Default for CurrentTime {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, _: &Value, _: &ToolContext) -> Result<String, ToolError> {
        let now = crate::now();
        let text = now.format(&time::format_description::well_known::Rfc3339).map_err(|e| ToolError(e.to_string()))?;
        Ok(json!({"utc": text, "unix": now.unix_timestamp(), "weekday": now.weekday().to_string()}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ToolRegistry;

    fn ctx() -> ToolContext {
        ToolContext::default()
    }

    #[tokio::test]
    async fn the_calculator_evaluates_arithmetic() {
        let r = ToolRegistry::builtin();
        let out = r.run("calculator", &json!({"expression": "(2 + 3) * 4"}), &ctx()).await;
        assert_eq!((out.content.as_str(), out.is_error), ("20", false));
        let out = r.run("calculator", &json!({"expression": "7 / 2.0"}), &ctx()).await;
        assert_eq!(out.content, "3.5");
    }

    #[tokio::test]
    async fn expressions_that_are_not_numbers_are_error_results() {
        let r = ToolRegistry::builtin();
        for expr in ["1 +", "\"a\" + \"b\"", "1/0", "x = 5"] {
            assert!(r.run("calculator", &json!({"expression": expr}), &ctx()).await.is_error, "{expr}");
        }
        let long = "1+".repeat(600) + "1";
        assert!(r.run("calculator", &json!({"expression": long}), &ctx()).await.is_error);
    }

    #[tokio::test]
    async fn current_time_answers_utc() {
        let out = ToolRegistry::builtin().run("current_time", &json!({}), &ctx()).await;
        assert!(!out.is_error);
        let v: Value = serde_json::from_str(&out.content).unwrap();
        assert!(v["utc"].as_str().unwrap().ends_with('Z'));
        assert!(v["unix"].as_i64().unwrap() > 1_700_000_000);
    }
}
