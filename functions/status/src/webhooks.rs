//! The webhook routes: a tenant's endpoints (`POST`/`GET /v1/webhooks`, `DELETE
//! /v1/webhooks/{id}`, `POST /v1/webhooks/{id}/rotate` and `/test`) and a task's delivery
//! attempts (`GET /v1/tasks/{id}/deliveries`). Another tenant's endpoint is the same 404 as
//! none.

use agentq::domain::task::RequestError;
use agentq::domain::webhooks::{Endpoint, EndpointRequest, new_id};
use agentq::edge::api::{DeliveryList, EndpointList, EndpointView, TestDelivery};
use agentq::edge::auth::Caller;
use agentq::edge::http::{ApiError, json_body, json_response};
use agentq::store::MAX_ENDPOINTS;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lambda_http::http::StatusCode;
use lambda_http::http::header::{HeaderValue, LOCATION};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::{App, cursor, invalid, limit, owned_task};

/// Attempts per page when the request names none, and the most it may name.
const DEFAULT_DELIVERIES: usize = 100;
const MAX_DELIVERIES: usize = 500;

/// The longest a test delivery may take: well inside the function's own timeout.
const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn create(app: &App, caller: &Caller, req: &Request) -> Result<Response<Body>, ApiError> {
    let request = EndpointRequest::parse(json_body(req)?).map_err(|e| match e {
        RequestError::NotJson(msg) => ApiError::MalformedJson(msg),
        RequestError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    let url = app.webhooks.check_url(&request.url).map_err(|e| invalid("url", e))?;
    let tenant = &caller.tenant.tenant_id;
    if app.store.endpoints(tenant).await?.len() >= MAX_ENDPOINTS {
        return Err(ApiError::Conflict {
            code: "too_many_webhooks",
            detail: format!("a tenant may register {MAX_ENDPOINTS} webhook endpoints; remove one first"),
        });
    }
    let endpoint = Endpoint::new(tenant, url.to_string(), request.events, agentq::now());
    app.store.put_endpoint(&endpoint).await?;
    tracing::info!(webhook_id = endpoint.id, "webhook endpoint registered");
    let mut response = json_response(StatusCode::CREATED, &EndpointView::revealed(&endpoint));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

pub async fn list(app: &App, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let endpoints = app.store.endpoints(&caller.tenant.tenant_id).await?;
    Ok(json_response(StatusCode::OK, &EndpointList { webhooks: endpoints.iter().map(EndpointView::listed).collect() }))
}

async fn owned(app: &App, caller: &Caller, id: &str) -> Result<Endpoint, ApiError> {
    app.store
        .endpoint(&caller.tenant.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint with id {id:?}")))
}

pub async fn remove(app: &App, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
    if !app.store.delete_endpoint(&caller.tenant.tenant_id, id).await? {
        return Err(ApiError::NotFound(format!("no webhook endpoint with id {id:?}")));
    }
    tracing::info!(webhook_id = id, "webhook endpoint removed");
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// A new secret; the old one keeps signing beside it for the overlap, so receivers can
/// switch without dropping a delivery.
pub async fn rotate(app: &App, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
    let mut endpoint = owned(app, caller, id).await?;
    endpoint.rotate(agentq::now());
    app.store.put_endpoint(&endpoint).await?;
    tracing::info!(webhook_id = id, "webhook secret rotated");
    Ok(json_response(StatusCode::OK, &EndpointView::revealed(&endpoint)))
}

/// Sends a signed `webhook.test` event now and says how the receiver answered.
pub async fn test(app: &App, caller: &Caller, id: &str) -> Result<Response<Body>, ApiError> {
    let endpoint = owned(app, caller, id).await?;
    let now = agentq::now();
    let body = json!({
        "type": "webhook.test",
        "timestamp": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "data": {"webhook_id": endpoint.id},
    });
    let policy =
        agentq::outbound::webhook::SendPolicy { timeout: TEST_TIMEOUT.min(app.webhooks.timeout), ..app.webhooks };
    let sent = agentq::outbound::webhook::send(
        &policy,
        &endpoint.url,
        &new_id("evt"),
        &endpoint.signing_secrets(now),
        body.to_string().as_bytes(),
        now.unix_timestamp(),
    )
    .await;
    Ok(json_response(
        StatusCode::OK,
        &TestDelivery {
            delivered: sent.delivered(),
            status: sent.status,
            error: sent.error.clone(),
            latency_ms: sent.latency.as_millis() as u64,
        },
    ))
}

pub async fn deliveries(app: &App, caller: &Caller, raw: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    let limit = limit(req, DEFAULT_DELIVERIES, MAX_DELIVERIES)?;
    let after = cursor(req, |sk| sk.starts_with("DLV#").then_some(sk))?;
    let task = owned_task(app, caller, raw).await?;
    let page = app.store.attempts(task.task_id, after.as_deref(), limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &DeliveryList {
            task_id: task.task_id,
            deliveries: page.attempts,
            next_cursor: page.next.map(|sk| URL_SAFE_NO_PAD.encode(sk)),
        },
    ))
}
