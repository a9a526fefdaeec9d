//! API keys: /v1 routes need `Authorization: Bearer <key>` when keys are configured. Keys are
//! compared in constant time and never logged.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;
use crate::AppState;

/// True when `given` equals one of `keys`; every key is compared, whatever matches.
pub fn key_matches(keys: &[String], given: &str) -> bool {
    let mut ok = Choice::from(0);
    for k in keys {
        ok |= k.as_bytes().ct_eq(given.as_bytes());
    }
    ok.into()
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub async fn require_api_key(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.cfg.api_keys.is_empty() {
        return next.run(req).await;
    }
    match bearer(&req) {
        Some(k) if key_matches(&s.cfg.api_keys, k) => next.run(req).await,
        _ => {
            tracing::debug!(path = %req.uri().path(), "request without a valid API key");
            ApiError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = vec!["abc".to_string(), "secret-2".to_string()];
        assert!(key_matches(&keys, "abc"));
        assert!(key_matches(&keys, "secret-2"));
        assert!(!key_matches(&keys, "ab"));
        assert!(!key_matches(&keys, "abcd"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&[], "abc"));
    }
}
