//! The one error type of the server and its one mapping table to HTTP statuses, OpenAI error
//! bodies and SSE error events (habit 5).
//!
//! Invariant: an internal error reaches the client as a generic message; its detail goes only to
//! the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokenfab_engine::{Error as EngineError, SchedulerError};

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
    #[error("Too many requests for this API key; retry after {retry_after_secs} s.")]
    RateLimited { retry_after_secs: u64 },
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
    /// The engine refused the request (or a token id failed the engine's range check); the
    /// table maps each kind of refusal to its own status.
    #[error("{}", refusal_message(.0))]
    Refused(EngineError),
    /// The engine failed the request after accepting it; the engine promises the message is
    /// safe to show.
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
            RateLimited { .. } | Refused(EngineError::QueueFull { .. }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            Refused(EngineError::TokenOutOfRange { .. })
            | Refused(EngineError::Scheduler(
                SchedulerError::EmptyPrompt | SchedulerError::TooLong { .. },
            )) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Refused(EngineError::Scheduler(SchedulerError::DoesNotFit { .. })) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            Refused(EngineError::ShuttingDown) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("server_shutting_down"),
            ),
            TooManyConnections { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("too_many_connections"),
            ),
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
            Refused(EngineError::EngineDead) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("engine_stopped"),
            ),
            Refused(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
            Engine(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        }
    }

    /// The body sent to the client (as a response or as an SSE error event). Logs internal
    /// errors in full.
    pub fn body(&self) -> ErrorBody {
        let (status, kind, code) = self.status_type_code();
        let message = match self {
            ApiError::Internal(_) | ApiError::Refused(_)
                if status == StatusCode::INTERNAL_SERVER_ERROR =>
            {
                tracing::error!(detail = %self, "internal error");
                GENERIC_INTERNAL.to_string()
            }
            // Refusals under load are expected; the listener and the drain log them once.
            ApiError::Refused(EngineError::ShuttingDown) | ApiError::TooManyConnections { .. } => {
                self.to_string()
            }
            other => {
                if status.is_server_error() {
                    tracing::warn!(error = %other, "request failed");
                }
                other.to_string()
            }
        };
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::Refused(EngineError::TokenOutOfRange { field, .. }) => {
                Some(field.to_string())
            }
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

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Refused(e)
    }
}

/// What a client reads for each refusal (the engine's own words, capitalized as ours are).
fn refusal_message(e: &EngineError) -> String {
    match e {
        EngineError::QueueFull {
            max,
            retry_after_secs,
        } => format!(
            "The server is at capacity ({max} requests waiting); retry after {retry_after_secs} s."
        ),
        EngineError::ShuttingDown => {
            "The server is shutting down and accepts no new requests.".into()
        }
        EngineError::EngineDead => {
            "The engine has stopped; the server cannot serve requests.".into()
        }
        other => other.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.status_type_code();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let ApiError::Refused(EngineError::QueueFull {
            retry_after_secs, ..
        })
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
        let r = ApiError::from(EngineError::QueueFull {
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
    fn engine_refusals_keep_their_status() {
        let status = |e: EngineError| ApiError::from(e).status_type_code().0.as_u16();
        let too_long = SchedulerError::TooLong {
            prompt_tokens: 10,
            max_tokens: 5,
            max_model_len: 12,
        };
        assert_eq!(status(EngineError::Scheduler(too_long)), 400);
        assert_eq!(
            status(EngineError::Scheduler(SchedulerError::EmptyPrompt)),
            400
        );
        let too_big = SchedulerError::DoesNotFit {
            needed_blocks: 9,
            num_blocks: 4,
        };
        assert_eq!(status(EngineError::Scheduler(too_big)), 413);
        assert_eq!(status(EngineError::ShuttingDown), 503);
        assert_eq!(status(EngineError::EngineDead), 503);
        assert_eq!(status(EngineError::Invalid("x".into())), 500);
        let e = ApiError::from(tokenfab_engine::check_token_id("logit_bias", 70, 50).unwrap_err());
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["param"], "logit_bias");
        assert_eq!(
            body["error"]["message"],
            "`logit_bias` token ids must be in [0, 50). Given: 70"
        );
        let hidden =
            serde_json::to_value(ApiError::from(EngineError::Invalid("secret".into())).body())
                .unwrap();
        assert_eq!(hidden["error"]["message"], GENERIC_INTERNAL);
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
