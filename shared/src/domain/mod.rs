//! The domain: what a task, a tenant, a step and a bill are, and the rules that need nothing
//! but those types. Nothing here knows of AWS, HTTP or configuration.

pub mod approval;
pub mod backoff;
pub mod batch;
pub mod conversation;
pub mod events;
pub mod fork;
pub mod output;
pub mod schedule;
pub mod secret;
pub mod steps;
pub mod task;
pub mod tenant;
pub mod tooldef;
pub mod usage;
pub mod webhooks;
