//! agentq's library: everything the Lambda functions share.
//!
//! - [`task`]: what a task is, how a submission is validated, the stored record;
//! - [`usage`]: tokens, exact cost, the price table;
//! - [`config`]: settings from the environment;
//! - [`tenant`]: tenants, API keys and their limits;
//! - [`store`] and [`queue`]: DynamoDB and SQS behind small traits, with in-memory fakes;
//! - [`llm`]: the model trait and the Anthropic client;
//! - [`agent`]: the agent loop, its tools and retries (no AWS code);
//! - [`steps`]: the durable record of each model answer and tool result;
//! - [`deadletter`]: sweeping and redriving the dead-letter queues;
//! - [`api`]: the JSON shapes of the HTTP API;
//! - [`auth`]: API keys in, tenants out;
//! - [`http`]: the API error type and the one mapping from errors to responses;
//! - [`blobs`]: S3 for content too large for an item;
//! - [`metrics`]: CloudWatch EMF records, flushed once per invocation;
//! - [`throttle`]: per-instance read limits per tenant;
//! - [`backoff`]: the one formula for growing waits;
//! - [`telemetry`], [`aws`], [`wiring`]: start-up plumbing.

pub mod agent;
pub mod api;
pub mod auth;
pub mod aws;
pub mod backoff;
pub mod blobs;
pub mod config;
pub mod deadletter;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod queue;
pub mod steps;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tenant;
pub mod throttle;
pub mod usage;
pub mod wiring;

pub use config::Config;

/// The current time, in UTC.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
