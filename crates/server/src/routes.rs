//! The handlers. Each one parses (json.rs), validates (validation.rs), submits and answers;
//! every failure is an [`ApiError`] mapped to a status in error.rs.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokenfab_engine::{check_token_id, RequestStream};

use crate::budget;
use crate::collect::{chat_response, collect, completion_response};
use crate::error::{ApiError, ApiResult};
use crate::json::{parse, JsonBody};
use crate::openai::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse, ModelCard,
    ModelList, SamplingFields, TokenizeRequest, TokenizeResponse,
};
use crate::sse::sse_response;
use crate::stream::{ChatStream, CompletionStream, Meta};
use crate::validation::{self, chat_prompt, check_model, Limits, ValidRequest};
use crate::AppState;

impl AppState {
    fn limits(&self) -> Limits<'_> {
        let info = self.engine.info();
        Limits {
            tokenizer: self.engine.tokenizer(),
            template: self.engine.chat_template(),
            context_len: info.context_len,
            kv_cache_tokens: info.kv_cache_tokens,
            vocab_size: info.vocab_size.min(self.engine.tokenizer().vocab_size()),
            model_id: &self.cfg.model_id,
            max_tokens_limit: self.cfg.max_tokens_limit,
            max_prompt_tokens: self.cfg.max_prompt_tokens.unwrap_or(usize::MAX),
            grammars: &self.engine,
            tools: self.tools,
            work: self.work,
            special_tokens_in_messages: self.cfg.special_tokens_in_messages,
        }
    }

    fn meta(&self, prefix: &str) -> Meta {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Meta {
            id: format!("{prefix}-{n:016x}"),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: self.cfg.model_id.clone(),
        }
    }

    /// Runs CPU work (templates, tokenization) off the async threads, a bounded number at once.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let s = self.clone();
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(format!("validation permits: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let r = f(&s);
            drop(permit);
            r
        })
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))?
    }
}

/// Submits every choice, as one group that shares one fair share of each engine step (the
/// scheduler's `fair.rs`); if one is refused, those already submitted are dropped (aborted).
fn submit_all(s: &AppState, v: &ValidRequest) -> ApiResult<Vec<RequestStream>> {
    static GROUPS: AtomicU64 = AtomicU64::new(1);
    let group = GROUPS.fetch_add(1, Ordering::Relaxed);
    v.engine_requests()
        .into_iter()
        .map(|mut r| {
            r.group = Some(group);
            s.engine.submit(r).map_err(ApiError::from)
        })
        .collect()
}

fn log_request(route: &str, meta: &Meta, v: &ValidRequest) {
    tracing::debug!(
        route,
        id = %meta.id,
        prompts = v.prompts().len(),
        prompt_tokens = v.prompts().iter().map(|p| p.tokens().len()).sum::<usize>(),
        max_tokens = v.prompts().first().map_or(0, |p| p.max_tokens()),
        n = v.n(),
        stream = v.stream(),
        "request"
    );
}

pub async fn chat_completions(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let req: ChatCompletionRequest = parse(&body)?;
    let fields: SamplingFields = parse(&body)?;
    let v = s
        .blocking(move |s| validation::chat(&req, &fields, &s.limits()))
        .await?;
    let meta = s.meta("chatcmpl");
    log_request("chat", &meta, &v);
    let streams = submit_all(&s, &v)?;
    if v.stream() {
        let m = ChatStream::new(meta, &v, s.vocab.clone());
        return Ok(sse_response(m, streams, s.cfg.keep_alive));
    }
    let outs = collect(streams).await?;
    Ok(Json(chat_response(meta, &v, outs, &s.vocab)).into_response())
}

pub async fn completions(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let req: CompletionRequest = parse(&body)?;
    let fields: SamplingFields = parse(&body)?;
    let v = s
        .blocking(move |s| validation::completion(&req, &fields, &s.limits()))
        .await?;
    let meta = s.meta("cmpl");
    log_request("completions", &meta, &v);
    let streams = submit_all(&s, &v)?;
    if v.stream() {
        let m = CompletionStream::new(meta, &v, s.vocab.clone());
        return Ok(sse_response(m, streams, s.cfg.keep_alive));
    }
    let outs = collect(streams).await?;
    Ok(Json(completion_response(meta, &v, outs, &s.vocab)).into_response())
}

fn card(s: &AppState) -> ModelCard {
    ModelCard {
        id: s.cfg.model_id.clone(),
        object: "model",
        created: s.created,
        owned_by: "tokenfab",
        root: s.engine.info().model_name.clone(),
        max_model_len: s.engine.info().context_len,
    }
}

pub async fn models(State(s): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![card(&s)],
    })
}

pub async fn model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelCard>> {
    check_model(Some(&id), &s.cfg.model_id)?;
    Ok(Json(card(&s)))
}

pub async fn tokenize(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<TokenizeResponse>> {
    let req: TokenizeRequest = parse(&body)?;
    let tokens = s
        .blocking(move |s| {
            let l = s.limits();
            check_model(req.model.as_deref(), l.model_id)?;
            // At most as many tokens as one request may compute (--max-request-prompt-tokens).
            let max = l.work.max_prompt_tokens_total;
            let tokens = match (&req.prompt, &req.messages) {
                (Some(p), None) => {
                    budget::check_text("prompt", p, max, &l)?;
                    l.tokenizer
                        .encode(p, req.add_special_tokens.unwrap_or(true), true)
                        .map_err(|e| ApiError::Internal(format!("tokenizing: {e}")))?
                }
                (None, Some(m)) => {
                    chat_prompt(m, req.add_generation_prompt.unwrap_or(true), None, max, &l)?.1
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "Give exactly one of `prompt` and `messages`.",
                    ))
                }
            };
            too_many_tokens(tokens.len(), max)?;
            Ok(tokens)
        })
        .await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: s.engine.info().context_len,
    }))
}

pub async fn detokenize(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<DetokenizeResponse>> {
    let req: DetokenizeRequest = parse(&body)?;
    let l = s.limits();
    check_model(req.model.as_deref(), l.model_id)?;
    too_many_tokens(req.tokens.len(), l.work.max_prompt_tokens_total)?;
    let ids = req
        .tokens
        .iter()
        .map(|&id| check_token_id("tokens", id, l.vocab_size).map_err(ApiError::from))
        .collect::<ApiResult<Vec<u32>>>()?;
    Ok(Json(DetokenizeResponse {
        prompt: l.tokenizer.decode(&ids, false),
    }))
}

/// /tokenize and /detokenize handle at most as many tokens as one request may compute.
fn too_many_tokens(n: usize, max: usize) -> ApiResult<()> {
    if n > max {
        return Err(ApiError::invalid(
            "tokens",
            format!("At most {max} tokens per request (--max-request-prompt-tokens). Given: {n}"),
        ));
    }
    Ok(())
}

/// Alive: the process answers and its engine thread runs (a dead engine makes a process that
/// should be restarted: 503).
pub async fn health(State(s): State<AppState>) -> Response {
    if s.engine.is_alive() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        let body = json!({"status": "engine stopped"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Ready: the engine loop is coming round and the server is not draining.
pub async fn ready(State(s): State<AppState>) -> Response {
    let (code, status) = if s.engine.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !s.engine.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    } else {
        (StatusCode::OK, "ready")
    };
    (code, Json(json!({"status": status}))).into_response()
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.engine.render_metrics(),
    )
        .into_response()
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}
