//! Work that spans several adapters but belongs to no one function: the dead-letter sweep
//! and redrive, shared by the sweeper function, the CLI and the fault suite.

pub mod approvals;
pub mod deadletter;
pub mod held;
pub mod webhooks;
