//! A real `tokenfab serve` on 127.0.0.1 port 0 with the real default model, and a small client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// One server at a time: the tests measure batching on a couple of cores.
/// (An async mutex: each test has its own runtime and holds the guard across awaits.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything the server wrote on stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts `tokenfab serve --port 0` with `args` and waits for its address.
    pub fn start(args: &[&str]) -> Server {
        let model = crate::common::model();
        let mut all = vec!["--model", model.to_str().expect("a UTF-8 model path")];
        all.extend_from_slice(args);
        if !args.contains(&"--kv-cache-memory") {
            all.extend_from_slice(&["--kv-cache-memory", "256MiB"]);
        }
        Self::start_with(&all)
    }

    /// Starts `tokenfab serve --port 0` with exactly `args` (the model included, or
    /// `--dummy-weights`) and waits for its address.
    pub fn start_with(args: &[&str]) -> Server {
        Self::spawn(Self::command(args))
    }

    /// `tokenfab serve --port 0 args`, not yet started.
    pub fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenfab"));
        cmd.args(["serve", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("TOKENFAB_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts `cmd` (from [`Server::command`]) and waits for its address.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("starting tokenfab serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                l.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("the server printed no address: {:?}", log.lock().unwrap());
            }
        };
        Server {
            child,
            base,
            log,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A metric's value summed over its label sets (`tokenfab:` names).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get_text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM to the server.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits up to 30 s for the process to exit and asserts it exited 0.
    pub async fn assert_exits_0(&mut self) {
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < end, "still running: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit {status:?}: {}", self.log_text());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A streamed completion: the text of choice 0, its finish reason and whether `[DONE]` came.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Streamed {
    pub text: String,
    pub finish: Option<String>,
    pub done: bool,
    pub chunks: usize,
}

/// POSTs with `stream: true` and reads the SSE body to its end. `on_chunk` runs after each chunk.
pub async fn stream(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    mut on_chunk: impl FnMut(usize),
) -> Streamed {
    let r = client.post(url).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let mut out = Streamed::default();
    let mut buf = String::new();
    let mut bytes = r.bytes_stream();
    while let Some(b) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&b.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            for data in ev.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    out.done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                assert!(v.get("error").is_none(), "error event: {v}");
                let c = &v["choices"][0];
                if let Some(t) = c["text"].as_str().or(c["delta"]["content"].as_str()) {
                    out.text.push_str(t);
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    out.finish = Some(f.to_string());
                }
                out.chunks += 1;
                on_chunk(out.chunks);
            }
        }
    }
    out
}

/// A greedy completion body that runs to `max_tokens` (EOS ignored).
pub fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

/// POSTs `body` to /v1/completions and returns the text of choice 0 (the status must be 200).
pub async fn text_of(s: &Server, body: &Value) -> String {
    let (st, v) = s.post("/v1/completions", body).await;
    assert_eq!(st, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Polls `/metrics` until `name` reads `want` (or fails after `secs`).
pub async fn wait_metric(s: &Server, name: &str, want: f64, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = s.metric(name).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < end, "{name} = {v}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a raw HTTP `POST /v1/completions` of `body` to `sock` connected to `addr`
/// (`http://host:port`), for tests that then read the answer slowly or not at all.
pub async fn write_completion_request(sock: &mut tokio::net::TcpStream, addr: &str, body: &Value) {
    let host = addr.trim_start_matches("http://");
    let body = body.to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
}

/// Waits for the server's /ready.
pub async fn wait_ready(s: &Server) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if s.get_text("/ready").await.0 == 200 {
            return;
        }
        assert!(Instant::now() < end, "never ready: {}", s.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
