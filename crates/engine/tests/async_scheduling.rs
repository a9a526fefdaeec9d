//! Async scheduling end to end without a GPU: the engine drives the device-sampling twin
//! (`tokenfab_models::sample_twin`, the kernels' CPU twins where a CUDA executor runs them, the
//! input feed included), planning each step while the one before is "on the device", and every
//! request ends exactly as with synchronous steps: same tokens, text, log-probabilities, finish
//! reason and usage, through greedy and seeded sampling, stop tokens, stop strings, length caps,
//! grammars, top alternatives, prompt log-probabilities, aborts mid-flight, a KV pool small
//! enough to stall, and speculative decoding (which plans synchronously); the pool is empty at
//! the end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{
    EngineConfig, EngineHandle, EngineRequest, LoadedModel, SpeculativeConfig, StreamEvent, Usage,
};
use tokenfab_models::sample_twin::{SampleTwin, TwinCounts};
use tokenfab_structured::Constraint;
use tokenfab_types::{FinishReason, SamplingParams};

fn load(name: &str) -> LoadedModel {
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-engine-async-{name}-{}",
        std::process::id()
    ));
    LoadedModel::load(&write_tiny_model(&dir)).unwrap()
}

#[derive(Debug, PartialEq)]
struct Out {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<(f32, usize)>,
    prompt_logprobs: usize,
    end: Option<(FinishReason, Usage)>,
}

/// Reads a stream to its end; with `abort_after`, drops it after that many tokens.
fn collect(mut s: tokenfab_engine::RequestStream, abort_after: Option<usize>) -> Out {
    let mut o = Out {
        tokens: Vec::new(),
        text: String::new(),
        logprobs: Vec::new(),
        prompt_logprobs: 0,
        end: None,
    };
    loop {
        if abort_after.is_some_and(|n| o.tokens.len() >= n) {
            return o;
        }
        match s.blocking_recv().expect("stream ended without End") {
            StreamEvent::Token {
                token,
                text,
                logprob,
            } => {
                o.tokens.push(token);
                o.text += &text;
                if let Some(l) = logprob {
                    o.logprobs.push((l.logprob, l.top.len()));
                }
            }
            StreamEvent::Text(t) => o.text += &t,
            StreamEvent::PromptLogprobs(p) => o.prompt_logprobs = p.len(),
            StreamEvent::End { reason, usage } => {
                o.end = Some((reason, usage));
                return o;
            }
            StreamEvent::Error(e) => panic!("engine error: {e}"),
            StreamEvent::ClientTimeout { after } => panic!("read too slowly: {after:?}"),
        }
    }
}

/// 28 requests with distinct first bytes (so no prefix-cache hit makes usage timing-dependent),
/// all submitted before any is read; two are aborted after a few tokens.
fn requests(e: &EngineHandle) -> Vec<(EngineRequest, Option<usize>)> {
    let grammar = e
        .grammars()
        .unwrap()
        .compile(&Constraint::Regex("[a-f]{3}[0-9]{2}(x|yz)".into()))
        .unwrap();
    let mut out = Vec::new();
    for i in 0..28u32 {
        let prompt = format!("{}{} request {i} says", char::from(b'A' + i as u8), i * 7);
        let mut sampling = SamplingParams::default();
        if i % 2 == 1 {
            sampling.temperature = [1.5, 2.5, 4.0][i as usize % 3];
            sampling.seed = Some(u64::from(i));
            sampling.top_k = [0, 20, 5][i as usize % 3];
            sampling.top_p = [1.0, 0.9][i as usize % 2];
        }
        if i % 7 == 3 {
            sampling.repetition_penalty = 1.2;
            sampling.presence_penalty = 0.4;
        }
        let mut r = EngineRequest {
            prompt_tokens: prompt.bytes().map(u32::from).collect(),
            max_tokens: 3 + (i as usize * 5) % 23,
            ignore_eos: true,
            sampling,
            ..Default::default()
        };
        match i % 9 {
            // Stop tokens and strings the tiny model produces now and then.
            1 | 5 => r.stop_token_ids = b"|>5.\x15\x12".iter().map(|&b| u32::from(b)).collect(),
            2 | 8 => r.stop = vec!["s|".into(), "\u{15}\u{15}".into(), "&>".into(), "s.".into()],
            3 => r.grammar = Some(grammar.clone()),
            4 => r.logprobs = Some(3),
            6 => r.prompt_logprobs = Some(1),
            7 => r.logprobs = Some(0),
            _ => {}
        }
        let abort = (i % 13 == 8).then_some(2);
        if abort.is_some() {
            r.max_tokens = 100;
        }
        out.push((r, abort));
    }
    out
}

