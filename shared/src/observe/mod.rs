//! Observability: JSON logs and traces (`telemetry`) and CloudWatch EMF metrics (`metrics`),
//! usable from every layer above the domain.

pub mod metrics;
pub mod telemetry;
