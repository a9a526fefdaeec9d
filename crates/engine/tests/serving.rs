//! The serving engine on a tiny random model: batching, preemption, prefix caching, aborts and
//! limits, all through the public handle.

use std::time::Duration;

use tokenfab_engine::testing::{write_tiny_model, IM_END};
use tokenfab_engine::{
    EngineConfig, EngineHandle, EngineRequest, Error, LoadedModel, StreamEvent, Usage,
};
use tokenfab_types::{FinishReason, SamplingParams};

fn engine(name: &str, cfg: EngineConfig) -> EngineHandle {
    let dir = std::env::temp_dir().join(format!("tokenfab-engine-{name}-{}", std::process::id()));
    let m = LoadedModel::load(&write_tiny_model(&dir)).unwrap();
    EngineHandle::start(m, cfg).unwrap()
}

fn greedy(prompt: &[u32], max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt_tokens: prompt.to_vec(),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Collects a request's tokens, text and end.
fn collect(mut s: tokenfab_engine::RequestStream) -> (Vec<u32>, String, FinishReason, Usage) {
    let (mut toks, mut text) = (Vec::new(), String::new());
    loop {
        match s.blocking_recv().expect("stream ended without End") {
            StreamEvent::Token { token, text: t, .. } => {
                toks.push(token);
                text.push_str(&t);
            }
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::End { reason, usage } => return (toks, text, reason, usage),
            StreamEvent::Error(e) => panic!("engine error: {e}"),
            ev @ StreamEvent::ClientTimeout { .. } => panic!("timed out: {ev:?}"),
            StreamEvent::PromptLogprobs(_) => {}
        }
    }
}

fn prompts(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..(5 + i * 7 % 40))
                .map(|j| ((i * 31 + j * 17) % 250) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn batching_does_not_change_greedy_outputs() {
    let e = engine("batch", EngineConfig::default());
    let ps = prompts(24);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| collect(e.submit(greedy(p, 12)).unwrap()).0)
        .collect();
    let streams: Vec<_> = ps
        .iter()
        .map(|p| e.submit(greedy(p, 12)).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(alone, together);
    assert!(alone.iter().all(|t| t.len() == 12));
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn preemption_under_a_tiny_pool_finishes_everything_with_the_same_tokens() {
    let big = engine("nopreempt", EngineConfig::default());
    let ps = prompts(12);
    let want: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| collect(big.submit(greedy(p, 24)).unwrap()).0)
        .collect();
    big.shutdown(Duration::from_secs(5));

    // 2 layers x 32 kv dims x 2 x 4 bytes = 512 bytes per token; 12 blocks of 16 tokens.
    let small = engine(
        "preempt",
        EngineConfig {
            kv_cache_bytes: 512 * 16 * 12,
            ..Default::default()
        },
    );
    let streams: Vec<_> = ps
        .iter()
        .map(|p| small.submit(greedy(p, 24)).unwrap())
        .collect();
    let got: Vec<Vec<u32>> = streams.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(got, want);
    assert!(
        small.metrics().num_preemptions.get() > 0,
        "the pool was meant to force preemption"
    );
    assert_eq!(small.num_unfinished(), 0);
    small.shutdown(Duration::from_secs(5));
}

#[test]
fn prefix_cache_hits_and_same_output() {
    let e = engine("prefix", EngineConfig::default());
    let p: Vec<u32> = (0..70).map(|i| (i * 13 % 250) as u32).collect();
    let (a, _, _, ua) = collect(e.submit(greedy(&p, 8)).unwrap());
    let (b, _, _, ub) = collect(e.submit(greedy(&p, 8)).unwrap());
    assert_eq!(a, b);
    assert_eq!(ua.cached_tokens, 0);
    assert_eq!(ub.cached_tokens, 64, "four full blocks of 16 reused");
    assert!(e.metrics().prefix_cache_hits.get() >= 64);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn dropping_a_stream_aborts_and_frees_its_blocks() {
    let e = engine("abort", EngineConfig::default());
    let mut s = e.submit(greedy(&[1, 2, 3], 200)).unwrap();
    // Wait for the first token, then go away.
    while !matches!(s.blocking_recv(), Some(StreamEvent::Token { .. })) {}
    drop(s);
    assert!(
        e.wait_idle(Duration::from_secs(10)),
        "the aborted request never left"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.metrics().kv_cache_usage_perc.get(), 0.0);
    assert_eq!(e.metrics().request_success_abort.get(), 1);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn queue_limit_refuses_with_retry_after() {
    let e = engine(
        "queue",
        EngineConfig {
            max_queued_requests: 2,
            max_num_seqs: 1,
            ..Default::default()
        },
    );
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..50 {
        match e.submit(greedy(&[5, 6, 7], 100)) {
            Ok(s) => held.push(s),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    // Nothing has waited in the queue yet: the shortest wait.
    assert!(
        matches!(
            refused,
            Some(Error::QueueFull {
                max: 2,
                retry_after_secs: 1
            })
        ),
        "{refused:?}"
    );
    drop(held);
    assert!(e.wait_idle(Duration::from_secs(10)));
    assert!(
        e.submit(greedy(&[5], 1)).is_ok(),
        "recovers once the queue drains"
    );
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn stop_conditions_and_logprobs() {
    let e = engine("stop", EngineConfig::default());
    let p = [72u32, 105, 33];
    let (toks, text, reason, usage) = collect(e.submit(greedy(&p, 30)).unwrap());
    assert_eq!(
        (reason, usage.completion_tokens),
        (FinishReason::Length, 30)
    );
    assert_eq!(toks.len(), 30);

    // A stop string taken from the middle of the free-running text ends it there, unreturned.
    let stop: String = text.chars().skip(5).take(2).collect();
    let cut = text.find(&stop).unwrap();
    let req = EngineRequest {
        stop: vec![stop.clone()],
        ..greedy(&p, 30)
    };
    let (_, t2, r2, _) = collect(e.submit(req).unwrap());
    assert_eq!((t2.as_str(), r2), (&text[..cut], FinishReason::Stop));

    // A stop token id ends generation with it: streamed and counted, its text not returned
    // (like EOS).
    let req = EngineRequest {
        stop_token_ids: vec![toks[3]],
        ..greedy(&p, 30)
    };
    let (t3, text3, r3, u3) = collect(e.submit(req).unwrap());
    let first = toks.iter().position(|&t| t == toks[3]).unwrap();
    assert_eq!(
        (t3.as_slice(), r3, u3.completion_tokens),
        (&toks[..=first], FinishReason::Stop, first + 1)
    );
    let before: String = e.tokenizer().decode(&toks[..first], false);
    assert_eq!(text3, before);

    // EOS forced by logit bias stops unless ignore_eos; its logprob entry is streamed.
    let req = EngineRequest {
        logit_bias: vec![(IM_END, 100.0)],
        ignore_eos: false,
        logprobs: Some(1),
        ..greedy(&p, 30)
    };
    let mut s = e.submit(req).unwrap();
    let Some(StreamEvent::Token {
        token,
        text,
        logprob,
    }) = s.blocking_recv()
    else {
        panic!("the EOS token is streamed")
    };
    assert_eq!((token, text.as_str()), (IM_END, ""));
    let lp = logprob.expect("the EOS token has its logprob");
    assert!(lp.logprob < 0.0 && lp.token == IM_END);
    assert!(matches!(
        s.blocking_recv(),
        Some(StreamEvent::End {
            reason: FinishReason::Stop,
            usage: Usage {
                completion_tokens: 1,
                ..
            }
        })
    ));

    // Logprobs: the chosen (greedy) token is the top one; prompt logprobs start with None.
    let req = EngineRequest {
        logprobs: Some(3),
        prompt_logprobs: Some(2),
        ..greedy(&p, 4)
    };
    let mut s = e.submit(req).unwrap();
    let mut saw_prompt = false;
    while let Some(ev) = s.blocking_recv() {
        match ev {
            StreamEvent::PromptLogprobs(v) => {
                assert_eq!(v.len(), 3);
                assert!(v[0].is_none() && v[1].as_ref().unwrap().token == 105);
                assert_eq!(v[2].as_ref().unwrap().top.len(), 2);
                saw_prompt = true;
            }
            StreamEvent::Token { token, logprob, .. } => {
                let lp = logprob.unwrap();
                assert_eq!(lp.top.len(), 3);
                assert_eq!(lp.top[0].0, token);
                assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6 && lp.logprob <= 0.0);
            }
            _ => {}
        }
    }
    assert!(saw_prompt);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn seeded_sampling_is_reproducible_whatever_the_batch() {
    let e = engine("seed", EngineConfig::default());
    let req = |seed| EngineRequest {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        ..greedy(&[10, 20, 30], 16)
    };
    let alone = collect(e.submit(req(42)).unwrap()).0;
    let others: Vec<_> = (0..6).map(|i| e.submit(req(i)).unwrap()).collect();
    let again = collect(e.submit(req(42)).unwrap()).0;
    drop(others);
    assert_eq!(alone, again);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn requests_that_can_never_run_are_refused_at_submit_with_their_reason() {
    use tokenfab_scheduler::SchedulerError;
    let e = engine(
        "refuse",
        EngineConfig {
            max_kv_blocks: Some(4),
            ..Default::default()
        },
    );
    let refuse = |r: EngineRequest| e.submit(r).err().expect("refused");
    let e1 = refuse(greedy(&vec![1; 250], 100));
    assert!(
        matches!(e1, Error::Scheduler(SchedulerError::TooLong { .. })),
        "{e1}"
    );
    let e2 = refuse(greedy(&vec![1; 60], 10));
    assert!(
        matches!(e2, Error::Scheduler(SchedulerError::DoesNotFit { .. })),
        "{e2}"
    );
    assert!(matches!(
        refuse(greedy(&[], 1)),
        Error::Scheduler(SchedulerError::EmptyPrompt)
    ));
    let e3 = refuse(greedy(&[1, 9999], 1));
    assert_eq!(
        e3.to_string(),
        "`prompt` token ids must be in [0, 258). Given: 9999"
    );
    assert_eq!(e.num_unfinished(), 0, "nothing was queued");
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_prefill_only_request_returns_prompt_logprobs_and_generates_nothing() {
    let e = engine(
        "prefill",
        EngineConfig {
            max_num_batched_tokens: 16,
            ..Default::default()
        },
    );
    let p: Vec<u32> = (0..40).map(|i| (i * 7 % 250) as u32).collect();
    let gen_before = e.metrics().generation_tokens.get();
    let mut s = e
        .submit(EngineRequest {
            prompt_logprobs: Some(1),
            ..greedy(&p, 0)
        })
        .unwrap();
    let Some(StreamEvent::PromptLogprobs(lps)) = s.blocking_recv() else {
        panic!("prompt logprobs first")
    };
    assert_eq!(lps.len(), 40);
    assert!(lps[0].is_none());
    assert!(lps[1..]
        .iter()
        .zip(&p[1..])
        .all(|(l, &t)| l.as_ref().is_some_and(|l| l.token == t && l.top.len() == 1)));
    assert_eq!(
        s.blocking_recv(),
        Some(StreamEvent::End {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 40,
                completion_tokens: 0,
                cached_tokens: 0
            }
        })
    );
    assert_eq!(e.metrics().generation_tokens.get(), gen_before);
    // Chunked over three steps of 16, the entries match those of one unchunked pass.
    let e2 = engine("prefill1", EngineConfig::default());
    let mut s2 = e2
        .submit(EngineRequest {
            prompt_logprobs: Some(1),
            ..greedy(&p, 1)
        })
        .unwrap();
    let Some(StreamEvent::PromptLogprobs(whole)) = s2.blocking_recv() else {
        panic!()
    };
    assert_eq!(whole, lps);
    // Without logprobs it just ends.
    let (toks, text, reason, usage) = collect(e.submit(greedy(&p, 0)).unwrap());
    assert!(toks.is_empty() && text.is_empty());
    assert_eq!((reason, usage.completion_tokens), (FinishReason::Length, 0));
    e.shutdown(Duration::from_secs(5));
    e2.shutdown(Duration::from_secs(5));
}

#[test]
fn retry_after_follows_the_mean_queue_time_and_is_alive_ends_with_the_thread() {
    let e = engine("alive", EngineConfig::default());
    assert!(e.is_alive());
    assert_eq!(e.retry_after_secs(), 1, "no queue time seen yet");
    let q = &e.metrics().request_queue_time_seconds;
    q.observe(2.0);
    q.observe(2.4);
    assert_eq!(e.retry_after_secs(), 3, "mean 2.2 s, rounded up");
    for _ in 0..10 {
        q.observe(1000.0);
    }
    assert_eq!(e.retry_after_secs(), 60, "capped");
    e.shutdown(Duration::from_secs(5));
    assert!(!e.is_alive());
}

#[test]
fn profiled_forward_passes_report_their_phases_in_metrics() {
    use tokenfab_types::profile::ForwardPhase;
    // Off by default: no forward series.
    let plain = engine("no-profile", EngineConfig::default());
    collect(plain.submit(greedy(&[5, 6, 7], 4)).unwrap());
    assert_eq!(plain.metrics().phases.forward_passes.get(), 0);
    assert!(!plain.render_metrics().contains("forward_phase"));
    let e = engine(
        "profile",
        EngineConfig {
            profile_forward: true,
            ..EngineConfig::default()
        },
    );
    collect(e.submit(greedy(&[5, 6, 7], 4)).unwrap());
    // The last step's timings are recorded after its token is sent: stop the engine first.
    e.shutdown(Duration::from_secs(5));
    let p = &e.metrics().phases;
    // One pass per step: the prompt's, then a decode step per further token.
    assert!(p.forward_passes.get() >= 4, "{}", p.forward_passes.get());
    assert!(p.forward_passes.get() <= p.steps.get());
    let text = e.render_metrics();
    for phase in ForwardPhase::ALL {
        let count = format!(
            "tokenfab:forward_phase_cpu_seconds_count{{model_name=\"{}\",phase=\"{}\"}}",
            e.info().model_name,
            phase.name()
        );
        assert!(text.contains(&count), "{count} missing");
        assert_eq!(
            p.forward_wall[phase.index()].count(),
            p.forward_passes.get()
        );
    }
    // The layers' work is timed: the products and attention took some wall time.
    let wall = |ph: ForwardPhase| p.forward_wall[ph.index()].sum();
    assert!(wall(ForwardPhase::Qkv) > 0.0 && wall(ForwardPhase::Attention) > 0.0);
}