struct Run {
    outs: Vec<Out>,
    planned_ahead: u64,
    kv_usage: f64,
    counts: Arc<TwinCounts>,
}

fn run(name: &str, cfg: EngineConfig) -> Run {
    let mut counts = None;
    let e = EngineHandle::start_with(load(name), cfg, |exec| {
        let t = SampleTwin::new(exec);
        counts = Some(t.counts.clone());
        Box::new(t)
    })
    .unwrap();
    let reqs = requests(&e);
    let streams: Vec<_> = reqs
        .into_iter()
        .map(|(r, abort)| (e.submit(r).unwrap(), abort))
        .collect();
    let outs = streams.into_iter().map(|(s, a)| collect(s, a)).collect();
    assert!(
        e.wait_idle(Duration::from_secs(30)),
        "the engine never went idle"
    );
    // The gauges are set after the step that ended the last request.
    std::thread::sleep(Duration::from_millis(300));
    let m = e.metrics();
    let r = Run {
        outs,
        planned_ahead: m.steps_planned_ahead.get(),
        kv_usage: m.kv_cache_usage_perc.get(),
        counts: counts.unwrap(),
    };
    e.shutdown(Duration::from_secs(5));
    r
}

fn cfg(async_scheduling: bool, max_kv_blocks: Option<usize>) -> EngineConfig {
    EngineConfig {
        async_scheduling,
        max_num_batched_tokens: 48,
        max_num_seqs: 12,
        block_size: 4,
        max_kv_blocks,
        ..EngineConfig::default()
    }
}

fn same_ends(want: &Run, got: &Run, what: &str) {
    for (i, (w, g)) in want.outs.iter().zip(&got.outs).enumerate() {
        if w.end.is_none() {
            // Aborted: a prefix of the same stream.
            assert_eq!(w.tokens[..2], g.tokens[..2], "{what}: request {i}");
            continue;
        }
        assert_eq!(w.tokens, g.tokens, "{what}: request {i}");
        assert_eq!(w.text, g.text, "{what}: request {i}");
        assert_eq!(w.end, g.end, "{what}: request {i}");
        assert_eq!(w.prompt_logprobs, g.prompt_logprobs, "{what}: request {i}");
        assert_eq!(w.logprobs.len(), g.logprobs.len(), "{what}: request {i}");
        for (a, b) in w.logprobs.iter().zip(&g.logprobs) {
            assert!(
                (a.0 - b.0).abs() < 1e-5 && a.1 == b.1,
                "{what}: request {i}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn async_steps_end_every_request_as_synchronous_steps_do() {
    let sync = run("sync", cfg(false, None));
    assert_eq!(sync.planned_ahead, 0);
    let reasons: Vec<_> = sync
        .outs
        .iter()
        .filter_map(|o| o.end.as_ref().map(|e| e.0))
        .collect();
    assert!(reasons.contains(&FinishReason::Stop), "{reasons:?}");
    assert!(reasons.contains(&FinishReason::Length), "{reasons:?}");
    assert_eq!(reasons.len(), 26, "two aborted");

    // Stop tokens (requests 1, 5, 10, ...), stop strings (2, 8, 11, ...) and grammars (3, 12,
    // 21) end some requests.
    let stopped = |kinds: &[usize]| {
        (0..28)
            .filter(|i| kinds.contains(&(i % 9)))
            .any(|i| sync.outs[i].end.is_some_and(|e| e.0 == FinishReason::Stop))
    };
    assert!(stopped(&[1, 5]) && stopped(&[2, 8]) && stopped(&[3]));
    let ahead = run("ahead", cfg(true, None));
    same_ends(&sync, &ahead, "async");
    assert!(
        ahead.planned_ahead > 20,
        "{} steps planned ahead",
        ahead.planned_ahead
    );
    assert_eq!(ahead.kv_usage, 0.0, "blocks left held");
    let d = ahead.counts.device.load(Ordering::Relaxed);
    assert!(d > 200, "device rows {d}");

    // A pool of 40 blocks of 4 tokens: planned ahead, requests stall and the next plan
    // preempts; the ends are still the same.
    let tight = run("tight", cfg(true, Some(40)));
    same_ends(&sync, &tight, "async, tight pool");
    assert_eq!(tight.kv_usage, 0.0, "blocks left held");

    // Speculative decoding plans every step synchronously (drafts come from the last step's
    // tokens); a request's tokens do not change with it.
    let spec = run(
        "spec",
        EngineConfig {
            speculative: Some(SpeculativeConfig {
                num_speculative_tokens: 3,
                prompt_lookup_max: 3,
                prompt_lookup_min: 1,
            }),
            ..cfg(true, None)
        },
    );
    same_ends(&sync, &spec, "async with speculative decoding");
    assert_eq!(spec.planned_ahead, 0);
}
