//! The console (`GET /console`): a web page where a team sees its tasks, their timelines, costs
//! and pending approvals (docs/console.md). Its three files are built into this binary and
//! served without authentication (they hold no data: the page calls the API with the key the
//! user enters), under a strict Content-Security-Policy: scripts, styles and API calls from this
//! origin only, nothing inline, no frames, no third-party anything.

use agentq::edge::http::ApiError;
use lambda_http::Body;
use lambda_http::http::{HeaderValue, Response};

const INDEX: &str = include_str!("../../../console/index.html");
const SCRIPT: &str = include_str!("../../../console/app.js");
const STYLE: &str = include_str!("../../../console/app.css");

/// What the page may load and where it may connect: itself, nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's file `name` (`None`: the page itself).
pub fn serve(name: Option<&str>) -> Result<Response<Body>, ApiError> {
    let (body, kind) = match name {
        None | Some("index.html") => (INDEX, "text/html; charset=utf-8"),
        Some("app.js") => (SCRIPT, "text/javascript; charset=utf-8"),
        Some("app.css") => (STYLE, "text/css; charset=utf-8"),
        Some(other) => return Err(ApiError::NotFound(format!("the console has no file {other:?}"))),
    };
    let mut r = Response::new(Body::Text(body.to_owned()));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(kind));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Small files, revalidated on every load so a deploy shows at once.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_under_the_policy_and_nothing_else_is() {
        for (name, kind) in [(None, "text/html"), (Some("app.js"), "text/javascript"), (Some("app.css"), "text/css")] {
            let r = serve(name).unwrap();
            assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
            assert_eq!(r.headers()["content-security-policy"], CSP);
        }
        assert!(matches!(serve(Some("../secrets")), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_never_writes_html_from_data() {
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"), "no third-party asset");
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("eval("));
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="), "nothing inline for the policy to refuse");
    }
}
