//! The store's rules (`agentq::store::conformance`) against DynamoDB Local: the same suite
//! the in-memory fake passes, so handler tests on the fake say something about the real store.

use agentq_tests::{RECONCILE_AFTER, TestApp};

#[tokio::test]
async fn the_dynamodb_store_keeps_the_stores_rules() {
    let app = TestApp::spawn().await;
    agentq::store::conformance::run(app.store.as_ref(), RECONCILE_AFTER).await;
}
