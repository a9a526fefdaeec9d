//! End to end over real sockets: a tiny deterministic OpenAI-style streaming server written
//! here with tokio (127.0.0.1, port 0), and full `run_bench` runs against it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenfab_bench::{run_bench, BenchConfig, Bound, Endpoint, Load, PromptSource, Slo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake server behaves.
#[derive(Clone, Copy)]
struct Fake {
    ttft_ms: u64,
    itl_ms: u64,
    /// Answer `/tokenize` only in llama-server's shape (`{"content"}`, no `/detokenize`).
    llama_shape: bool,
    /// Every Nth generation request gets HTTP 503.
    fail_every: Option<usize>,
    /// TTFT becomes this when more than `crowd` requests are in flight (a saturated server).
    crowd: Option<(usize, u64)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            ttft_ms: 30,
            itl_ms: 10,
            llama_shape: false,
            fail_every: None,
            crowd: None,
        }
    }
}

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    generations: AtomicUsize,
    /// Generation requests whose body asked for the usage chunk and ignore_eos.
    well_formed: AtomicUsize,
    /// Every distinct prompt (or message list) a generation request carried.
    prompts: Mutex<HashSet<String>>,
    /// When each generation request arrived, in order.
    arrivals: Mutex<Vec<Instant>>,
}

async fn start(fake: Fake) -> (String, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(sock, fake, s.clone()));
        }
    });
    (url, stats)
}

/// Reads one HTTP/1.1 request: (method, path, body).
async fn read_request(sock: &mut TcpStream) -> Option<(String, String, Value)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.lines().next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((method, path, body))
}

async fn respond_json(sock: &mut TcpStream, status: u16, v: Value) {
    let body = v.to_string();
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = sock.write_all((head + &body).as_bytes()).await;
}

/// One token per whitespace-separated word; the id is the word's length (any id will do).
fn tokenize(text: &str) -> Vec<u64> {
    text.split_whitespace().map(|w| w.len() as u64).collect()
}

async fn serve(mut sock: TcpStream, fake: Fake, stats: Arc<Stats>) {
    let Some((method, path, body)) = read_request(&mut sock).await else {
        return;
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/models") => {
            respond_json(
                &mut sock,
                200,
                json!({"object": "list", "data": [{"id": "fake-model"}]}),
            )
            .await
        }
        ("POST", "/tokenize") => {
            let key = if fake.llama_shape {
                "content"
            } else {
                "prompt"
            };
            // Like llama-server, a body without the expected field tokenizes to nothing.
            let ids = tokenize(body.get(key).and_then(Value::as_str).unwrap_or(""));
            respond_json(&mut sock, 200, json!({"count": ids.len(), "tokens": ids})).await;
        }
        ("POST", "/detokenize") if !fake.llama_shape => {
            let n = body["tokens"].as_array().map_or(0, Vec::len);
            respond_json(&mut sock, 200, json!({"prompt": vec!["word"; n].join(" ")})).await;
        }
        ("POST", p @ ("/v1/completions" | "/v1/chat/completions")) => {
            let chat = p.contains("chat");
            generate(&mut sock, fake, &stats, &body, chat).await;
        }
        _ => respond_json(&mut sock, 404, json!({"error": {"message": "not found"}})).await,
    }
}

