//! Amazon Bedrock's Converse API through aws-sdk-bedrockruntime, so a deployment can call
//! models with the function's IAM role instead of an API key. The SDK's standard endpoint
//! override (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`) points it at a fake in tests.
//!
//! Errors are classified by their HTTP status, like the other providers: throttling (429) and
//! service faults (5xx) are transient; a validation error (400) is the request's fault;
//! access denied (403) and an unknown model (404) make the model unusable.

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::types::{
    self as bt, ContentBlock as BContent, ConversationRole, InferenceConfiguration, SystemContentBlock, Tool,
    ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolResultStatus, ToolSpecification,
    ToolUseBlock,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use super::{ContentBlock, Model, ModelError, ModelRequest, ModelResponse, Role, StopReason, TokenUsage};

/// A client for one Bedrock model id (or inference profile).
#[derive(Debug, Clone)]
pub struct BedrockModel {
    client: Client,
    model: String,
    max_tokens: u32,
}

impl BedrockModel {
    pub fn new(client: Client, model: impl Into<String>, max_tokens: u32) -> Self {
        Self { client, model: model.into(), max_tokens }
    }
}

fn to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (_, Some(i)) => Number::NegInt(i),
            _ => Number::Float(n.as_f64().unwrap_or_default()),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(to_document).collect()),
        Value::Object(o) => Document::Object(o.iter().map(|(k, v)| (k.clone(), to_document(v))).collect()),
    }
}

fn to_value(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Document::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
    }
}

fn build_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Decode(format!("building the Converse request: {e}"))
}

fn to_messages(request: &ModelRequest) -> Result<Vec<bt::Message>, ModelError> {
    request
        .messages
        .iter()
        .map(|m| {
            let mut content = Vec::new();
            for block in &m.content {
                content.push(match block {
                    ContentBlock::Text { text } => BContent::Text(text.clone()),
                    ContentBlock::ToolUse { id, name, input } => BContent::ToolUse(
                        ToolUseBlock::builder()
                            .tool_use_id(id)
                            .name(name)
                            .input(to_document(input))
                            .build()
                            .map_err(build_error)?,
                    ),
                    ContentBlock::ToolResult { tool_use_id, content, is_error } => BContent::ToolResult(
                        ToolResultBlock::builder()
                            .tool_use_id(tool_use_id)
                            .content(ToolResultContentBlock::Text(content.clone()))
                            .status(if *is_error { ToolResultStatus::Error } else { ToolResultStatus::Success })
                            .build()
                            .map_err(build_error)?,
                    ),
                    ContentBlock::Other(_) => continue,
                });
            }
            let role = match m.role {
                Role::User => ConversationRole::User,
                Role::Assistant => ConversationRole::Assistant,
            };
            bt::Message::builder().role(role).set_content(Some(content)).build().map_err(build_error)
        })
        .collect()
}

fn to_tools(request: &ModelRequest) -> Result<Option<ToolConfiguration>, ModelError> {
    if request.tools.is_empty() {
        return Ok(None);
    }
    let tools = request
        .tools
        .iter()
        .map(|t| {
            ToolSpecification::builder()
                .name(&t.name)
                .description(&t.description)
                .input_schema(ToolInputSchema::Json(to_document(&t.input_schema)))
                .build()
                .map(Tool::ToolSpec)
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    ToolConfiguration::builder().set_tools(Some(tools)).build().map(Some).map_err(build_error)
}

fn sdk_error(e: SdkError<ConverseError, HttpResponse>) -> ModelError {
    let context = || format!("{}", DisplayErrorContext(&e));
    match &e {
        SdkError::TimeoutError(_) => ModelError::Timeout(std::time::Duration::ZERO),
        SdkError::DispatchFailure(d) if d.is_timeout() => ModelError::Timeout(std::time::Duration::ZERO),
        SdkError::DispatchFailure(_) => ModelError::Connect(context()),
        SdkError::ServiceError(ctx) => ModelError::Status {
            status: ctx.raw().status().as_u16(),
            kind: ctx.err().code().unwrap_or("unknown").to_owned(),
            message: ctx.err().message().unwrap_or("").to_owned(),
            retry_after: None,
        },
        SdkError::ResponseError(r) if r.raw().status().is_server_error() => ModelError::Status {
            status: r.raw().status().as_u16(),
            kind: "response_error".into(),
            message: context(),
            retry_after: None,
        },
        _ => ModelError::Decode(context()),
    }
}

#[async_trait]
impl Model for BedrockModel {
    fn id(&self) -> &str {
        &self.model
    }

    fn provider(&self) -> &'static str {
        "bedrock"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let max_tokens = i32::try_from(self.max_tokens).unwrap_or(i32::MAX);
        let out = self
            .client
            .converse()
            .model_id(&self.model)
            .set_messages(Some(to_messages(request)?))
            .set_system(request.system.as_ref().map(|s| vec![SystemContentBlock::Text(s.clone())]))
            .set_tool_config(to_tools(request)?)
            .inference_config(InferenceConfiguration::builder().max_tokens(max_tokens).build())
            .send()
            .await
            .map_err(sdk_error)?;

        let mut content = Vec::new();
        if let Some(bt::ConverseOutput::Message(message)) = out.output() {
            for block in message.content() {
                match block {
                    BContent::Text(text) => content.push(ContentBlock::Text { text: text.clone() }),
                    BContent::ToolUse(t) => content.push(ContentBlock::ToolUse {
                        id: t.tool_use_id().to_owned(),
                        name: t.name().to_owned(),
                        input: to_value(t.input()),
                    }),
                    _ => {}
                }
            }
        }
        let stop_reason = match out.stop_reason() {
            bt::StopReason::EndTurn => StopReason::EndTurn,
            bt::StopReason::ToolUse => StopReason::ToolUse,
            bt::StopReason::MaxTokens => StopReason::MaxTokens,
            bt::StopReason::StopSequence => StopReason::StopSequence,
            bt::StopReason::GuardrailIntervened | bt::StopReason::ContentFiltered => StopReason::Refusal,
            other => StopReason::Other(other.as_str().to_owned()),
        };
        let count = |n: i32| u64::try_from(n).unwrap_or(0);
        let usage = out.usage().map_or_else(TokenUsage::default, |u| TokenUsage {
            input_tokens: count(u.input_tokens()),
            output_tokens: count(u.output_tokens()),
            cache_read_input_tokens: u.cache_read_input_tokens().map_or(0, count),
            cache_creation_input_tokens: u.cache_write_input_tokens().map_or(0, count),
        });
        Ok(ModelResponse { model: self.model.clone(), content, stop_reason, usage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_survives_a_round_trip_through_documents() {
        let v = json!({"a": [1, -2, 2.5, "x", true, null], "b": {"c": {}}});
        assert_eq!(to_value(&to_document(&v)), v);
    }
}
