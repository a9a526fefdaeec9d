//! The OpenAI-compatible HTTP API over the serving engine: the only HTTP crate of tokenfab.
//!
//! Code map: `openai.rs` request/response bodies; `json.rs` reads a body (413/400); `validation.rs`
//! turns a request into a `ValidRequest`; `routes.rs` the handlers; `stream.rs` the SSE state
//! machines; `sse.rs` drives them over the engine streams; `collect.rs` non-streaming bodies;
//! `logprobs.rs` both logprobs shapes; `auth.rs` API keys; `error.rs` the one error enum and its
//! HTTP mapping table.
//!
//! Invariant: handlers hand the engine nothing but what `validation.rs` produced, and every
//! `RequestStream` is owned by the response (SSE body or handler future), so a client that goes
//! away aborts its requests.

mod auth;
mod collect;
pub mod error;
mod json;
mod logprobs;
pub mod openai;
mod routes;
mod sse;
pub mod stream;
pub mod validation;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokenfab_engine::EngineHandle;

pub use error::{ApiError, ApiResult};
use logprobs::Vocab;

/// The server's own settings (the engine's are in `EngineConfig`).
#[derive(Clone)]
pub struct ServerConfig {
    /// The model id clients must name (or omit) in `model`.
    pub model_id: String,
    /// Accepted bearer tokens for /v1 routes; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body; larger ones get 413.
    pub max_request_bytes: usize,
    /// Largest `max_tokens`, and the cap of the default (the rest of the context).
    pub max_tokens_limit: usize,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
}

impl std::fmt::Debug for ServerConfig {
    /// Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("model_id", &self.model_id)
            .field("api_keys", &format_args!("[{} keys]", self.api_keys.len()))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_tokens_limit", &self.max_tokens_limit)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl ServerConfig {
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            api_keys: vec![],
            max_request_bytes: 8 << 20,
            max_tokens_limit: 4096,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// What every handler shares: the engine handle and the settings.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub cfg: Arc<ServerConfig>,
    vocab: Vocab,
    next_id: Arc<AtomicU64>,
    created: u64,
}

/// The router with every route: /v1/chat/completions, /v1/completions, /v1/models,
/// /v1/models/{id}, /tokenize, /detokenize, /health, /ready, /metrics.
pub fn app(engine: EngineHandle, cfg: ServerConfig) -> Router {
    let vocab: Vocab = {
        let e = engine.clone();
        Arc::new(move |id| e.tokenizer().token_piece(id).to_vec())
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let limit = cfg.max_request_bytes;
    let state = AppState {
        engine,
        cfg: Arc::new(cfg),
        vocab,
        next_id: Arc::new(AtomicU64::new(created << 20)),
        created,
    };
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves; then stops accepting connections,
/// refuses new requests (the engine drains: 503) and waits up to `drain_timeout` for the
/// responses in flight. Returns false when the timeout cut some off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: EngineHandle,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    use std::future::IntoFuture;
    let app = app(engine.clone(), cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_engine = engine.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(
            in_flight = drain_engine.num_unfinished(),
            timeout_s = drain_timeout.as_secs_f64(),
            "shutting down: no new requests; finishing those in flight"
        );
        drain_engine.begin_drain();
        let _ = stop_tx.send(());
    });
    let deadline = async move {
        match stop_rx.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = server.into_future() => r.map(|()| true),
        _ = deadline => {
            tracing::warn!(
                unfinished = engine.num_unfinished(),
                "shutdown timeout reached; cutting off the requests still running"
            );
            Ok(false)
        }
    }
}
