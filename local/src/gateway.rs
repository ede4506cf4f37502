//! The local API Gateway: one base URL for the whole HTTP API. Each request is matched
//! against template.yaml's HttpApi routes the way an HTTP API matches them (an exact path
//! beats a path with `{params}`, `$default` catches the rest), turned into an API Gateway
//! HTTP API (payload v2.0) event, and sent to the function through the Lambda Invoke API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::template::{LOCAL_ACCOUNT, Route};

/// API Gateway's own limit on a request body.
const MAX_PAYLOAD: usize = 10 * 1024 * 1024;
/// API Gateway HTTP APIs give up on an integration after 30 s.
const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's routes and where the functions are.
#[derive(Debug, Clone)]
pub struct Gateway {
    routes: Vec<Route>,
    http: reqwest::Client,
    lambda_url: String,
}

impl Gateway {
    pub fn new(routes: Vec<Route>, http: reqwest::Client, lambda_url: &str) -> Self {
        Self { routes, http, lambda_url: lambda_url.trim_end_matches('/').to_owned() }
    }

    /// The axum router serving every path.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_PAYLOAD))
            .with_state(Arc::new(self))
    }

    /// The route for a request and its path parameters.
    fn route(&self, method: &Method, path: &str) -> Option<(&Route, Map<String, Value>)> {
        let mut best: Option<(&Route, Map<String, Value>, usize)> = None;
        for r in &self.routes {
            let (Some(m), Some(template)) = (&r.method, &r.path) else { continue };
            if m != "ANY" && m != method.as_str() {
                continue;
            }
            if let Some((params, literal)) = match_path(template, path) {
                if best.as_ref().is_none_or(|(_, _, l)| literal > *l) {
                    best = Some((r, params, literal));
                }
            }
        }
        best.map(|(r, p, _)| (r, p)).or_else(|| self.routes.iter().find(|r| r.path.is_none()).map(|r| (r, Map::new())))
    }
}

/// Matches `/v1/tasks/{id}`-style templates; returns the parameters and how many segments
/// matched literally (more is more specific).
fn match_path(template: &str, path: &str) -> Option<(Map<String, Value>, usize)> {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut params = Map::new();
    let mut literal = 0;
    for (i, seg) in t.iter().enumerate() {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix("+}")) {
            params.insert(name.to_owned(), json!(p.get(i..)?.join("/")));
            return Some((params, literal));
        }
        let actual = p.get(i)?;
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !actual.is_empty() => {
                params.insert(name.to_owned(), json!(actual));
            }
            Some(_) => return None,
            None if seg == actual => literal += 1,
            None => return None,
        }
    }
    (t.len() == p.len()).then_some((params, literal))
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({"message": text}))).into_response()
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((route, params)) = gw.route(&method, uri.path()) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let response = if route.streaming {
        proxy_to_url(&gw, &route.function, &method, &uri, &headers, body).await
    } else {
        let event = event(route, params, &method, &uri, &headers, &body, &peer.ip().to_string());
        invoke(&gw, &route.function, &event).await
    };
    match response {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(function = %route.function, error = format!("{e:#}"), "integration failed");
            message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// The API Gateway HTTP API event (payload format 2.0) for a request; a function URL's
/// event is the same, with the route `$default` and no path parameters.
pub(crate) fn event(
    route: &Route,
    params: Map<String, Value>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    source_ip: &str,
) -> Value {
    // A function URL has no routes: every request is `$default`, without path parameters.
    let route_key = match (&route.method, &route.path) {
        (Some(m), Some(p)) if !route.streaming => format!("{m} {p}"),
        _ => "$default".to_owned(),
    };
    let params = if route.streaming { Map::new() } else { params };
    // Repeated headers are joined with commas in payload 2.0.
    let mut hdrs = Map::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match hdrs.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                hdrs.insert(name.as_str().to_owned(), json!(v));
            }
        }
    }
    let query = uri.query().unwrap_or("");
    let mut qs = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match qs.get_mut(k.as_ref()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                qs.insert(k.into_owned(), json!(v));
            }
        }
    }
    let (body, encoded) = match std::str::from_utf8(body) {
        Ok(text) => (json!(text), false),
        Err(_) => (json!(BASE64.encode(body)), true),
    };
    let now = time::OffsetDateTime::now_utc();
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": uri.path(),
        "rawQueryString": query,
        "headers": hdrs,
        "requestContext": {
            "accountId": LOCAL_ACCOUNT,
            "apiId": "local",
            "domainName": headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("localhost"),
            "domainPrefix": "local",
            "http": {
                "method": method.as_str(),
                "path": uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": user_agent,
            },
            "requestId": ulid::Ulid::generate().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.format(&time::format_description::well_known::Rfc2822).unwrap_or_default(),
            "timeEpoch": (now.unix_timestamp_nanos() / 1_000_000) as i64,
        },
        "isBase64Encoded": encoded,
    });
    if !body.as_str().is_some_and(str::is_empty) {
        event["body"] = body;
    }
    if !qs.is_empty() {
        event["queryStringParameters"] = Value::Object(qs);
    }
    if !params.is_empty() {
        event["pathParameters"] = Value::Object(params);
    }
    event
}

