//! Reading a JSON request body: size limit (413), UTF-8 (400), syntax (400), then typed parsing
//! that names the offending field (400).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// A request body that is well-formed JSON (an object), not yet typed.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.cfg.max_request_bytes;
        // A client that trickles its body (or stops half-way) holds a connection and a task:
        // it gets this long in all (hyper's header read timeout covers the headers).
        let timeout = state.cfg.connections.body_read_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| ApiError::BodyTimeout {
                secs: timeout.as_secs_f64(),
            })?
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::bad_request(format!("Could not read the request body: {r}"))
                }
            })?;
        if bytes.len() <= crate::guard::LARGE_BODY {
            return parse_body(&bytes).map(JsonBody);
        }
        // Parsing megabytes takes milliseconds: not on the async threads.
        tokio::task::spawn_blocking(move || parse_body(&bytes))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing a body: {e}")))?
            .map(JsonBody)
    }
}

/// Checks UTF-8 and JSON syntax; the body must be a JSON object.
pub fn parse_body(bytes: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "The request body is not valid UTF-8 (invalid byte at offset {}).",
            e.valid_up_to()
        ))
    })?;
    let v: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json words an unpaired surrogate escape as a hex-escape problem.
        if e.to_string().contains("hex escape") {
            ApiError::bad_request(format!(
                "The request body is not valid JSON: the `\\u` escape before line {} column {} \
                 is half of a UTF-16 surrogate pair (\\uD800-\\uDFFF) without its other half, \
                 which encodes no character.",
                e.line(),
                e.column()
            ))
        } else {
            ApiError::bad_request(format!("The request body is not valid JSON: {e}."))
        }
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    }
    Ok(v)
}

/// What a field that takes one of several shapes accepts, for its type error.
fn expected_shape(field: &str) -> Option<&'static str> {
    Some(match field {
        "prompt" => "a string, a list of strings, a list of token ids or a list of token id lists",
        "stop" => "a string or a list of strings",
        f if f.ends_with(".content") => "a string or a list of content parts",
        _ => return None,
    })
}

/// Deserializes `v` into `T`; a type error names the field (`messages[0].role`).
pub fn parse<T: DeserializeOwned>(v: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            return ApiError::bad_request(format!("Invalid request: {inner}."));
        }
        let msg = match expected_shape(&path) {
            Some(shape) if inner.contains("did not match any variant") => {
                format!("`{path}` must be {shape}.")
            }
            _ => format!("Invalid value for `{path}`: {inner}."),
        };
        ApiError::invalid(&path, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{CompletionRequest, SamplingFields};

    fn message(e: ApiError) -> String {
        e.to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let v = parse_body(br#"{"temperature": "hot"}"#).unwrap();
        let e = message(parse::<SamplingFields>(&v).unwrap_err());
        assert!(e.contains("`temperature`"), "{e}");
        let v = parse_body(br#"{"prompt": [1, "a"]}"#).unwrap();
        let e = message(parse::<CompletionRequest>(&v).unwrap_err());
        assert!(e.starts_with("`prompt` must be a string"), "{e}");
        let v = parse_body(br#"{"max_tokens": 1}"#).unwrap();
        let e = message(parse::<CompletionRequest>(&v).unwrap_err());
        assert!(e.contains("missing field `prompt`"), "{e}");
    }

    #[test]
    fn bad_bodies_are_400() {
        assert!(parse_body(b"{\"a\": \xff}")
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        assert!(parse_body(b"{\"a\": ")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(parse_body(b"[1]")
            .unwrap_err()
            .to_string()
            .contains("object"));
        for lone in [&br#"{"a": "\ud800"}"#[..], br#"{"a": "\udc00x"}"#] {
            let e = parse_body(lone).unwrap_err().to_string();
            assert!(e.contains("surrogate") && !e.contains("hex escape"), "{e}");
        }
    }
}
