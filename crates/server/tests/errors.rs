//! Every error status: 400 (JSON, UTF-8, types, ranges, context), 401, 404, 413, 429 with
//! Retry-After, 503 while draining; all in OpenAI's error shape.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;
use tokenfab_engine::{EngineConfig, EngineRequest};

async fn bad(t: &TestApp, path: &str, body: &str) -> String {
    let (s, _, b) = t.post_raw(path, body.to_string()).await;
    let v = to_json(&b);
    assert_eq!(s, 400, "{body} -> {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    error_message(&v)
}

#[tokio::test]
async fn malformed_bodies_and_wrong_types_are_400_naming_the_field() {
    let t = TestApp::new();
    let c = "/v1/completions";
    assert!(bad(&t, c, "{\"prompt\": ").await.contains("not valid JSON"));
    let (s, _, b) = t.post_raw(c, b"{\"prompt\": \"\xff\xfe\"}".to_vec()).await;
    assert_eq!(s, 400);
    assert!(error_message(&to_json(&b)).contains("UTF-8"));
    assert!(bad(&t, c, "[]").await.contains("object"));
    assert!(bad(&t, c, r#"{"max_tokens": 3}"#)
        .await
        .contains("`prompt`"));
    assert!(bad(&t, c, r#"{"prompt": "a", "temperature": "hot"}"#)
        .await
        .contains("`temperature`"));
    assert!(bad(&t, c, r#"{"prompt": "a", "max_tokens": 1.5}"#)
        .await
        .contains("`max_tokens`"));
    assert!(bad(&t, c, r#"{"prompt": {"x": 1}}"#)
        .await
        .starts_with("`prompt` must be a string"));
    assert!(bad(&t, c, r#"{"prompt": "a", "stop": 5}"#)
        .await
        .contains("`stop`"));
    let m = bad(&t, "/v1/chat/completions", r#"{"messages": [{"role": 1}]}"#).await;
    assert!(m.contains("messages[0].role"), "{m}");
    let m = bad(&t, "/v1/chat/completions", r#"{"messages": []}"#).await;
    assert!(m.contains("`messages`"), "{m}");
    let (s, _, b) = t.post_raw(c, r#"{"prompt": "a", "temperature": 3}"#).await;
    assert_eq!(s, 400);
    let v = to_json(&b);
    assert_eq!(v["error"]["param"], "temperature");
    assert_eq!(
        error_message(&v),
        "`temperature` must be in [0, 2]. Given: 3"
    );
}

#[tokio::test]
async fn out_of_range_values_are_400_naming_field_and_limit() {
    let t = TestApp::new();
    let c = "/v1/completions";
    let cases = [
        (
            r#"{"prompt": "a", "max_tokens": 5000}"#,
            "`max_tokens` must be <= 200. Given: 5000",
        ),
        (
            r#"{"prompt": "a", "max_tokens": -1}"#,
            "`max_tokens` must be >= 0. Given: -1",
        ),
        (
            r#"{"prompt": "a", "max_tokens": 0}"#,
            "`max_tokens` must be >= 1",
        ),
        (
            r#"{"prompt": "a", "top_p": 1.5}"#,
            "`top_p` must be in (0, 1]. Given: 1.5",
        ),
        (r#"{"prompt": "a", "top_k": -2}"#, "`top_k`"),
        (
            r#"{"prompt": "a", "min_p": 2}"#,
            "`min_p` must be in [0, 1]",
        ),
        (
            r#"{"prompt": "a", "presence_penalty": 3}"#,
            "`presence_penalty` must be in [-2, 2]",
        ),
        (
            r#"{"prompt": "a", "frequency_penalty": -3}"#,
            "`frequency_penalty` must be in [-2, 2]",
        ),
        (
            r#"{"prompt": "a", "repetition_penalty": 0}"#,
            "`repetition_penalty`",
        ),
        (
            r#"{"prompt": "a", "n": 0}"#,
            "`n` must be in [1, 128]. Given: 0",
        ),
        (
            r#"{"prompt": "a", "logprobs": 21}"#,
            "`logprobs` must be in [0, 20]. Given: 21",
        ),
        (
            r#"{"prompt": "a", "logit_bias": {"1": 500}}"#,
            "`logit_bias` must be in [-100, 100]",
        ),
        (
            r#"{"prompt": "a", "logit_bias": {"9999": 1}}"#,
            "`logit_bias` token ids must be in [0, 258)",
        ),
        (
            r#"{"prompt": "a", "stop_token_ids": [258]}"#,
            "`stop_token_ids` token ids must be in [0, 258)",
        ),
        (
            r#"{"prompt": [1, 300]}"#,
            "`prompt` token ids must be in [0, 258). Given: 300",
        ),
        (r#"{"prompt": ""}"#, "`prompt` must not be empty"),
        (r#"{"prompt": []}"#, "`prompt` must not be empty"),
        (
            r#"{"prompt": "a", "stream_options": {"include_usage": true}}"#,
            "`stream_options`",
        ),
    ];
    for (body, want) in cases {
        let m = bad(&t, c, body).await;
        assert!(m.starts_with(want), "{body}: {m}");
    }
    let chat = "/v1/chat/completions";
    let m = bad(
        &t,
        chat,
        r#"{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}"#,
    )
    .await;
    assert!(m.contains("`logprobs`"), "{m}");
    let m = bad(
        &t,
        chat,
        r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 50}"#,
    )
    .await;
    assert!(
        m.starts_with("`top_logprobs` must be in [0, 20]. Given: 50"),
        "{m}"
    );
    let m = bad(
        &t,
        chat,
        r#"{"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 999}"#,
    )
    .await;
    assert!(
        m.starts_with("`max_completion_tokens` must be <= 200"),
        "{m}"
    );
}

#[tokio::test]
async fn prompt_over_the_context_is_400() {
    let t = TestApp::with(small_engine_cfg(), |c| c.max_tokens_limit = 1000);
    let long = "a".repeat(250);
    let (s, v) = t
        .post("/v1/completions", json!({"prompt": long, "max_tokens": 10}))
        .await;
    assert_eq!(s, 400);
    let m = error_message(&v);
    assert!(
        m.contains("maximum context length is 256") && m.contains("260"),
        "{m}"
    );
    let (s, v) = t
        .post("/v1/completions", json!({"prompt": "a".repeat(300)}))
        .await;
    assert_eq!(s, 400);
    assert!(error_message(&v).contains("300 tokens"));
    let (s, _) = t
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "b".repeat(300)}]}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn unknown_model_is_404() {
    let t = TestApp::new();
    for (path, body) in [
        ("/v1/completions", json!({"model": "gpt-9", "prompt": "a"})),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}),
        ),
        ("/tokenize", json!({"model": "gpt-9", "prompt": "a"})),
    ] {
        let (s, v) = t.post(path, body).await;
        assert_eq!(s, 404, "{path}");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(error_message(&v).contains("gpt-9"));
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let t = TestApp::with(small_engine_cfg(), |c| c.max_request_bytes = 1000);
    let body = json!({"prompt": "x".repeat(2000)}).to_string();
    let (s, _, b) = t.post_raw("/v1/completions", body).await;
    assert_eq!(s, 413);
    let v = to_json(&b);
    assert!(error_message(&v).contains("1000 bytes"));
    assert_eq!(v["error"]["code"], "request_too_large");
    let (s, _, _) = t
        .post_raw(
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1}).to_string(),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn api_keys_guard_v1_routes() {
    let t = TestApp::with(small_engine_cfg(), |c| {
        c.api_keys = vec!["k1".into(), "secret-two".into()]
    });
    let req = |auth: Option<&str>| {
        let mut r = Request::get("/v1/models");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    };
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Bearer k"),
        Some("Basic k1"),
        Some("k1"),
    ] {
        let (s, h, b) = t.send(req(auth)).await;
        assert_eq!(s, 401, "{auth:?}");
        assert_eq!(h["www-authenticate"], "Bearer");
        let v = to_json(&b);
        error_message(&v);
        assert!(!v.to_string().contains("k1") && !v.to_string().contains("secret-two"));
    }
    for auth in ["Bearer k1", "Bearer secret-two", "bearer k1"] {
        assert_eq!(t.send(req(Some(auth))).await.0, 200, "{auth}");
    }
    let post = Request::post("/v1/completions")
        .body(Body::from(
            json!({"prompt": "a", "max_tokens": 1}).to_string(),
        ))
        .unwrap();
    assert_eq!(t.send(post).await.0, 401);
    // Health, readiness and metrics stay open for probes.
    assert_eq!(t.get("/health").await.0, 200);
    assert_eq!(t.get("/metrics").await.0, 200);
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    // One running request at a time and one place in the queue.
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_queued_requests: 1,
        max_num_batched_tokens: 1,
        ..small_engine_cfg()
    };
    let t = TestApp::with(cfg, |_| {});
    let long = |n| EngineRequest {
        prompt_tokens: (0..n).map(|i| (i % 250) as u32).collect(),
        max_tokens: 30,
        ignore_eos: true,
        ..Default::default()
    };
    let mut got = None;
    for _ in 0..20 {
        // A prefills one token per step, so it runs a long while; B waits in the queue. Wait
        // until the engine has taken A, or B (not the HTTP request) would meet the full queue.
        let a = t.engine.submit(long(200)).unwrap();
        let start = std::time::Instant::now();
        while t.engine.metrics().num_requests_running.get() < 1.0
            && start.elapsed() < std::time::Duration::from_secs(5)
        {
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        let b = t.engine.submit(long(10));
        let (s, h, body) = t
            .post_raw(
                "/v1/completions",
                json!({"prompt": "a", "max_tokens": 1}).to_string(),
            )
            .await;
        drop((a, b));
        t.wait_idle().await;
        if s == 429 {
            got = Some((h, to_json(&body)));
            break;
        }
    }
    let (h, v) = got.expect("never saw 429");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    error_message(&v);
}

#[tokio::test]
async fn draining_is_503_and_not_ready() {
    let t = TestApp::new();
    t.engine.begin_drain();
    let (s, v) = t
        .post("/v1/completions", json!({"prompt": "a", "max_tokens": 1}))
        .await;
    assert_eq!(s, 503);
    assert_eq!(v["error"]["code"], "server_shutting_down");
    let (s, _, b) = t.get("/ready").await;
    assert_eq!(s, 503);
    assert_eq!(to_json(&b)["status"], "draining");
    assert_eq!(t.get("/health").await.0, 200);
    t.engine.shutdown(Duration::from_secs(1));
    // The engine thread is gone: the process is no longer healthy.
    let (s, _, b) = t.get("/health").await;
    assert_eq!(s, 503);
    assert_eq!(to_json(&b)["status"], "engine stopped");
}
