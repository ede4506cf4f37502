//! Keeps `openapi.json`, `template.yaml` and the handlers in step: every routed operation is
//! documented and every documented one routed, and what the handlers answer has a documented
//! status and matches its documented schema. (CI also runs schemathesis against the stack.)

use std::path::Path;

use agentq::edge::routes::ROUTES;
use agentq_local::template::Template;
use agentq_tests::{TestApp, answer, body_json};
use lambda_http::{Body, Response};
use serde_json::{Value, json};
use wiremock::Mock;
use wiremock::matchers::method;

fn document() -> Value {
    serde_json::from_str(submit::OPENAPI).expect("openapi.json is JSON")
}

#[test]
fn the_route_table_is_what_the_template_routes_to_each_function() {
    let template = Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"), "agentq").unwrap();
    let mut routed: Vec<(String, String, String)> =
        template.routes().into_iter().filter_map(|r| Some((r.method?.to_uppercase(), r.path?, r.function))).collect();
    routed.sort();
    let mut table: Vec<(String, String, String)> =
        ROUTES.iter().map(|r| (r.method.to_owned(), r.path.to_owned(), r.function.binary().to_owned())).collect();
    table.sort();
    assert_eq!(routed, table);
}

#[test]
fn every_routed_operation_is_documented_and_every_documented_one_routed() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let template = Template::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"), "agentq").unwrap();
    let mut routed: Vec<(String, String)> =
        template.routes().into_iter().filter_map(|r| Some((r.path?, r.method?.to_lowercase()))).collect();
    routed.sort();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    documented.sort();
    assert_eq!(routed, documented);
    let mut table: Vec<(String, String)> =
        ROUTES.iter().map(|r| (r.path.to_owned(), r.method.to_lowercase())).collect();
    table.sort();
    assert_eq!(table, documented, "the route table and the document");
}

#[test]
fn the_documented_request_limits_are_the_ones_the_parser_enforces() {
    use agentq::domain::task::{
        DEFAULT_MAX_ITERATIONS, MAX_COST_USD_LIMIT, MAX_ITERATIONS_LIMIT, MAX_METADATA_BYTES, MAX_PROMPT_CHARS,
        MIN_COST_USD,
    };
    let doc = document();
    let request = &doc["components"]["schemas"]["TaskRequest"]["properties"];
    assert_eq!(request["prompt"]["maxLength"], MAX_PROMPT_CHARS);
    assert_eq!(request["max_iterations"]["maximum"], MAX_ITERATIONS_LIMIT);
    assert_eq!(request["max_iterations"]["default"], DEFAULT_MAX_ITERATIONS);
    assert_eq!(request["max_cost_usd"]["minimum"], MIN_COST_USD);
    assert_eq!(request["max_cost_usd"]["maximum"], MAX_COST_USD_LIMIT);
    let metadata = request["metadata"]["description"].as_str().unwrap();
    assert!(metadata.contains(&format!("{} KB", MAX_METADATA_BYTES / 1024)), "{metadata}");
    assert_eq!(doc["components"]["schemas"]["TaskRequest"]["properties"].as_object().unwrap().len(), 10);
    let approval = &doc["components"]["schemas"]["Approval"]["properties"]["timeout_secs"];
    assert_eq!(approval["minimum"], agentq::domain::approval::MIN_TIMEOUT_SECS);
    assert_eq!(approval["maximum"], agentq::domain::approval::MAX_TIMEOUT_SECS);
    let decision = &doc["components"]["schemas"]["InputRequest"]["properties"]["decisions"]["items"]["properties"];
    assert_eq!(decision["message"]["maxLength"], agentq::domain::approval::MAX_MESSAGE_CHARS);
}

