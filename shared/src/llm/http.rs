//! What the HTTP providers share: sending a request, reading an error body (Anthropic and
//! OpenAI both answer `{"error": {"type", "message"}}`), `retry-after`, and mapping transport
//! failures to [`ModelError`].

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::ModelError;

/// Sends `request` and returns the body of a 2xx answer, or the error it stands for.
pub(crate) async fn send_json(request: reqwest::RequestBuilder, timeout: Duration) -> Result<Vec<u8>, ModelError> {
    let response = request.send().await.map_err(|e| transport_error(e, timeout))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let bytes = response.bytes().await.map_err(|e| transport_error(e, timeout))?;
    if !status.is_success() {
        return Err(status_error(status.as_u16(), &bytes, retry_after));
    }
    Ok(bytes.to_vec())
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    message: String,
}

pub(crate) fn transport_error(e: reqwest::Error, timeout: Duration) -> ModelError {
    if e.is_timeout() {
        ModelError::Timeout(timeout)
    } else if e.is_decode() {
        ModelError::Decode(e.to_string())
    } else {
        // The source chain holds the useful part ("connection refused"), not the top line.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        ModelError::Connect(msg)
    }
}

pub(crate) fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ModelError {
    let (kind, message) = match serde_json::from_slice::<WireError>(body) {
        Ok(w) => {
            let kind =
                w.error.kind.or_else(|| w.error.code.map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned)));
            (kind.unwrap_or_else(|| "error".into()), w.error.message)
        }
        Err(_) => ("unknown".to_owned(), String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()),
    };
    ModelError::Status { status, kind, message, retry_after }
}

/// `retry-after` in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "1.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn openai_style_errors_keep_their_code_and_message() {
        let e = status_error(
            404,
            br#"{"error":{"message":"The model `gpt-9` does not exist","type":null,"code":"model_not_found"}}"#,
            None,
        );
        assert!(e.to_string().contains("model_not_found") && e.to_string().contains("gpt-9"), "{e}");
    }
}