async fn invoke(gw: &Gateway, function: &str, event: &Value) -> anyhow::Result<Response> {
    let url = format!("{}/2015-03-31/functions/{function}/invocations", gw.lambda_url);
    let response = gw.http.post(url).timeout(INTEGRATION_TIMEOUT).json(event).send().await.context("invoking")?;
    let function_error = response.headers().contains_key("x-amz-function-error");
    let out: Value = response.json().await.context("reading the function's response")?;
    if function_error || out.get("errorType").is_some() {
        return Err(anyhow!("the function failed: {out}"));
    }
    response_of(&out)
}

/// The HTTP response a function's API Gateway answer (payload 2.0) stands for.
pub(crate) fn response_of(out: &Value) -> anyhow::Result<Response> {
    let status = out["statusCode"].as_u64().ok_or_else(|| anyhow!("no statusCode in {out}"))?;
    let mut builder = Response::builder().status(u16::try_from(status)?);
    for (k, v) in out["headers"].as_object().into_iter().flatten() {
        builder = builder.header(HeaderName::try_from(k.as_str())?, HeaderValue::try_from(v.as_str().unwrap_or(""))?);
    }
    for (k, vs) in out["multiValueHeaders"].as_object().into_iter().flatten() {
        if out["headers"].get(k).is_some() {
            continue;
        }
        for v in vs.as_array().into_iter().flatten() {
            builder =
                builder.header(HeaderName::try_from(k.as_str())?, HeaderValue::try_from(v.as_str().unwrap_or(""))?);
        }
    }
    for c in out["cookies"].as_array().into_iter().flatten() {
        builder = builder.header("set-cookie", HeaderValue::try_from(c.as_str().unwrap_or(""))?);
    }
    let body = match out["body"].as_str() {
        None => Vec::new(),
        Some(b) if out["isBase64Encoded"].as_bool() == Some(true) => BASE64.decode(b).context("decoding the body")?,
        Some(b) => b.as_bytes().to_vec(),
    };
    Ok(builder.body(axum::body::Body::from(body))?)
}

/// A route served by a function URL in `RESPONSE_STREAM` mode is passed to the Lambda
/// service's function URL (`/lambda-url/{function}/…`, as `cargo lambda watch` and
/// `agentq-local lambdas` both serve it), which streams the function's answer back: no 30 s
/// integration limit, the body passed on as it comes.
async fn proxy_to_url(
    gw: &Gateway,
    function: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{}/lambda-url/{function}{}{query}", gw.lambda_url, uri.path());
    let mut request = gw.http.request(method.clone(), url).body(body);
    for (name, value) in headers.iter().filter(|(n, _)| *n != axum::http::header::HOST) {
        request = request.header(name, value);
    }
    let response = request.send().await.context("calling the function URL")?;
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers().iter().filter(|(n, _)| !n.as_str().starts_with("lambda-runtime")) {
        builder = builder.header(name, value);
    }
    Ok(builder.body(axum::body::Body::from_stream(response.bytes_stream()))?)
}

