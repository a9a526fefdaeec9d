//! Fault tests over a real socket, bounded in time, with `--dummy-weights tiny` (no model file):
//! a KV pool exhausted by long requests (preemption, same text as alone), a full queue (429 with
//! Retry-After, then recovery), a client that stops reading its stream (bounded buffering, abort
//! after `--stream-timeout`, memory freed), SIGTERM with streams in flight, and a missing or
//! corrupt model file at start (clear error, exit code 1).

mod common;
mod serve_common;

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use serve_common::*;
use tokio::io::AsyncReadExt;

fn tiny(extra: &[&str]) -> Server {
    let mut args = vec!["--dummy-weights", "tiny", "--threads", "1"];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_pool_exhausted_preempts_and_every_request_gets_its_own_text() {
    let _g = serial().await;
    // 256 bytes per token (2 layers x K,V x 32 x f16): 320 KiB hold 1,280 tokens, while 8
    // requests of ~20 + 200 tokens need 1,760.
    let s = tiny(&["--kv-cache-memory", "327680", "--block-size", "16"]);
    wait_ready(&s).await;
    let bodies: Vec<Value> = (0..8)
        .map(|i| greedy(&format!("request {i}: the quick brown fox"), 200))
        .collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(text_of(&s, b).await);
    }
    assert_eq!(s.metric("tokenfab:num_preemptions_total").await, 0.0);
    let together = join_all(bodies.iter().map(|b| text_of(&s, b))).await;
    assert!(
        s.metric("tokenfab:num_preemptions_total").await > 0.0,
        "the pool never ran out: {}",
        s.log_text()
    );
    assert_eq!(alone, together);
    wait_metric(&s, "tokenfab:kv_cache_usage_perc", 0.0, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after_then_recovers() {
    let _g = serial().await;
    let s = tiny(&["--max-num-seqs", "1", "--max-queued-requests", "2"]);
    wait_ready(&s).await;
    let url = s.url("/v1/completions");
    let sends = (0..12).map(|i| {
        let (c, u) = (s.client.clone(), url.clone());
        async move {
            let r = c
                .post(u)
                .json(&greedy(&format!("queue {i}"), 400))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        }
    });
    let res = join_all(sends).await;
    let refused: Vec<_> = res.iter().filter(|r| r.0 == 429).collect();
    assert!(
        !refused.is_empty(),
        "no 429 among {:?}",
        res.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (st, retry, v) in &res {
        assert!(*st == 200 || *st == 429, "{st}: {v}");
        if *st == 429 {
            let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
            assert!(secs >= 1);
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        }
    }
    // Recovery: once the queue drains, requests are accepted again.
    wait_metric(&s, "tokenfab:num_requests_running", 0.0, 30).await;
    assert!(!text_of(&s, &greedy("after", 4)).await.is_empty());
}

/// Opens a stream over a socket with a small receive buffer, reads the headers, then reads
/// nothing more (the socket stays open).
async fn stalled_stream(addr: &str, body: &Value) -> tokio::net::TcpStream {
    let host = addr.trim_start_matches("http://");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sock = sock.connect(host.parse().unwrap()).await.unwrap();
    write_completion_request(&mut sock, addr, body).await;
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_aborted_after_stream_timeout() {
    let _g = serial().await;
    let s = tiny(&["--stream-timeout", "1"]);
    wait_ready(&s).await;
    // 128 choices x 480 tokens: ~12 MB of SSE, more than loopback socket buffers hold (the
    // kernel's send buffer grows to 4 MiB).
    let mut b = greedy("stall", 480);
    b["n"] = json!(128);
    b["stream"] = json!(true);
    let t0 = Instant::now();
    let sock = stalled_stream(&s.base, &b).await;
    // Every choice ends (finished or aborted) although the client reads nothing.
    wait_metric(&s, "tokenfab:request_success_total", 128.0, 60).await;
    wait_metric(&s, "tokenfab:num_requests_running", 0.0, 5).await;
    wait_metric(&s, "tokenfab:num_requests_waiting", 0.0, 5).await;
    wait_metric(&s, "tokenfab:kv_cache_usage_perc", 0.0, 5).await;
    let log = s.log_text();
    assert!(
        log.contains("stopped reading its stream"),
        "not aborted for the stall ({:.1} s): {log}",
        t0.elapsed().as_secs_f64()
    );
    drop(sock);
    // The server is fine afterwards.
    assert!(!text_of(&s, &greedy("after", 4)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_streams_finish_refuses_new_ones_and_exits_0() {
    let _g = serial().await;
    let mut s = tiny(&["--shutdown-timeout", "60"]);
    wait_ready(&s).await;
    let url = s.url("/v1/completions");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let mut b = greedy(&format!("sigterm {i}"), 300);
            b["stream"] = json!(true);
            let (c, u, tx) = (s.client.clone(), url.clone(), tx.clone());
            tokio::spawn(async move {
                // A slow reader keeps its stream in flight for a while.
                let mut n = 0;
                let out = stream(&c, &u, &b, |k| {
                    n = k;
                    if k == 2 {
                        let _ = tx.send(());
                    }
                    std::thread::sleep(Duration::from_millis(3));
                })
                .await;
                (out, n)
            })
        })
        .collect();
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    s.sigterm();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new request: refused (503 on a connection still open, or no connection at all).
    match reqwest::Client::new()
        .post(&url)
        .json(&greedy("late", 4))
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 503),
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
    }
    for t in tasks {
        let (o, _) = t.await.unwrap();
        assert!(o.done && o.finish.as_deref() == Some("length"), "{o:?}");
    }
    s.assert_exits_0().await;
}

fn serve_fails(model: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(["serve", "--port", "0", "--model"])
        .arg(model)
        .env_remove("TOKENFAB_API_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_or_corrupt_model_file_exits_1_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("tokenfab-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    let (code, err) = serve_fails(&missing);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let corrupt = dir.join("corrupt.gguf");
    std::fs::write(&corrupt, b"this is not a model file at all").unwrap();
    let (code, err) = serve_fails(&corrupt);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("corrupt.gguf") && err.contains("GGUF"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A real header cut short: the tensor data is missing.
    let truncated = dir.join("truncated.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    std::fs::write(&truncated, &bytes).unwrap();
    let (code, err) = serve_fails(&truncated);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