/// Checks one response against the document: its status is documented for the operation,
/// and its body matches the documented schema.
fn conforms(path: &str, method: &str, response: &Response<Body>) {
    let doc = document();
    let status = response.status().as_u16().to_string();
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let documented = &operation["responses"][&status];
    assert!(documented.is_object(), "{method} {path} answered {status}, which is not documented");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let schema = &documented["content"][&content_type]["schema"];
    assert!(schema.is_object(), "{method} {path} {status} answered {content_type}, which is not documented");
    // The document itself is the root, so `#/components/...` references resolve; its other
    // keys are not schema keywords and are ignored.
    let mut root = doc.clone();
    root["$ref"] = json!("#/validated");
    root["validated"] = schema.clone();
    let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
    let body = body_json(response.body());
    let errors: Vec<String> = validator.iter_errors(&body).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} {status}: {errors:?}\n{body}");
}

#[tokio::test]
async fn what_the_handlers_answer_matches_the_document() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 3, "output_tokens": 2})))
        .mount(&app.model)
        .await;
    let key = app.key.clone();

    let accepted = app.post_as(&key, &json!({"prompt": "hi", "priority": "low"}), &[("idempotency-key", "k1")]).await;
    conforms("/v1/tasks", "post", &accepted);
    let id = body_json(accepted.body())["task_id"].as_str().unwrap().to_owned();
    conforms(
        "/v1/tasks",
        "post",
        &app.post_as(&key, &json!({"prompt": "hi", "priority": "low"}), &[("idempotency-key", "k1")]).await,
    );
    conforms("/v1/tasks", "post", &app.post_as(&key, &json!({"prompt": "other"}), &[("idempotency-key", "k1")]).await);
    conforms("/v1/tasks", "post", &app.post_as(&key, &json!({"prompt": ""}), &[]).await);
    conforms("/v1/tasks", "post", &app.post_as("aq_wrong", &json!({"prompt": "x"}), &[]).await);
    let limited =
        app.tenant("slow", agentq::domain::tenant::Limits { rate_per_sec: 0.01, burst: 1, ..Default::default() }).await;
    app.post_as(&limited, &json!({"prompt": "x"}), &[]).await;
    conforms("/v1/tasks", "post", &app.post_as(&limited, &json!({"prompt": "x"}), &[]).await);

    let status = |method: &'static str, path: String, query: Vec<(&'static str, &'static str)>| {
        let app = &app;
        let key = key.clone();
        async move {
            let mut event: Value = serde_json::from_str(include_str!("../events/status.json")).unwrap();
            event["rawPath"] = json!(path);
            event["requestContext"]["http"]["path"] = json!(path);
            event["requestContext"]["http"]["method"] = json!(method);
            event["headers"]["authorization"] = json!(format!("Bearer {key}"));
            match path.strip_prefix("/v1/tasks/") {
                Some(id) => event["pathParameters"] = json!({"id": id}),
                None => drop(event.as_object_mut().unwrap().remove("pathParameters")),
            }
            if !query.is_empty() {
                event["queryStringParameters"] = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                event["rawQueryString"] =
                    json!(query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
            }
            status::handle(&app.status, lambda_http::request::from_str(&event.to_string()).unwrap()).await
        }
    };
    conforms("/v1/tasks/{id}", "get", &status("GET", format!("/v1/tasks/{id}"), vec![]).await);
    conforms("/v1/tasks/{id}", "get", &status("GET", "/v1/tasks/nope".into(), vec![]).await);
    conforms("/v1/tasks", "get", &status("GET", "/v1/tasks".into(), vec![("limit", "1")]).await);
    conforms("/v1/tasks", "get", &status("GET", "/v1/tasks".into(), vec![("limit", "0")]).await);
    conforms("/v1/usage", "get", &status("GET", "/v1/usage".into(), vec![]).await);
    conforms("/v1/usage", "get", &status("GET", "/v1/usage".into(), vec![("from", "2026-99-01")]).await);

    app.run_until_terminal(&id, std::time::Duration::from_secs(30)).await;
    conforms("/v1/tasks/{id}", "get", &status("GET", format!("/v1/tasks/{id}"), vec![]).await);
    conforms("/v1/usage", "get", &status("GET", "/v1/usage".into(), vec![]).await);
    conforms("/v1/tasks/{id}", "delete", &status("DELETE", format!("/v1/tasks/{id}"), vec![]).await);
    let queued = app.submit("to cancel").await;
    conforms("/v1/tasks/{id}", "delete", &status("DELETE", format!("/v1/tasks/{queued}"), vec![]).await);

    let probe = |path: &'static str| {
        let app = &app;
        async move {
            let mut event: Value = serde_json::from_str(include_str!("../events/submit.json")).unwrap();
            event["rawPath"] = json!(path);
            event["requestContext"]["http"]["path"] = json!(path);
            event["requestContext"]["http"]["method"] = json!("GET");
            event.as_object_mut().unwrap().remove("body");
            submit::handle(&app.submit, lambda_http::request::from_str(&event.to_string()).unwrap()).await
        }
    };
    conforms("/health", "get", &probe("/health").await);
    conforms("/ready", "get", &probe("/ready").await);
    conforms("/openapi.json", "get", &probe("/openapi.json").await);
    app.drain().await;
}

