//! Issue 13's socket cases, over real sockets against a real `tokenfab serve --dummy-weights
//! tiny` (no model file): half-sent requests under an open-file limit the test sets itself, a
//! trickled body, a stream read once and then never, Retry-After from the observed pace, and the
//! drain (a second signal, the exit code, `/ready` and keep-alive requests during it).

mod common;
mod serve_common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tiny_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--dummy-weights", "tiny", "--threads", "1"];
    args.extend_from_slice(extra);
    args
}

fn tiny(extra: &[&str]) -> Server {
    Server::start_with(&tiny_args(extra))
}

/// A server whose open-file limit (soft and hard) is `nofile`, set in the child before exec.
fn tiny_with_nofile(nofile: u64, extra: &[&str]) -> Server {
    let mut cmd = Server::command(&tiny_args(extra));
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(cmd)
}

fn host(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Sends `req` on a new connection and reads the response head and body (until the body's
/// length, or the connection's end); `None` if nothing complete came within `within`.
async fn exchange(sock: &mut TcpStream, req: &str, within: Duration) -> Option<String> {
    sock.write_all(req.as_bytes()).await.ok()?;
    read_response(sock, within).await
}

async fn read_response(sock: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end].lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                });
                if len.is_some_and(|n| buf.len() >= head_end + 4 + n) {
                    return;
                }
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.starts_with("HTTP/1.1").then_some(text)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
}

fn post(path: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Case 1: 56 connections that each send half a request, under a 64-descriptor limit, used to
/// make every request (even /health) hang and `accept` fail with "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_requests_cannot_hold_the_server() {
    let _g = serial().await;
    let s = tiny_with_nofile(
        64,
        &["--header-read-timeout", "1", "--body-read-timeout", "1"],
    );
    wait_ready(&s).await;
    let addr = host(&s);
    let mut half = Vec::new();
    for _ in 0..56 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n",
        )
        .await
        .unwrap();
        half.push(c);
    }
    // At once: an answer, not a hang; a refusal names the limit.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let r = exchange(&mut c, &get("/health"), Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("/health hung: {}", s.log_text()));
    assert!(
        r.starts_with("HTTP/1.1 200")
            || (r.starts_with("HTTP/1.1 503")
                && r.contains("too_many_connections")
                && r.contains("--max-connections")),
        "{r}"
    );
    // After the header timeout (1 s) the half-sent ones are closed and /health is served.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut c = TcpStream::connect(&addr).await.unwrap();
        let r = exchange(&mut c, &get("/health"), Duration::from_secs(3)).await;
        if r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(Instant::now() < end, "still not served: {r:?}");
    }
    // Closed by the server: refused ones after their 503, the others unanswered.
    let mut closed = 0;
    for mut h in half {
        let mut b = Vec::new();
        if tokio::time::timeout(Duration::from_secs(5), h.read_to_end(&mut b))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 56, "every half-sent request's connection is closed");
    assert!(
        !s.log_text().contains("Too many open files"),
        "{}",
        s.log_text()
    );
    // A body that stops half-way gets 408.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":";
    let r = exchange(&mut c, head, Duration::from_secs(5)).await;
    assert!(
        r.as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 408") && r.contains("body_timeout")),
        "{r:?}"
    );
}

