//! The HTTP edge the API functions share: the one error type and its mapping to responses,
//! authentication, the JSON shapes of the API, and the per-instance read throttle.

pub mod api;
pub mod auth;
pub mod http;
pub mod routes;
pub mod throttle;