#[tokio::test]
async fn the_approval_answers_match_the_document() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST")).respond_with(agentq_tests::CalculatorScript).mount(&app.model).await;
    let (_, accepted) =
        app.post_task(&json!({"prompt": "What is 6 * 7?", "approval": {"tools": ["calculator"]}})).await;
    let id = accepted["task_id"].as_str().unwrap().to_owned();
    let decide = |call: &str| json!({"decisions": [{"tool_use_id": call, "action": "approve"}]});
    conforms("/v1/tasks/{id}/input", "post", &app.input_response(&app.key, &id, &decide("x")).await);
    let waiting = app.run_until_status(&id, "waiting_for_input", std::time::Duration::from_secs(30)).await;
    let call = waiting["pending"][0]["tool_use_id"].as_str().unwrap();
    conforms("/v1/tasks/{id}/input", "post", &app.input_response(&app.key, &id, &json!({"decisions": []})).await);
    conforms("/v1/tasks/{id}/input", "post", &app.input_response(&app.key, &id, &decide("toolu_old")).await);
    conforms("/v1/tasks/{id}/input", "post", &app.input_response("aq_wrong", &id, &decide(call)).await);
    conforms("/v1/tasks/{id}/input", "post", &app.input_response(&app.key, "nope", &decide(call)).await);
    conforms("/v1/tasks/{id}/input", "post", &app.input_response(&app.key, &id, &decide(call)).await);
    app.run_until_terminal(&id, std::time::Duration::from_secs(30)).await;
    let (_, steps) = app.call_status(&app.key, "GET", &format!("/v1/tasks/{id}/steps"), &[]).await;
    assert_eq!(steps["steps"][1]["kind"], "decision");
    let fork = |body: Value| {
        let (app, id) = (&app, id.clone());
        async move {
            let mut event: Value = serde_json::from_str(include_str!("../events/input.json")).unwrap();
            let path = format!("/v1/tasks/{id}/fork");
            event["rawPath"] = json!(path);
            event["requestContext"]["http"]["path"] = json!(path);
            event["pathParameters"] = json!({"id": id});
            event["body"] = json!(body.to_string());
            event["headers"]["authorization"] = json!(format!("Bearer {}", app.key));
            let r = submit::handle(&app.submit, lambda_http::request::from_str(&event.to_string()).unwrap()).await;
            if let Some(id) = body_json(r.body())["task_id"].as_str() {
                app.track(id);
            }
            r
        }
    };
    conforms("/v1/tasks/{id}/fork", "post", &fork(json!({"from_step": 1, "edit": {"message": "again"}})).await);
    conforms("/v1/tasks/{id}/fork", "post", &fork(json!({"from_step": 7})).await);
    let mut root = document();
    root["$ref"] = json!("#/components/schemas/StepList");
    let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
    let errors: Vec<String> = validator.iter_errors(&steps).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the steps with a decision: {errors:?}\n{steps}");
    app.drain().await;
}

