//! The OpenAI-compatible HTTP API over the serving engine: the only HTTP crate of tokenfab.
//!
//! Code map: `openai.rs` request/response bodies; `json.rs` reads a body (413/400); `validation.rs`
//! turns a request into a `ValidRequest`; `routes.rs` the handlers; `stream.rs` the SSE state
//! machines; `sse.rs` drives them over the engine streams; `collect.rs` non-streaming bodies;
//! `logprobs.rs` both logprobs shapes; `auth.rs` API keys; `tokenizer_info.rs` the tokenizer's
//! configuration as vLLM serves it; `error.rs` the one error enum and its HTTP mapping table.
//! Hardening: `listen.rs` (connections: timeouts, limit, drain), `guard.rs` (415 for non-JSON
//! bodies, drain manners), `budget.rs` (per-request work budget), `messages.rs` (chat roles,
//! shielded special-token text).
//!
//! Invariant: handlers hand the engine nothing but what `validation.rs` produced, and every
//! `RequestStream` is owned by the response (SSE body or handler future), so a client that goes
//! away aborts its requests.

mod auth;
pub mod budget;
mod collect;
pub mod error;
mod guard;
mod json;
pub mod listen;
mod logprobs;
mod messages;
pub mod openai;
pub mod ratelimit;
mod routes;
mod sse;
pub mod stream;
pub mod structured;
mod tokenizer_info;
pub mod tools;
pub mod validation;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokenfab_engine::EngineHandle;

pub use budget::{WorkBudget, WorkLimits};
pub use error::{ApiError, ApiResult};
pub use listen::ConnectionLimits;
use logprobs::Vocab;
use ratelimit::Limiter;
pub use ratelimit::RateLimit;

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
    /// Most tokens of one prompt; `None`: only the context and the KV pool bound it.
    pub max_prompt_tokens: Option<usize>,
    /// Per-key token bucket on /v1 routes; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Origins allowed by CORS; empty: no CORS headers at all (browsers refuse cross-origin).
    pub allowed_origins: Vec<String>,
    /// `--tool-call-parser`: the tool-call format; `None`: detected from the chat template.
    pub tool_call_parser: Option<tokenfab_structured::ToolFormat>,
    /// `--reasoning-parser`: `<think>` text of chat outputs goes to `reasoning_content`.
    pub reasoning_parser: Option<tokenfab_structured::ReasoningFormat>,
    /// Read timeouts, connection limit and socket buffers (listen.rs).
    pub connections: ConnectionLimits,
    /// What one request may ask for in all (budget.rs).
    pub work: WorkLimits,
    /// Parse special-token text in chat message contents and names into special tokens
    /// (off: it stays text, so a message cannot forge a turn; messages.rs).
    pub special_tokens_in_messages: bool,
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
            .field("max_prompt_tokens", &self.max_prompt_tokens)
            .field("rate_limit", &self.rate_limit)
            .field("allowed_origins", &self.allowed_origins)
            .field("tool_call_parser", &self.tool_call_parser)
            .field("reasoning_parser", &self.reasoning_parser)
            .field("connections", &self.connections)
            .field("work", &self.work)
            .field(
                "special_tokens_in_messages",
                &self.special_tokens_in_messages,
            )
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
            max_prompt_tokens: None,
            rate_limit: None,
            allowed_origins: vec![],
            tool_call_parser: None,
            reasoning_parser: None,
            connections: ConnectionLimits::default(),
            work: WorkLimits::default(),
            special_tokens_in_messages: false,
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
    limiter: Option<Arc<Limiter>>,
    /// How tools reach prompts and how chat outputs are parsed (from the template and flags).
    tools: tools::ToolSetup,
    /// The work limits resolved for the model (budget.rs).
    work: WorkBudget,
    /// Permits for CPU work off the async threads (templates, tokenization): bounds the memory
    /// of many large bodies tokenized at once.
    cpu: Arc<tokio::sync::Semaphore>,
    /// Requests whose response is not yet sent (guard.rs); the drain waits for them.
    in_flight: Arc<AtomicUsize>,
    /// KiB of large request bodies that may be held at once (guard.rs).
    large_bodies: Arc<tokio::sync::Semaphore>,
}

