//! What an inference gateway reads from a real `tokenfab serve`: /metrics through the
//! `prometheus_client` parser, and KV-cache events through pyzmq + msgspec against the cache's
//! real behaviour and an independent implementation of vLLM's block hash
//! (scripts/check-metrics.py, scripts/kv-events-check.py; docs/deploy.md), and the Helm chart
//! against the server (deploy/helm/check-chart.py).
//! Needs python3 with pyzmq, msgpack, msgspec, cbor2, xxhash, prometheus_client, PyYAML and
//! helm-python-sdk (.ci/run installs them).

mod common;
mod serve_common;

use serve_common::*;

/// Panics with the install command when a Python module is missing.
fn need_python(modules: &[&str]) {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with {modules:?} is needed for this test: `python3 -m pip install pyzmq \
             msgpack msgspec cbor2 xxhash prometheus_client pyyaml helm-python-sdk` (then rerun)"
        ),
    }
}

/// Arguments for a script (path from the checkout's root) that starts servers itself from the
/// binary and the default model.
fn script_with_server(script: &str) -> Vec<String> {
    vec![
        common::root().join(script).to_string_lossy().into_owned(),
        "--binary".into(),
        env!("CARGO_BIN_EXE_tokenfab").into(),
        "--model".into(),
        common::model().to_string_lossy().into_owned(),
    ]
}

/// The log without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a Python script to its end; panics with its output when it fails.
async fn python(args: Vec<String>, log: impl Fn() -> String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("running python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_prometheus_client() {
    need_python(&["prometheus_client"]);
    let _g = serial().await;
    let s = Server::start(&["--kv-cache-memory", "15MiB", "--block-size", "16"]);
    wait_ready(&s).await;
    let body = serde_json::json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Hello",
                                  "max_tokens": 4});
    let (code, _) = s.post("/v1/completions", &body).await;
    assert_eq!(code, 200);
    // The pool's size as the engine logged it: kv_cache_tokens=N (between colour codes).
    let log = strip_ansi(&s.log_text());
    let tokens: usize = log
        .split("kv_cache_tokens=")
        .nth(1)
        .and_then(|t| {
            let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no kv_cache_tokens in the log: {log}"));
    let script = common::root().join("scripts/check-metrics.py");
    let args = vec![
        script.to_string_lossy().into_owned(),
        "--url".into(),
        s.base.clone(),
        "--block-size".into(),
        "16".into(),
        "--num-gpu-blocks".into(),
        (tokens / 16).to_string(),
    ];
    python(args, || s.log_text()).await;
}

/// The script starts its own servers (its SUB socket must be bound before the server starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_match_the_cache_and_vllms_block_hash() {
    need_python(&["zmq", "msgspec", "cbor2", "xxhash"]);
    let _g = serial().await;
    python(
        script_with_server("scripts/kv-events-check.py"),
        String::new,
    )
    .await;
}

/// deploy/helm/tokenfab rendered by Helm's own engine (helm-python-sdk), its Deployment's
/// container run as the kubelet would run it: probes, ports, metrics and drain match the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_matches_the_server() {
    need_python(&["helm_python", "yaml"]);
    let _g = serial().await;
    python(
        script_with_server("deploy/helm/check-chart.py"),
        String::new,
    )
    .await;
}