#[tokio::test]
async fn the_batch_answers_match_the_document() {
    let app = TestApp::spawn().await;
    Mock::given(method("POST"))
        .respond_with(answer("done", json!({"input_tokens": 3, "output_tokens": 2})))
        .mount(&app.model)
        .await;
    let batch = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            let mut event: Value = serde_json::from_str(include_str!("../events/submit.json")).unwrap();
            event["rawPath"] = json!("/v1/batches");
            event["requestContext"]["http"]["path"] = json!("/v1/batches");
            event["body"] = json!(body.to_string());
            event["headers"]["authorization"] = json!(format!("Bearer {}", app.key));
            for (k, v) in headers {
                event["headers"][k] = json!(v);
            }
            let r = submit::handle(&app.submit, lambda_http::request::from_str(&event.to_string()).unwrap()).await;
            for item in body_json(r.body())["items"].as_array().into_iter().flatten() {
                if let Some(id) = item["task_id"].as_str() {
                    app.track(id);
                }
            }
            r
        }
    };
    let body = json!({"tasks": [{"prompt": "a", "custom_id": "x"}, {"prompt": ""}]});
    let accepted = batch(body.clone(), vec![("idempotency-key", "bk")]).await;
    conforms("/v1/batches", "post", &accepted);
    let id = body_json(accepted.body())["batch_id"].as_str().unwrap().to_owned();
    conforms("/v1/batches", "post", &batch(body, vec![("idempotency-key", "bk")]).await);
    conforms("/v1/batches", "post", &batch(json!({"tasks": [{"prompt": "b"}]}), vec![("idempotency-key", "bk")]).await);
    conforms("/v1/batches", "post", &batch(json!({"tasks": []}), vec![]).await);

    let status = |method: &'static str, path: String| {
        let app = &app;
        async move {
            let mut event: Value = serde_json::from_str(include_str!("../events/status.json")).unwrap();
            event["rawPath"] = json!(path);
            event["requestContext"]["http"]["path"] = json!(path);
            event["requestContext"]["http"]["method"] = json!(method);
            event["headers"]["authorization"] = json!(format!("Bearer {}", app.key));
            event.as_object_mut().unwrap().remove("pathParameters");
            status::handle(&app.status, lambda_http::request::from_str(&event.to_string()).unwrap()).await
        }
    };
    conforms("/v1/batches/{id}", "get", &status("GET", format!("/v1/batches/{id}")).await);
    conforms("/v1/batches/{id}", "get", &status("GET", "/v1/batches/bat_nope".into()).await);
    app.drain().await;
    conforms("/v1/batches/{id}", "get", &status("GET", format!("/v1/batches/{id}")).await);
    conforms("/v1/batches/{id}", "delete", &status("DELETE", format!("/v1/batches/{id}")).await);
    conforms("/v1/batches/{id}", "delete", &status("DELETE", "/v1/batches/bat_nope".into()).await);
}

#[tokio::test]
async fn the_schedule_answers_match_the_document() {
    let app = TestApp::spawn().await;
    let body =
        json!({"schedule": "cron(0 9 ? * MON-FRI *)", "timezone": "Europe/Paris", "task": {"prompt": "standup notes"}});
    let created = app.submit_request(&app.key, "/v1/schedules", &body).await;
    assert_eq!(created.status(), 201);
    conforms("/v1/schedules", "post", &created);
    let id = body_json(created.body())["id"].as_str().unwrap().to_owned();
    conforms(
        "/v1/schedules",
        "post",
        &app.submit_request(&app.key, "/v1/schedules", &json!({"schedule": "rate(0 days)"})).await,
    );
    conforms("/v1/schedules", "get", &app.status_request(&app.key, "GET", "/v1/schedules").await);
    let one = format!("/v1/schedules/{id}");
    conforms("/v1/schedules/{id}", "get", &app.status_request(&app.key, "GET", &one).await);
    conforms("/v1/schedules/{id}", "get", &app.status_request(&app.key, "GET", "/v1/schedules/sch_nope").await);
    for verb in ["pause", "resume"] {
        let path = format!("/v1/schedules/{{id}}/{verb}");
        conforms(&path, "post", &app.status_request(&app.key, "POST", &format!("{one}/{verb}")).await);
    }
    conforms("/v1/schedules/{id}", "delete", &app.status_request(&app.key, "DELETE", &one).await);
    conforms("/v1/schedules/{id}", "delete", &app.status_request(&app.key, "DELETE", &one).await);
}
