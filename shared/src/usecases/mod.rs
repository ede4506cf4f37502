//! Work that spans several adapters but belongs to no one function: admitting a task, the
//! dead-letter sweep and redrive, approvals, held tasks, webhook deliveries; shared by the
//! functions, the CLI and the fault suite.

pub mod admit;
pub mod approvals;
pub mod deadletter;
pub mod held;
pub mod webhooks;
