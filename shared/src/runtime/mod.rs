//! Start-up: configuration read once at cold start (plain data), the AWS clients, and the
//! wiring that turns configuration into stores, queues, models and tools.

pub mod aws;
pub mod config;
pub mod wiring;
