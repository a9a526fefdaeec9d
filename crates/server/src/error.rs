//! The one error type of the server and its one mapping table to HTTP statuses, OpenAI error
//! bodies and SSE error events (habit 5).
//!
//! Invariant: an internal error reaches the client as a generic message; its detail goes only to
//! the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokenfab_engine::SubmitError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, out-of-range values, too long prompts. The message names the
    /// field and the limit; `param` is the field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("Missing or invalid API key: send `Authorization: Bearer <key>`.")]
    Unauthorized,
    #[error("The request body is larger than {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error(
        "The server is at capacity ({max} requests waiting); retry after {retry_after_secs} s."
    )]
    QueueFull { max: usize, retry_after_secs: u64 },
    #[error("Too many requests for this API key; retry after {retry_after_secs} s.")]
    RateLimited { retry_after_secs: u64 },
    #[error("The server is shutting down and accepts no new requests.")]
    ShuttingDown,
    /// A connection over `--max-connections`, answered by the listener and closed.
    #[error(
        "The server has {max} connections open, its limit (--max-connections); retry shortly."
    )]
    TooManyConnections { max: usize },
    #[error("Not found: {0}")]
    RouteNotFound(String),
    /// A POST body that is not declared `application/json` (a cross-site form or `text/plain`
    /// post, which browsers send without a CORS preflight).
    #[error(
        "The request body must be JSON, sent with `Content-Type: application/json`. Given: {0}"
    )]
    UnsupportedMediaType(String),
    /// The client sent its body too slowly (`--body-read-timeout`).
    #[error("The request body did not arrive within {secs} s.")]
    BodyTimeout { secs: f64 },
    /// The client read nothing of its stream for `--stream-timeout`: the request was aborted.
    #[error(
        "The client read nothing of its stream for {secs} s (--stream-timeout); the request was aborted."
    )]
    StreamTimeout { secs: f64 },
    /// The engine failed the request; the engine promises the message is safe to show.
    #[error("{0}")]
    Engine(String),
    /// Anything else: logged in full, answered with a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

const GENERIC_INTERNAL: &str = "The server had an internal error while processing the request.";

impl ApiError {
    /// A 400 about `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(field.to_string()),
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// The mapping table: status, OpenAI error type and code of each variant.
    pub fn status_type_code(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use ApiError::*;
        match self {
            InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            QueueFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("server_shutting_down"),
            ),
            TooManyConnections { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("too_many_connections"),
            ),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                Some("unsupported_media_type"),
            ),
            BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some("body_timeout"),
            ),
            StreamTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                Some("stream_timeout"),
            ),
            Engine(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        }
    }

    /// The body sent to the client (as a response or as an SSE error event). Logs internal
    /// errors in full.
    pub fn body(&self) -> ErrorBody {
        let (status, kind, code) = self.status_type_code();
        let message = match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                GENERIC_INTERNAL.to_string()
            }
            // Refusals under load are expected; the listener and the drain log them once.
            ApiError::ShuttingDown | ApiError::TooManyConnections { .. } => self.to_string(),
            other => {
                if status.is_server_error() {
                    tracing::warn!(error = %other, "request failed");
                }
                other.to_string()
            }
        };
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull {
                max,
                retry_after_secs,
            } => ApiError::QueueFull {
                max,
                retry_after_secs,
            },
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::Invalid(m) => ApiError::bad_request(m),
            SubmitError::EngineDead => ApiError::Internal("the engine thread has stopped".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.status_type_code();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let ApiError::QueueFull {
            retry_after_secs, ..
        }
        | ApiError::RateLimited { retry_after_secs } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A number as an error message quotes it: short (`1e300`, not 301 digits).
pub fn shown_number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = ApiError::Internal("secret path /x/y failed".into());
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["message"], GENERIC_INTERNAL);
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(e.into_response().status(), 500);
    }

    #[test]
    fn queue_full_sets_retry_after() {
        let r = ApiError::from(SubmitError::QueueFull {
            max: 1,
            retry_after_secs: 3,
        })
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn numbers_are_shown_short() {
        assert_eq!(shown_number(1e300), "1e300");
        assert_eq!(shown_number(-2.5e-9), "-2.5e-9");
        assert_eq!(shown_number(101.0), "101");
        assert_eq!(shown_number(0.0), "0");
        assert_eq!(shown_number(f64::INFINITY), "inf");
    }

    #[test]
    fn invalid_names_its_param() {
        let body = ApiError::invalid("top_p", "`top_p` must be in (0, 1]. Given: 2").body();
        let v = serde_json::to_value(body).unwrap();
        assert_eq!(v["error"]["param"], "top_p");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["code"].is_null());
    }
}