/// A connection over `--max-connections` gets a 503 that says why, and the server serves again
/// once connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let _g = serial().await;
    let s = tiny(&["--max-connections", "4"]);
    wait_ready(&s).await;
    let addr = host(&s);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&addr).await.unwrap();
        assert!(exchange(&mut c, &get("/health"), Duration::from_secs(5))
            .await
            .is_some());
        held.push(c);
    }
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let r = exchange(&mut c, &get("/health"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        r.contains("retry-after: 1") && r.contains("4 connections open"),
        "{r}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.get_text("/health").await.0, 200);
}

/// Polls `/metrics` until `name` reaches at least `want` (or fails after `secs`).
async fn wait_metric_at_least(s: &Server, name: &str, want: f64, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = s.metric(name).await;
        if v >= want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name} = {v}, not >= {want}: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Case 3: a client that reads the start of a stream and then nothing. 16 x 480 tokens are about
/// 1.3 MB of SSE, which the kernel's autotuned buffers used to absorb whole (the stream ran to the
/// end); with small send buffers the stall shows after a few hundred kilobytes, the requests are
/// aborted after `--stream-timeout`, and the stream, read at last, ends with the client's timeout.
/// (The tiny model generates the whole stream in a fraction of a second, hence the 10 ms timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_read_once_then_never_is_aborted_as_the_clients_timeout() {
    let _g = serial().await;
    let s = tiny(&["--stream-timeout", "0.01"]);
    wait_ready(&s).await;
    let mut c = TcpStream::connect(host(&s)).await.unwrap();
    let body = json!({"prompt": "stall", "max_tokens": 480, "n": 16, "ignore_eos": true,
                      "temperature": 0, "stream": true});
    c.write_all(post("/v1/completions", &body).as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = c.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Every choice ends, aborted: nobody reads.
    wait_metric_at_least(&s, "tokenfab:request_success_total", 16.0, 60).await;
    let aborted = s.log_text().matches("stopped reading its stream").count();
    assert!(aborted >= 1, "ran to the end unread: {}", s.log_text());
    // Reading at last: what was buffered, then the reason.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 65536];
        while !String::from_utf8_lossy(&rest).contains("data: [DONE]") {
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("\"code\":\"stream_timeout\""),
        "{}",
        &text[text.len().saturating_sub(600)..]
    );
    assert!(
        !text.contains("The engine stopped"),
        "reported as the engine's failure"
    );
    let (err, done) = (
        text.find("stream_timeout").unwrap(),
        text.rfind("data: [DONE]"),
    );
    assert!(done.is_some_and(|d| d > err), "the reason, then [DONE]");
}

/// Case 6: the first refusal of a full queue says how long a place takes to free (here the
/// running request's remaining tokens at the observed step time), not 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_follows_the_observed_pace() {
    let _g = serial().await;
    // A model of the real size, so that a long request takes seconds.
    let s = Server::start_with(&[
        "--dummy-weights",
        "smollm2-135m",
        "--threads",
        "1",
        "--kv-cache-memory",
        "128MiB",
        "--max-num-seqs",
        "1",
        "--max-queued-requests",
        "1",
    ]);
    wait_ready(&s).await;
    let long = json!({"prompt": "a", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let mut a = TcpStream::connect(host(&s)).await.unwrap();
    a.write_all(post("/v1/completions", &long).as_bytes())
        .await
        .unwrap();
    wait_metric_at_least(&s, "tokenfab:generation_tokens_total", 3.0, 60).await;
    let mut b = TcpStream::connect(host(&s)).await.unwrap();
    b.write_all(post("/v1/completions", &json!({"prompt": "b", "max_tokens": 1})).as_bytes())
        .await
        .unwrap();
    wait_metric_at_least(&s, "tokenfab:num_requests_waiting", 1.0, 30).await;
    let r = s
        .client
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "c", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("first Retry-After of a full queue: {secs} s");
    assert!(
        secs >= 2,
        "Retry-After {secs} s while the running request needs ~4,000 more steps"
    );
    drop((a, b));
}

fn signal(s: &Server, sig: &str) {
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

async fn wait_exit(s: &mut Server, secs: u64) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(st) = s.child.try_wait().unwrap() {
            return Some(st);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Opens a stream nobody reads (kept in flight by `--stream-timeout 60`).
async fn stalled(s: &Server) -> TcpStream {
    let mut c = TcpStream::connect(host(s)).await.unwrap();
    let body =
        json!({"prompt": "drain", "max_tokens": 480, "n": 8, "ignore_eos": true, "stream": true});
    c.write_all(post("/v1/completions", &body).as_bytes())
        .await
        .unwrap();
    wait_metric_at_least(s, "tokenfab:num_requests_running", 1.0, 30).await;
    c
}

/// Case 7: during the drain the server still accepts connections: `/ready` says 503, and a
/// request on a keep-alive connection gets a 503 with `Connection: close` (it used to find its
/// connection closed under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn during_the_drain_ready_is_503_and_keep_alive_requests_get_503_and_close() {
    let _g = serial().await;
    let mut s = tiny(&["--shutdown-timeout", "30", "--stream-timeout", "60"]);
    wait_ready(&s).await;
    let mut keep = TcpStream::connect(host(&s)).await.unwrap();
    let r = exchange(&mut keep, &get("/health"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let busy = stalled(&s).await;
    signal(&s, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(host(&s))
        .await
        .expect("still accepting during the drain");
    let r = exchange(&mut c, &get("/ready"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("draining"),
        "{r}"
    );
    let r = exchange(
        &mut keep,
        &post(
            "/v1/completions",
            &json!({"prompt": "late", "max_tokens": 1}),
        ),
        Duration::from_secs(5),
    )
    .await
    .expect("an answer on the keep-alive connection");
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(r.contains("server_shutting_down"), "{r}");
    // The stream in flight ends (its client goes): the drain completes, exit 0.
    drop(busy);
    let st = wait_exit(&mut s, 30).await.expect("exits once idle");
    assert!(st.success(), "{st:?}: {}", s.log_text());
}

/// Case 7: a drain the timeout cut short exits non-zero (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_cut_short_exits_non_zero() {
    let _g = serial().await;
    let mut s = tiny(&["--shutdown-timeout", "1", "--stream-timeout", "60"]);
    wait_ready(&s).await;
    let _busy = stalled(&s).await;
    signal(&s, "-TERM");
    let st = wait_exit(&mut s, 20)
        .await
        .expect("exits after the shutdown timeout");
    assert_eq!(st.code(), Some(3), "{}", s.log_text());
    assert!(s.log_text().contains("cut requests off"));
}

/// Case 7: a second SIGTERM (or Ctrl-C) during the drain exits at once (130).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_forces_the_exit() {
    let _g = serial().await;
    let mut s = tiny(&["--shutdown-timeout", "60", "--stream-timeout", "60"]);
    wait_ready(&s).await;
    let _busy = stalled(&s).await;
    signal(&s, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.child.try_wait().unwrap().is_none(), "draining, not gone");
    let t0 = Instant::now();
    signal(&s, "-INT");
    let st = wait_exit(&mut s, 5)
        .await
        .expect("a second signal exits at once");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(st.code(), Some(130), "{}", s.log_text());
}
