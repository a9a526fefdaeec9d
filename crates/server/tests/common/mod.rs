//! Handler tests' helpers: the engine on the tiny random model (byte-level vocabulary, ChatML
//! template, context 256) and `app().oneshot(..)` requests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{EngineConfig, EngineHandle, LoadedModel};
use tokenfab_server::ServerConfig;
use tower::ServiceExt;

/// The tiny model's id (its file stem).
pub const MODEL: &str = "tiny";

pub fn engine(cfg: EngineConfig) -> EngineHandle {
    engine_paced(cfg, Duration::ZERO)
}

/// [`engine`] with every forward pass taking at least `per_step`.
pub fn engine_paced(cfg: EngineConfig, per_step: Duration) -> EngineHandle {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-server-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let m = LoadedModel::load(&write_tiny_model(&dir)).unwrap();
    if per_step.is_zero() {
        return EngineHandle::start(m, cfg).unwrap();
    }
    EngineHandle::start_with(m, cfg, |e| tokenfab_engine::testing::paced(e, per_step)).unwrap()
}

pub fn small_engine_cfg() -> EngineConfig {
    EngineConfig {
        kv_cache_bytes: 4 << 20,
        ..Default::default()
    }
}

pub struct TestApp {
    pub app: Router,
    pub engine: EngineHandle,
}

impl TestApp {
    pub fn new() -> Self {
        Self::with(small_engine_cfg(), |_| {})
    }

    pub fn with(cfg: EngineConfig, f: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::on(engine(cfg), f)
    }

    /// The app over a given engine.
    pub fn on(engine: EngineHandle, f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut sc = ServerConfig::new(MODEL);
        sc.max_tokens_limit = 200;
        sc.keep_alive = Duration::from_millis(200);
        f(&mut sc);
        TestApp {
            app: tokenfab_server::app(engine.clone(), sc),
            engine,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        self.send(req).await
    }

    /// POST JSON; the reply parsed as JSON (or as a string when it is not JSON).
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, b) = self.post_raw(path, body.to_string()).await;
        (s, to_json(&b))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// Waits until the engine has no unfinished request.
    pub async fn wait_idle(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.engine.num_unfinished() > 0 {
            assert!(
                Instant::now() < end,
                "requests still unfinished: {}",
                self.engine.num_unfinished()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn to_json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .flat_map(|ev| {
            ev.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim_start().to_string())
        })
        .collect()
}

/// The JSON chunks of an SSE body, asserting it ends with `[DONE]`.
pub fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Asserts the OpenAI error shape and returns the message.
pub fn error_message(v: &Value) -> String {
    let e = &v["error"];
    assert!(e["message"].is_string(), "not an OpenAI error: {v}");
    assert!(e["type"].is_string(), "not an OpenAI error: {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e["message"].as_str().unwrap().to_string()
}

/// `request_success_total` for one finish reason, from /metrics.
pub fn finished_count(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tokenfab:request_success_total")
                && l.contains(&format!("finished_reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
