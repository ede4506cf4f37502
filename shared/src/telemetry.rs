//! Logging setup shared by every function.
//!
//! The runtime's default subscriber honours `AWS_LAMBDA_LOG_FORMAT=JSON` and
//! `AWS_LAMBDA_LOG_LEVEL`, and leaves timestamps to CloudWatch; `make up` sets the same
//! variables so local logs have the shape they have in AWS.

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init() {
    lambda_http::tracing::init_default_subscriber();
}
