//! Tools the model may call: a small trait, a registry that runs them, and the built-ins.
//!
//! A tool failure is never a task failure: it goes back to the model as a `tool_result` with
//! `is_error: true`, and the model decides what to do next.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::llm::ToolSpec;

/// Why a tool call failed, in words for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

#[async_trait]
pub trait Tool: Send + Sync {
    fn spec(&self) -> &ToolSpec;

    async fn call(&self, input: &Value) -> Result<String, ToolError>;
}

/// What a tool call produced, ready to become a `tool_result` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

/// The tools offered to the model, in a fixed order.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.iter().map(|t| &t.spec().name)).finish()
    }
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools.
    pub fn builtin() -> Self {
        Self::new().with(Calculator::new())
    }

    pub fn with(mut self, tool: impl Tool + 'static) -> Self {
        self.tools.push(Arc::new(tool));
        self
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec().clone()).collect()
    }

    /// Runs the named tool. An unknown name is the model's mistake, answered as an error.
    pub async fn run(&self, name: &str, input: &Value) -> ToolOutput {
        let Some(tool) = self.tools.iter().find(|t| t.spec().name == name) else {
            return ToolOutput { content: format!("there is no tool named {name:?}"), is_error: true };
        };
        match tool.call(input).await {
            Ok(content) => ToolOutput { content, is_error: false },
            Err(e) => ToolOutput { content: e.0, is_error: true },
        }
    }
}

/// Arithmetic through evalexpr, a parser and evaluator with no access to anything outside
/// the expression: no I/O, no variables carried between calls.
pub struct Calculator {
    spec: ToolSpec,
}

impl Calculator {
    pub fn new() -> Self {
        Self {
            spec: ToolSpec {
                name: "calculator".into(),
                description: "Evaluates an arithmetic expression and returns the number. Supports \
                              + - * / % ^, parentheses and math functions such as math::sqrt."
                    .into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {
                        "expression": {"type": "string", "description": "e.g. (2 + 3) * 4.5"}
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

    async fn call(&self, input: &Value) -> Result<String, ToolError> {
        let expr = input
            .get("expression")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError("input must be an object with a string field \"expression\"".into()))?;
        if expr.len() > MAX_EXPRESSION_LEN {
            return Err(ToolError(format!("the expression is longer than {MAX_EXPRESSION_LEN} characters")));
        }
        match evalexpr::eval(expr) {
            Ok(v @ (evalexpr::Value::Int(_) | evalexpr::Value::Float(_))) => Ok(v.to_string()),
            Ok(other) => Err(ToolError(format!("the expression is not a number: {other}"))),
            Err(e) => Err(ToolError(format!("cannot evaluate {expr:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_calculator_evaluates_arithmetic() {
        let r = ToolRegistry::builtin();
        let out = r.run("calculator", &json!({"expression": "(2 + 3) * 4"})).await;
        assert_eq!(out, ToolOutput { content: "20".into(), is_error: false });
        let out = r.run("calculator", &json!({"expression": "7 / 2.0"})).await;
        assert_eq!(out.content, "3.5");
    }

    #[tokio::test]
    async fn bad_input_is_an_error_result_not_a_crash() {
        let r = ToolRegistry::builtin();
        assert!(r.run("calculator", &json!({"expression": "1 +"})).await.is_error);
        assert!(r.run("calculator", &json!({"expr": "1"})).await.is_error);
        assert!(r.run("calculator", &json!("1+1")).await.is_error);
        assert!(r.run("calculator", &json!({"expression": "\"a\" + \"b\""})).await.is_error);
        assert!(r.run("calculator", &json!({"expression": "1/0"})).await.is_error);
    }

    #[tokio::test]
    async fn an_unknown_tool_is_an_error_result() {
        let out = ToolRegistry::builtin().run("rm", &json!({})).await;
        assert!(out.is_error);
        assert!(out.content.contains("rm"));
    }
}
