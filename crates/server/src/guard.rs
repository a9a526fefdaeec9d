//! Middleware in front of every route: JSON bodies only (415 otherwise), the drain's manners
//! (every response says `Connection: close`, new generations get 503 at once), the count of
//! responses in flight that the drain waits for, and a memory budget for large bodies.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

use crate::error::ApiError;
use crate::AppState;

/// True for `application/json` and `application/<something>+json`, with any parameters
/// (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|s| s.ends_with("+json"))
}

/// POST bodies must be declared JSON. Browsers send `text/plain`, form and bodiless
/// cross-origin POSTs without asking (no CORS preflight), so accepting them would let any web
/// page run generations on a server without keys; a JSON content type makes the browser ask
/// first, and CORS (`--allowed-origins`) answers.
pub async fn require_json(req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    match req.headers().get(CONTENT_TYPE).map(|v| v.to_str()) {
        Some(Ok(ct)) if is_json(ct) => next.run(req).await,
        Some(Ok(ct)) => ApiError::UnsupportedMediaType(format!("{ct:?}")).into_response(),
        Some(Err(_)) => ApiError::UnsupportedMediaType("a non-ASCII value".into()).into_response(),
        None => ApiError::UnsupportedMediaType("no Content-Type".into()).into_response(),
    }
}

/// While the server drains: generation requests get 503 before their body is read, and every
/// response (including `/ready`'s 503) closes its connection, so that keep-alive clients
/// reconnect elsewhere instead of finding their connection closed under a request.
pub async fn drain(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !s.engine.is_draining() {
        return next.run(req).await;
    }
    let generation = req.method() == Method::POST && req.uri().path().starts_with("/v1/");
    let mut resp = if generation {
        ApiError::Refused(tokenfab_engine::Error::ShuttingDown).into_response()
    } else {
        next.run(req).await
    };
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Bodies larger than this draw on the large-body budget (and are parsed off the async threads).
pub const LARGE_BODY: usize = 64 << 10;

/// Requests with bodies over [`LARGE_BODY`] take their size (KiB) from a budget (as large as the
/// largest body) until their response is ready: a body is held as bytes, as a JSON value and as
/// typed fields at once, and tokenizing megabytes of text takes tens of megabytes more, so without
/// it 32 concurrent 5 MB bodies take a gigabyte and starve every other request. Smaller requests
/// never wait here.
pub async fn bound_large_bodies(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    // Without a length (chunked), the body may be as large as allowed.
    let size = match declared {
        Some(n) if n <= LARGE_BODY => return next.run(req).await,
        Some(n) => n.min(s.cfg.max_request_bytes),
        None if req.method() == Method::POST => s.cfg.max_request_bytes,
        None => return next.run(req).await,
    };
    let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
    let _held = match s.large_bodies.acquire_many(kib).await {
        Ok(p) => p,
        Err(e) => return ApiError::Internal(format!("body budget: {e}")).into_response(),
    };
    next.run(req).await
}

/// Decrements the in-flight count when dropped.
struct Leaving(Arc<AtomicUsize>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's place in the in-flight count.
struct Counted {
    inner: Body,
    _leaving: Leaving,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// Passed on, so that a sized body keeps its `Content-Length`.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request as in flight from its arrival until its response body is done with (sent
/// to its end, or dropped because the client went away): a streamed response is in flight as
/// long as it streams.
pub async fn count_in_flight(State(s): State<AppState>, req: Request, next: Next) -> Response {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let leaving = Leaving(s.in_flight.clone());
    let resp = next.run(req).await;
    resp.map(move |inner| {
        Body::new(Counted {
            inner,
            _leaving: leaving,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