/// The bytes between a streamed response's metadata prelude and its body.
const PRELUDE_END: [u8; 8] = [0; 8];

/// A streamed function response as HTTP: the JSON prelude (status, headers, cookies) up to
/// eight NUL bytes, then the body, passed on as it comes.
pub(crate) async fn streamed_response<S>(mut chunks: S) -> anyhow::Result<Response>
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static,
{
    use futures::StreamExt as _;
    let mut head = Vec::new();
    let split = loop {
        if let Some(at) = head.windows(PRELUDE_END.len()).position(|w| w == PRELUDE_END) {
            break at;
        }
        match chunks.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.context("reading the prelude")?),
            None => return Err(anyhow!("the stream ended before its prelude")),
        }
    };
    let prelude: Value = serde_json::from_slice(&head[..split]).context("parsing the prelude")?;
    let mut builder = Response::builder().status(u16::try_from(prelude["statusCode"].as_u64().unwrap_or(200))?);
    for (k, v) in prelude["headers"].as_object().into_iter().flatten() {
        builder = builder.header(HeaderName::try_from(k.as_str())?, HeaderValue::try_from(v.as_str().unwrap_or(""))?);
    }
    for c in prelude["cookies"].as_array().into_iter().flatten() {
        builder = builder.header("set-cookie", HeaderValue::try_from(c.as_str().unwrap_or(""))?);
    }
    let rest = Bytes::copy_from_slice(&head[split + PRELUDE_END.len()..]);
    let body = futures::stream::iter((!rest.is_empty()).then_some(Ok(rest))).chain(chunks);
    Ok(builder.body(axum::body::Body::from_stream(body))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, f: &str) -> Route {
        Route { method: Some(method.into()), path: Some(path.into()), function: f.into(), streaming: false }
    }

    fn gateway() -> Gateway {
        Gateway::new(
            vec![
                route("POST", "/v1/tasks", "submit"),
                route("GET", "/v1/tasks/{id}", "status"),
                route("GET", "/v1/tasks/latest", "special"),
                Route { method: None, path: None, function: "fallback".into(), streaming: false },
            ],
            agentq::net::client(),
            "http://x",
        )
    }

    #[test]
    fn routes_match_like_an_http_api() {
        let gw = gateway();
        let f = |m: Method, p: &str| gw.route(&m, p).map(|(r, params)| (r.function.clone(), Value::Object(params)));
        assert_eq!(f(Method::POST, "/v1/tasks"), Some(("submit".into(), json!({}))));
        assert_eq!(f(Method::GET, "/v1/tasks/abc"), Some(("status".into(), json!({"id": "abc"}))));
        assert_eq!(f(Method::GET, "/v1/tasks/latest").unwrap().0, "special", "a literal path beats a parameter");
        assert_eq!(f(Method::DELETE, "/v1/tasks/abc").unwrap().0, "fallback");
        assert_eq!(f(Method::GET, "/v1/tasks/abc/more").unwrap().0, "fallback");
        assert_eq!(f(Method::GET, "/v1/tasks/").unwrap().0, "fallback", "an empty parameter does not match");
    }

    #[test]
    fn events_carry_route_key_parameters_and_query() {
        let r = route("GET", "/v1/tasks/{id}", "status");
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let uri: Uri = "/v1/tasks/abc?x=1&x=2".parse().unwrap();
        let mut params = Map::new();
        params.insert("id".into(), json!("abc"));
        let e = event(&r, params, &Method::GET, &uri, &headers, &Bytes::new(), "127.0.0.1");
        assert_eq!(e["routeKey"], "GET /v1/tasks/{id}");
        assert_eq!(e["pathParameters"]["id"], "abc");
        assert_eq!(e["queryStringParameters"]["x"], "1,2");
        assert_eq!(e["headers"]["x-a"], "1,2");
        assert!(e.get("body").is_none());
        // lambda_http must accept what we build.
        let req = lambda_http::request::from_str(&e.to_string()).unwrap();
        assert_eq!(req.uri().path(), "/v1/tasks/abc");
    }
}
