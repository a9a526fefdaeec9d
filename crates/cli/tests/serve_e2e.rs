//! `tokenfab serve` end to end over a real socket with the real default model: routes, errors,
//! 64 concurrent streams, batching invariance, prefix-cache hits, preemption, SIGTERM.

mod common;
mod serve_common;

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use serve_common::*;

const MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1";

fn prompts(n: usize) -> Vec<String> {
    let subjects = [
        "The capital of France is",
        "Water boils at",
        "My favourite animal is the",
        "The first rule of programming is",
        "Once upon a time, in a small village,",
        "The best way to learn a language is",
        "In 1969, the first humans",
        "A good breakfast includes",
    ];
    (0..n)
        .map(|i| format!("{} (note {i})", subjects[i % subjects.len()]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_errors_and_auth_over_a_socket() {
    let _g = serial().await;
    let s = Server::start(&["--api-key", "k-one", "--max-request-bytes", "4096"]);
    let log = s.log_text();
    assert!(log.contains("kv_cache_tokens"), "{log}");
    assert!(!log.contains("k-one"), "the key was logged: {log}");
    wait_ready(&s).await;
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("k-one");

    // 401 without the key, on every /v1 route.
    let r = s.client.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .post(s.url("/v1/completions"))
        .json(&greedy("a", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = auth(s.client.get(s.url("/v1/models")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], MODEL_ID);

    // The reference tokens of the default model (/tokenize needs the key too).
    let r = s
        .client
        .post(s.url("/tokenize"))
        .json(&json!({"prompt": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = auth(s.client.post(s.url("/tokenize")))
        .json(&json!({"prompt": "The capital of France is"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tokens"], json!([504, 3575, 282, 4649, 314]));
    assert_eq!(v["max_model_len"], 8192);
    let v: Value = auth(s.client.post(s.url("/v1/completions")))
        .json(
            &json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 4,
                      "temperature": 0, "logprobs": 1, "echo": true}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expect: Value = auth(s.client.post(s.url("/detokenize")))
        .json(&json!({"tokens": [504, 3575, 282, 4649, 314, 7042, 30, 198, 198]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["text"], expect["prompt"], "{v}");
    let lps = &v["choices"][0]["logprobs"]["token_logprobs"];
    assert!(lps[0].is_null());
    // llama.cpp: " Paris" at -0.2484 after the prompt.
    assert!((lps[5].as_f64().unwrap() + 0.2484).abs() < 0.05, "{lps}");

    // Chat, streamed, with usage.
    let body = json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
                      "stream": true, "stream_options": {"include_usage": true}});
    let r = auth(s.client.post(s.url("/v1/chat/completions")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"role\":\"assistant\"") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    // (Key order is serde_json's: sorted, or as written once a crate enables `preserve_order`.)
    assert!(
        text.contains("\"usage\":{\"") && text.contains("\"completion_tokens\":"),
        "{text}"
    );

    // Errors.
    let post_raw = |body: Vec<u8>| {
        auth(s.client.post(s.url("/v1/completions")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        post_raw(b"{\"prompt\": ".to_vec()).await.unwrap().status(),
        400
    );
    assert_eq!(
        post_raw(b"{\"prompt\": \"\xff\"}".to_vec())
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post_raw(
            json!({"prompt": "a", "max_tokens": 99999})
                .to_string()
                .into()
        )
        .await
        .unwrap()
        .status(),
        400
    );
    assert_eq!(
        post_raw(json!({"prompt": "a", "model": "x"}).to_string().into())
            .await
            .unwrap()
            .status(),
        404
    );
    let r = post_raw(json!({"prompt": "a".repeat(5000)}).to_string().into())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("4096"));

    // Prefix caching: the same long prompt twice.
    let long = "You are a helpful assistant. ".repeat(12);
    let hits0 = s.metric("tokenfab:prefix_cache_hits_total").await;
    for _ in 0..2 {
        let r = auth(s.client.post(s.url("/v1/completions")))
            .json(&greedy(&long, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let hits = s.metric("tokenfab:prefix_cache_hits_total").await;
    assert!(hits - hits0 >= 64.0, "prefix cache hits {hits0} -> {hits}");
}

/// `tokenfab generate --temperature 0` and the server run the same engine: the same prompt gives
/// the same tokens, an end-of-generation token included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generate_and_the_server_give_the_same_tokens() {
    let _g = serial().await;
    let s = Server::start(&[]);
    wait_ready(&s).await;
    for (prompt, ignore_eos) in [
        ("The capital of France is", true),
        (
            "<|im_start|>user\nSay only the word yes.<|im_end|>\n<|im_start|>assistant\n",
            false,
        ),
    ] {
        let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0,
                          "ignore_eos": ignore_eos, "logprobs": 0,
                          "return_tokens_as_token_ids": true});
        let (st, v) = s.post("/v1/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        let served: Vec<u32> = v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap()["token_id:".len()..].parse().unwrap())
            .collect();
        let model = common::model();
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
        ];
        args.extend([
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--json",
            "--device",
            "cpu",
        ]);
        if ignore_eos {
            args.push("--ignore-eos");
        }
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            move || common::tokenfab(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let j: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let generated: Vec<u32> = serde_json::from_value(j["tokens"].clone()).unwrap();
        assert_eq!(generated, served, "prompt {prompt:?}");
        assert_eq!(
            v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
            generated.len()
        );
        if !ignore_eos {
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            assert_eq!(generated.last(), Some(&2), "ends with <|im_end|>");
        }
    }
    // A prefill-only request (lm-eval's loglikelihood shape): the prompt and its logprobs, no
    // completion, and no generated token counted.
    let before = s.metric("tokenfab:generation_tokens_total").await;
    let body = json!({"prompt": "The capital of France is", "max_tokens": 0, "echo": true,
                      "logprobs": 1});
    let (st, v) = s.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "The capital of France is");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let lps = v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap();
    assert_eq!(lps.len(), 5);
    assert!(lps[0].is_null() && lps[1..].iter().all(|l| l.as_f64().unwrap() < 0.0));
    assert_eq!(s.metric("tokenfab:generation_tokens_total").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_streams_all_complete() {
    let _g = serial().await;
    let s = Server::start(&[]);
    wait_ready(&s).await;
    let url = s.url("/v1/completions");
    let ps = prompts(64);
    let outs = join_all(ps.iter().map(|p| {
        let mut b = greedy(p, 12);
        b["stream"] = json!(true);
        let (c, u) = (s.client.clone(), url.clone());
        async move { stream(&c, &u, &b, |_| {}).await }
    }))
    .await;
    for (i, o) in outs.iter().enumerate() {
        assert!(o.done, "stream {i} ended without [DONE]");
        assert_eq!(o.finish.as_deref(), Some("length"), "stream {i}");
    }
    assert_eq!(s.metric("tokenfab:num_requests_running").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batching_does_not_change_greedy_output() {
    let _g = serial().await;
    let s = Server::start(&[]);
    wait_ready(&s).await;
    let ps = prompts(32);
    let text = |v: Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    let mut alone = Vec::new();
    for p in &ps {
        let (st, v) = s.post("/v1/completions", &greedy(p, 10)).await;
        assert_eq!(st, 200, "{v}");
        alone.push(text(v));
    }
    let together: Vec<String> = join_all(ps.iter().map(|p| async {
        let b = greedy(p, 10);
        s.post("/v1/completions", &b).await
    }))
    .await
    .into_iter()
    .map(|(_, v)| text(v))
    .collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "prompt {i}: {:?}", ps[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preemption_under_a_tiny_pool_gives_the_same_text() {
    let _g = serial().await;
    let ps = prompts(8);
    let run = |args: &'static [&'static str]| {
        let ps = ps.clone();
        async move {
            let s = Server::start(args);
            wait_ready(&s).await;
            let outs: Vec<(u16, Value)> = join_all(ps.iter().map(|p| async {
                let b = greedy(p, 48);
                s.post("/v1/completions", &b).await
            }))
            .await;
            let preempted = s.metric("tokenfab:num_preemptions_total").await;
            let texts: Vec<String> = outs
                .into_iter()
                .map(|(st, v)| {
                    assert_eq!(st, 200, "{v}");
                    assert_eq!(v["choices"][0]["finish_reason"], "length");
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                })
                .collect();
            (texts, preempted)
        }
    };
    let (roomy, p0) = run(&[]).await;
    // 16 blocks of 16 tokens (f16 KV: 23,040 bytes per token): each request alone fits, all 8
    // do not.
    let (tight, p1) = run(&["--kv-cache-memory", "5898240"]).await;
    assert_eq!(p0, 0.0);
    assert!(p1 > 0.0, "no preemption happened");
    assert_eq!(roomy, tight);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_streams_in_flight_and_exits_0() {
    let _g = serial().await;
    let mut s = Server::start(&["--shutdown-timeout", "60"]);
    wait_ready(&s).await;
    let url = s.url("/v1/completions");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = prompts(4)
        .into_iter()
        .map(|p| {
            let mut b = greedy(&p, 40);
            b["stream"] = json!(true);
            let (c, u, tx) = (s.client.clone(), url.clone(), tx.clone());
            tokio::spawn(async move {
                stream(&c, &u, &b, |n| {
                    if n == 2 {
                        let _ = tx.send(());
                    }
                })
                .await
            })
        })
        .collect();
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    s.sigterm();
    for t in tasks {
        let o = t.await.unwrap();
        assert!(o.done && o.finish.as_deref() == Some("length"), "{o:?}");
    }
    s.assert_exits_0().await;
}

/// Sends a raw HTTP request, reads `read_bytes` of the answer (0: none), then closes the socket.
async fn hang_up(addr: &str, body: &Value, read_bytes: usize) {
    use tokio::io::AsyncReadExt;
    let host = addr.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
    write_completion_request(&mut sock, addr, body).await;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < read_bytes {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed first");
        got += n;
    }
    if read_bytes == 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_hang_up_are_aborted() {
    let _g = serial().await;
    let s = Server::start(&[]);
    wait_ready(&s).await;
    let mut body = greedy("Tell me a very long story.", 2000);
    // Mid-wait (not streamed): the handler's future is dropped with the connection.
    hang_up(&s.base, &body, 0).await;
    // Mid-stream: after the first bytes of the event stream.
    body["stream"] = json!(true);
    hang_up(&s.base, &body, 1).await;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = s.get_text("/metrics").await;
        let aborts: f64 = m
            .lines()
            .filter(|l| l.starts_with("tokenfab:request_success_total") && l.contains("\"abort\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let running = s.metric("tokenfab:num_requests_running").await
            + s.metric("tokenfab:num_requests_waiting").await;
        if aborts >= 2.0 && running == 0.0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "aborts {aborts}, still running {running}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
