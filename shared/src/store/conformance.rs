//! The store's rules as one suite, run against every adapter: the in-memory fake in unit
//! tests and DynamoDB Local in the integration tests. The handler tests trust the fake
//! because it passes the same suite the real store does.
