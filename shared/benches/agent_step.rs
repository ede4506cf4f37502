//! One agent step with no I/O: read the model's answer (a `tool_use`), run the built-in tool
//! it asks for (its input checked against the schema first), and build the next request's
//! body (the conversation grown by the answer and the result, cache breakpoints marked),
//! to the bytes that would be sent. The worker's own CPU per step, apart from its AWS calls
//! and the HTTP client. `cargo bench -p agentq-shared --bench agent_step`; figures in
//! BENCHMARKS.md.

use std::hint::black_box;

use agentq::agent::tools::{ToolContext, ToolRegistry};
use agentq::domain::conversation::{ContentBlock, Message, Role};
use agentq::llm::{ModelRequest, anthropic};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

/// A conversation three steps in, as the worker holds it before the next call: a ~2 KB
/// system prompt, the built-in tools, the task, two answered tool calls.
fn conversation(tools: &ToolRegistry) -> ModelRequest {
    let mut messages = vec![Message::user_text("What is 1234 * 5678, then the square root of that, to 3 places?")];
    for (i, expr) in ["1234 * 5678", "math::sqrt(7006652)"].iter().enumerate() {
        messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Text { text: format!("Step {i}: I will compute {expr} with the calculator.") },
                ContentBlock::ToolUse {
                    id: format!("toolu_{i:024}"),
                    name: "calculator".into(),
                    input: json!({"expression": expr}),
                },
            ],
        });
        messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: format!("toolu_{i:024}"),
                content: "7006652".into(),
                is_error: false,
            }],
        });
    }
    ModelRequest {
        system: Some("You are a careful assistant that answers with tools where they help. ".repeat(30)),
        messages,
        tools: tools.specs(),
    }
}

/// The model's answer to it: some text and one more tool call, as the Messages API sends it.
const ANSWER: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
"model":"claude-sonnet-4-5","content":[{"type":"text","text":"The product is 7006652; now its square root, rounded to three places."},
{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"calculator","input":{"expression":"math::sqrt(7006652) * 1000"}}],
"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":18,"cache_creation_input_tokens":310,
"cache_read_input_tokens":1210,"output_tokens":64}}"#;

fn one_step(c: &mut Criterion) {
    let tools = ToolRegistry::builtin();
    let base = conversation(&tools);
    let context = ToolContext { task_id: "01jd".into(), tenant_id: "acme".into(), step: 3, tool_use_id: String::new() };
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    c.bench_function("agent step: read answer, run calculator, build next request", |b| {
        b.iter_batched(
            || base.clone(),
            |mut request| {
                let answer = anthropic::decode(black_box(ANSWER.as_bytes())).expect("the answer reads");
                let mut results = Vec::new();
                for block in &answer.content {
                    if let ContentBlock::ToolUse { id, name, input } = block {
                        let out = runtime.block_on(tools.run(name, input, &context.for_call(id)));
                        results.push(ContentBlock::ToolResult {
                            tool_use_id: id.clone(),
                            content: out.content,
                            is_error: out.is_error,
                        });
                    }
                }
                request.messages.push(Message { role: Role::Assistant, content: answer.content });
                request.messages.push(Message { role: Role::User, content: results });
                let body = anthropic::wire_body("claude-sonnet-4-5", 4096, &request, true);
                serde_json::to_vec(&body).expect("a body serializes")
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, one_step);
criterion_main!(benches);