async fn generate(sock: &mut TcpStream, fake: Fake, stats: &Stats, body: &Value, chat: bool) {
    let n = stats.generations.fetch_add(1, Ordering::SeqCst) + 1;
    let key = if chat { "messages" } else { "prompt" };
    stats.prompts.lock().unwrap().insert(body[key].to_string());
    stats.arrivals.lock().unwrap().push(Instant::now());
    if body["stream"] == json!(true)
        && body["stream_options"]["include_usage"] == json!(true)
        && body["ignore_eos"] == json!(true)
    {
        stats.well_formed.fetch_add(1, Ordering::SeqCst);
    }
    if fake.fail_every.is_some_and(|k| n.is_multiple_of(k)) {
        return respond_json(sock, 503, json!({"error": {"message": "overloaded"}})).await;
    }
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let prompt_tokens = match &body["prompt"] {
        Value::Array(ids) => ids.len(),
        Value::String(s) => tokenize(s).len(),
        _ => tokenize(body["messages"][0]["content"].as_str().unwrap_or("")).len(),
    };
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    let _ = sock.write_all(head.as_bytes()).await;
    let mut ttft = fake.ttft_ms;
    if let Some((crowd, slow_ms)) = fake.crowd {
        // Let a wave of simultaneous arrivals register before judging the crowd.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if stats.in_flight.load(Ordering::SeqCst) > crowd {
            ttft = slow_ms;
        }
    }
    let send = |data: Value| format!("data: {data}\n\n");
    let mut events = Vec::new();
    if chat {
        events.push((0, send(json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}))));
    }
    for i in 0..max_tokens {
        let text = format!(" w{i}");
        let finish = if i + 1 == max_tokens {
            json!("length")
        } else {
            Value::Null
        };
        let choice = if chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish})
        };
        events.push((
            if i == 0 { ttft } else { fake.itl_ms },
            send(json!({"choices": [choice]})),
        ));
        if i == 1 {
            events.push((0, ": keep-alive\n\n".to_string()));
        }
    }
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens});
    events.push((0, send(json!({"choices": [], "usage": usage}))));
    events.push((0, "data: [DONE]\n\n".to_string()));
    let last = events.len() - 1;
    let mut counted = true;
    for (e, (delay, ev)) in events.into_iter().enumerate() {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if e == last {
            // Out of flight before the client can see the end and send its next request (else
            // a busy runtime could count that one before this one leaves).
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            counted = false;
        }
        if sock.write_all(ev.as_bytes()).await.is_err() {
            break;
        }
    }
    if counted {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn config(url: &str) -> BenchConfig {
    BenchConfig {
        url: url.to_string(),
        model: None,
        compare_url: None,
        compare_model: None,
        endpoint: Endpoint::Completions,
        loads: vec![Load::Concurrency(1)],
        bound: Bound {
            num_prompts: Some(8),
            duration: None,
        },
        source: PromptSource::Synthetic {
            input_len: 16,
            output_len: 8,
        },
        ignore_eos: true,
        seed: 1,
        warmup: 0,
        slo: None,
        attainment: 0.9,
        capacity_max: None,
        rounds: 1,
        timeout: Duration::from_secs(20),
        progress: false,
        profile: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_measures_ttft_tpot_and_holds_concurrency() {
    let (url, stats) = start(Fake::default()).await;
    let cfg = BenchConfig {
        loads: vec![Load::Concurrency(1), Load::Concurrency(4)],
        warmup: 2,
        ..config(&url)
    };
    let rep = run_bench(&cfg).await.unwrap();
    assert_eq!(rep.targets[0].model, "fake-model");
    assert!(rep.workload.exact_lengths);
    assert_eq!(
        stats.max_in_flight.load(Ordering::SeqCst),
        4,
        "c=4 keeps exactly 4 in flight"
    );
    assert_eq!(stats.generations.load(Ordering::SeqCst), 2 + 8 + 8);
    assert_eq!(stats.well_formed.load(Ordering::SeqCst), 18);
    assert_eq!(
        stats.prompts.lock().unwrap().len(),
        18,
        "no request repeats an earlier prompt (a repeat would measure the prefix cache)"
    );
    for m in &rep.targets[0].runs {
        assert_eq!((m.completed, m.failed), (8, 0), "{}", m.load_label());
        assert_eq!(m.input_tokens, 8 * 16, "prompts of exactly 16 tokens");
        assert_eq!(m.output_tokens, 8 * 8);
        // Server: first token after 30 ms, then one every 10 ms. Client-side figures are at
        // least that, and not much more on an idle loopback (generous bounds: shared CPUs).
        assert!(
            m.ttft.p50 >= 29.0 && m.ttft.p50 < 200.0,
            "ttft {:?}",
            m.ttft
        );
        assert!(m.tpot.p50 >= 9.0 && m.tpot.p50 < 60.0, "tpot {:?}", m.tpot);
        assert_eq!(m.itl.count, 8 * 7);
        assert!(m.e2e.p50 >= 29.0 + 70.0);
        assert!(m.output_tokens_per_s > 0.0 && m.request_throughput > 0.0);
    }
    // Four users finish the same work faster than one.
    let (c1, c4) = (&rep.targets[0].runs[0], &rep.targets[0].runs[1]);
    assert!(c4.output_tokens_per_s > 1.5 * c1.output_tokens_per_s);
    let text = tokenfab_bench::report::render(&rep);
    assert!(text.contains("c=4") && text.contains("TPOT"), "{text}");
    // The JSON carries the keys the issue names.
    let v = serde_json::to_value(&rep).unwrap();
    for k in ["ttft", "tpot", "itl", "e2e"] {
        for p in ["mean", "p50", "p90", "p99"] {
            assert!(v["targets"][0]["runs"][0][k][p].is_f64(), "{k}.{p}");
        }
    }
    assert!(v["targets"][0]["runs"][1]["output_tokens_per_s"].is_f64());
    assert!(v["targets"][0]["runs"][1]["request_throughput"].is_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_by_duration_counts_errors_and_goodput_on_chat() {
    let fake = Fake {
        llama_shape: true,
        fail_every: Some(4),
        ..Fake::default()
    };
    let (url, _) = start(fake).await;
    let cfg = BenchConfig {
        endpoint: Endpoint::Chat,
        loads: vec![Load::Rate {
            rate: 40.0,
            burstiness: 1.0,
        }],
        bound: Bound {
            num_prompts: None,
            duration: Some(Duration::from_millis(600)),
        },
        slo: Some(Slo {
            ttft_ms: Some(5000.0),
            tpot_ms: Some(1000.0),
        }),
        ..config(&url)
    };
    let rep = run_bench(&cfg).await.unwrap();
    let m = &rep.targets[0].runs[0];
    let sent = m.completed + m.failed;
    // 40/s for 0.6 s: about 24 arrivals (Poisson: wide bounds).
    assert!((8..=60).contains(&sent), "sent {sent}");
    assert_eq!(m.errors.get("http_503").copied().unwrap_or(0), m.failed);
    assert!(m.failed >= 1 && m.failed <= sent / 4 + 1);
    // llama-server's /tokenize shape is understood (no /detokenize: the words are the text).
    assert!(rep.workload.exact_lengths);
    assert_eq!(m.input_tokens, m.completed * 16);
    let g = m.goodput.unwrap();
    assert!(
        (g.share - m.completed as f64 / sent as f64).abs() < 1e-9,
        "every success met the loose SLO"
    );
    assert_eq!(m.request_rate_target, Some(40.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_interleaves_and_capacity_finds_the_crowd_limit() {
    // A is twice as slow per token as B; B saturates above 3 requests in flight.
    let (a, sa) = start(Fake {
        itl_ms: 20,
        ..Fake::default()
    })
    .await;
    let (b, sb) = start(Fake {
        ttft_ms: 10,
        crowd: Some((3, 300)),
        ..Fake::default()
    })
    .await;
    let cfg = BenchConfig {
        compare_url: Some(b.clone()),
        loads: vec![Load::Concurrency(2)],
        bound: Bound {
            num_prompts: Some(4),
            duration: None,
        },
        rounds: 2,
        slo: Some(Slo {
            ttft_ms: Some(150.0),
            tpot_ms: None,
        }),
        capacity_max: Some(8),
        ..config(&a)
    };
    let rep = run_bench(&cfg).await.unwrap();
    assert_eq!(rep.targets.len(), 2);
    for t in &rep.targets {
        assert_eq!(t.runs[0].completed, 8, "two rounds of 4 pooled");
    }
    assert!(
        sa.generations.load(Ordering::SeqCst) >= 8 && sb.generations.load(Ordering::SeqCst) >= 8
    );
    // Round 1 runs A then B, round 2 B then A (4 requests per server and round).
    let (ta, tb) = (sa.arrivals.lock().unwrap(), sb.arrivals.lock().unwrap());
    assert!(ta[3] < tb[0], "round 1 starts with A");
    assert!(tb[7] < ta[4], "round 2 starts with B");
    drop((ta, tb));
    for s in [&sa, &sb] {
        assert_eq!(
            s.prompts.lock().unwrap().len(),
            s.generations.load(Ordering::SeqCst),
            "rounds and capacity probes never repeat a prompt on one server"
        );
    }
    let r = &rep.ratios[0];
    assert_eq!(r.load, "c=2");
    assert!(
        r.tpot_p50 > 1.4 && r.tpot_p50 < 2.6,
        "A's TPOT is about twice B's: {}",
        r.tpot_p50
    );
    assert!(r.output_tokens_per_s < 1.0);
    // A never slows with the crowd: the search reaches its cap. B holds 3 users.
    let ca = rep.targets[0].capacity.as_ref().unwrap();
    assert_eq!((ca.users, ca.hit_max), (Some(8), true));
    let cb = rep.targets[1].capacity.as_ref().unwrap();
    assert_eq!(
        cb.users,
        Some(3),
        "probes: {:?}",
        cb.probes
            .iter()
            .map(|p| (p.load_label(), p.goodput.unwrap().share))
            .collect::<Vec<_>>()
    );
    assert!(cb.output_tokens_per_s > 0.0 && cb.per_user_tokens_per_s > 50.0);
    let text = tokenfab_bench::report::render(&rep);
    assert!(
        text.contains("A / B") && text.contains("capacity"),
        "{text}"
    );
    // And the plot draws.
    let svg = std::env::temp_dir().join(format!("tokenfab-bench-{}.svg", std::process::id()));
    tokenfab_bench::plot::plot_svg(&rep, &svg).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("TTFT"));
    let _ = std::fs::remove_file(&svg);
}
