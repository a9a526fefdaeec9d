//! A client that goes away mid-stream or mid-wait aborts its requests: the engine frees them.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use tokenfab_engine::EngineConfig;
use tower::ServiceExt;

/// Prefill one token per step: a 200-token prompt keeps a request busy for a while.
fn slow_cfg() -> EngineConfig {
    EngineConfig {
        max_num_batched_tokens: 1,
        ..small_engine_cfg()
    }
}

fn body(stream: bool) -> String {
    json!({"prompt": "z".repeat(200), "max_tokens": 50, "ignore_eos": true, "stream": stream, "n": 2})
        .to_string()
}

#[tokio::test]
async fn dropping_a_stream_mid_way_aborts_its_requests() {
    let t = TestApp::with(slow_cfg(), |_| {});
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"messages": [{"role": "user", "content": "z".repeat(150)}], "max_tokens": 50,
                   "ignore_eos": true, "stream": true, "n": 2})
            .to_string(),
        ))
        .unwrap();
    let resp = t.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The role chunks come first, before any token.
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("assistant"));
    assert_eq!(t.engine.num_unfinished(), 2);
    drop(body);
    t.wait_idle().await;
    let (_, _, m) = t.get("/metrics").await;
    assert_eq!(finished_count(&String::from_utf8_lossy(&m), "abort"), 2.0);
}

#[tokio::test]
async fn dropping_a_waiting_non_streaming_request_aborts_it() {
    let t = TestApp::with(slow_cfg(), |_| {});
    let app = t.app.clone();
    let task = tokio::spawn(async move {
        let req = Request::post("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(body(false)))
            .unwrap();
        app.oneshot(req).await
    });
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while t.engine.num_unfinished() < 2 {
        assert!(std::time::Instant::now() < end, "requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    t.wait_idle().await;
    let (_, _, m) = t.get("/metrics").await;
    assert_eq!(finished_count(&String::from_utf8_lossy(&m), "abort"), 2.0);
}

#[tokio::test]
async fn keep_alive_comments_flow_while_waiting() {
    let t = TestApp::with(slow_cfg(), |c| c.keep_alive = Duration::from_millis(2));
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body(true)))
        .unwrap();
    let resp = t.app.clone().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.lines().any(|l| l.starts_with(':')),
        "no keep-alive comment"
    );
    let chunks = sse_chunks(&bytes);
    assert!(chunks.len() >= 100);
}