/// The OpenAPI 3.1 document served at /openapi.json.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The router with every route: /v1/chat/completions, /v1/completions, /v1/models,
/// /v1/models/{id}, /tokenize, /detokenize, /tokenizer_info, /health, /ready, /metrics,
/// /openapi.json.
pub fn app(engine: EngineHandle, cfg: ServerConfig) -> Router {
    app_counted(engine, cfg, Arc::default())
}

/// [`app`], counting the requests whose responses are in flight in `in_flight`.
fn app_counted(engine: EngineHandle, cfg: ServerConfig, in_flight: Arc<AtomicUsize>) -> Router {
    let vocab: Vocab = {
        let e = engine.clone();
        Arc::new(move |id| e.tokenizer().token_piece(id).to_vec())
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let limit = cfg.max_request_bytes;
    let cors = cors_layer(&cfg.allowed_origins);
    let limiter = cfg.rate_limit.map(|r| Arc::new(Limiter::new(r)));
    let tools = tools::ToolSetup::new(
        engine.chat_template(),
        cfg.tool_call_parser,
        cfg.reasoning_parser,
    );
    tracing::info!(
        format = tools.format.name(),
        template_takes_tools = tools.template_takes_tools,
        reasoning_parser = ?tools.reasoning,
        "tool calls"
    );
    let work = WorkBudget::new(
        &cfg.work,
        engine.info().context_len,
        engine.config().max_queued_requests,
        engine.tokenizer(),
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = AppState {
        engine,
        cfg: Arc::new(cfg),
        vocab,
        next_id: Arc::new(AtomicU64::new(created << 20)),
        created,
        limiter,
        tools,
        work,
        cpu: Arc::new(tokio::sync::Semaphore::new(2 * cores)),
        in_flight,
        large_bodies: Arc::new(tokio::sync::Semaphore::new(
            limit.div_ceil(1024).max(guard::LARGE_BODY >> 10),
        )),
    };
    // /tokenize and /detokenize do model work too: the same key check and rate limit.
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        // Layers run outside-in: the key is checked before its bucket is charged, and both
        // before the body's type.
        .route_layer(axum::middleware::from_fn(guard::require_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::rate_limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        // A GET of the tokenizer's settings: no model work, no key (as /health and /metrics).
        .route("/tokenizer_info", get(tokenizer_info::tokenizer_info))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::drain,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::bound_large_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::count_in_flight,
        ))
        .layer(cors)
        .with_state(state)
}

/// CORS for the given origins (`*` allows any); none given: a layer that adds nothing, so
/// browsers keep refusing cross-origin calls.
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

/// A generation request body -> [`ValidRequest`](validation::ValidRequest): everything a handler
/// does before it submits (JSON checks, typed parsing, validation). Exposed for fuzzing.
pub fn validate_request(
    chat: bool,
    body: &[u8],
    l: &validation::Limits,
) -> ApiResult<validation::ValidRequest> {
    let v = json::parse_body(body)?;
    let f: openai::SamplingFields = json::parse(&v)?;
    if chat {
        validation::chat(&json::parse(&v)?, &f, l)
    } else {
        validation::completion(&json::parse(&v)?, &f, l)
    }
}

/// Serves the API on `listener` until `shutdown` resolves; then drains: keeps accepting
/// connections (`/ready` answers 503, new requests 503 with `Connection: close`), lets the
/// requests in flight finish for up to `drain_timeout`, and closes every connection (listen.rs).
/// Returns false when the timeout cut some requests off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: EngineHandle,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    let limits = cfg.connections;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let app = app_counted(engine.clone(), cfg, in_flight.clone());
    let drain = listen::Drain {
        engine,
        in_flight,
        timeout: drain_timeout,
    };
    listen::run(listener, app, limits, shutdown, drain).await
}
