//! Sampling on the device, end to end without a GPU: the engine drives an executor whose device
//! sampler runs the CPU twins of `mask_rows` and `sample_rows` (`tokenfab_models::sample_twin`)
//! exactly where a CUDA executor runs the kernels, and every request's tokens are those of host
//! sampling: greedy, seeded temperature with top-k / top-p / min-p, penalties, logit bias, a
//! grammar, and the rows the device leaves to the host (top alternatives, prompt
//! log-probabilities) beside them in the same steps.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{EngineConfig, EngineHandle, EngineRequest, LoadedModel, StreamEvent};
use tokenfab_models::sample_twin::{SampleTwin, TwinCounts};
use tokenfab_structured::Constraint;
use tokenfab_types::SamplingParams;

fn load(name: &str) -> LoadedModel {
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-engine-device-sampling-{name}-{}",
        std::process::id()
    ));
    LoadedModel::load(&write_tiny_model(&dir)).unwrap()
}

#[derive(Debug, Default)]
struct Out {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    top: Vec<usize>,
    prompt_logprobs: usize,
}

fn collect(mut s: tokenfab_engine::RequestStream) -> Out {
    let mut o = Out::default();
    loop {
        match s.blocking_recv().expect("stream ended without End") {
            StreamEvent::Token { token, logprob, .. } => {
                o.tokens.push(token);
                if let Some(l) = logprob {
                    o.logprobs.push(l.logprob);
                    o.top.push(l.top.len());
                }
            }
            StreamEvent::PromptLogprobs(p) => o.prompt_logprobs = p.len(),
            StreamEvent::End { .. } => return o,
            StreamEvent::Error(e) => panic!("engine error: {e}"),
            StreamEvent::ClientTimeout { after } => panic!("read too slowly: {after:?}"),
            StreamEvent::Text(_) => {}
        }
    }
}

/// The requests, all submitted before any is read so that they share steps.
fn run(e: &EngineHandle) -> Vec<Out> {
    let grammar = e
        .grammars()
        .unwrap()
        .compile(&Constraint::Regex("[a-f]{3}[0-9]{2}(x|yz)".into()))
        .unwrap();
    let seeded = |seed, f: &dyn Fn(&mut SamplingParams)| {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        };
        f(&mut p);
        p
    };
    let base = |prompt: &str, sampling| EngineRequest {
        prompt_tokens: prompt.bytes().map(u32::from).collect(),
        max_tokens: 24,
        ignore_eos: true,
        sampling,
        logprobs: Some(0),
        ..Default::default()
    };
    let reqs = vec![
        base("greedy", SamplingParams::default()),
        base(
            "top-k",
            seeded(1, &|p| {
                p.temperature = 0.8;
                p.top_k = 20;
            }),
        ),
        base("top-p", seeded(2, &|p| p.top_p = 0.9)),
        base(
            "min-p and penalties",
            seeded(3, &|p| {
                p.min_p = 0.1;
                p.repetition_penalty = 1.3;
                p.presence_penalty = 0.5;
                p.frequency_penalty = 0.3;
            }),
        ),
        EngineRequest {
            logit_bias: vec![(b'q' as u32, 3.0), (b'z' as u32, 2.0), (b'e' as u32, -50.0)],
            ..base("biased", seeded(4, &|p| p.temperature = 0.7))
        },
        EngineRequest {
            grammar: Some(grammar),
            ..base("constrained", seeded(5, &|_| {}))
        },
        EngineRequest {
            logprobs: Some(3),
            ..base("alternatives", seeded(6, &|_| {}))
        },
        EngineRequest {
            prompt_logprobs: Some(1),
            ..base("prompt log-probabilities", seeded(7, &|p| p.top_k = 5))
        },
    ];
    let streams: Vec<_> = reqs.into_iter().map(|r| e.submit(r).unwrap()).collect();
    streams.into_iter().map(collect).collect()
}

#[test]
fn device_sampling_gives_the_tokens_of_host_sampling() {
    let host = EngineHandle::start(load("host"), EngineConfig::default()).unwrap();
    let want = run(&host);
    host.shutdown(std::time::Duration::from_secs(5));

    let mut counts: Option<Arc<TwinCounts>> = None;
    let dev = EngineHandle::start_with(load("twin"), EngineConfig::default(), |exec| {
        let t = SampleTwin::new(exec);
        counts = Some(t.counts.clone());
        Box::new(t)
    })
    .unwrap();
    assert!(dev.info().device.contains("twin"), "{}", dev.info().device);
    let got = run(&dev);
    dev.shutdown(std::time::Duration::from_secs(5));

    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.tokens, g.tokens, "request {i}");
        assert_eq!(w.top, g.top, "request {i}");
        assert_eq!(w.prompt_logprobs, g.prompt_logprobs, "request {i}");
        assert_eq!(w.logprobs.len(), g.logprobs.len(), "request {i}");
        for (a, b) in w.logprobs.iter().zip(&g.logprobs) {
            assert!((a - b).abs() < 1e-4, "request {i}: {a} vs {b}");
        }
    }
    // The constrained output follows its grammar.
    let c = &got[5].tokens;
    assert!(c.len() >= 6, "{c:?}");
    assert!(
        c[..3]
            .iter()
            .all(|&t| (u32::from(b'a')..=u32::from(b'f')).contains(&t)),
        "{c:?}"
    );
    let counts = counts.unwrap();
    let (d, h) = (
        counts.device.load(Ordering::Relaxed),
        counts.host.load(Ordering::Relaxed),
    );
    // 6 requests sample every token on the device; the alternatives and prompt rows come back.
    assert!(d >= 6 * 24, "device rows {d}");
    assert!(h >= 24, "host rows {h}");
}
