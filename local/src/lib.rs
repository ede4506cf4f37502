//! Local stand-ins for what AWS provides around agentq's functions, so the whole system runs
//! on one machine with no Docker: resource provisioning from template.yaml, an API Gateway,
//! the SQS and DynamoDB stream event sources, a small Lambda service that runs the functions' binaries, a
//! scripted fake model and a demo MCP server. None of this is deployed.

pub mod deliver;
pub mod fake_model;
pub mod faults;
pub mod gateway;
pub mod mcp_server;
pub mod provision;
pub mod runtime;
pub mod streams;
pub mod template;
