//! n-gram speculative decoding through the public handle: every request's events (tokens, text,
//! log-probabilities, finish reason, usage) are the same with speculation on as off, under
//! preemption, prefix caching, stop strings, stop tokens, logprobs, `max_tokens` and seeded
//! sampling; and on the real model, text that copies its input is drafted and accepted.

use std::time::Duration;

use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{
    EngineConfig, EngineHandle, EngineRequest, LoadedModel, SpeculativeConfig, StreamEvent,
};
use tokenfab_types::SamplingParams;

fn spec(k: usize) -> Option<SpeculativeConfig> {
    Some(
        SpeculativeConfig::from_json(&format!(
            r#"{{"method": "ngram", "num_speculative_tokens": {k}, "prompt_lookup_max": 4, "prompt_lookup_min": 2}}"#
        ))
        .unwrap(),
    )
}

fn tiny(name: &str, cfg: EngineConfig) -> EngineHandle {
    let dir = std::env::temp_dir().join(format!("tokenfab-spec-{name}-{}", std::process::id()));
    let m = LoadedModel::load(&write_tiny_model(&dir)).unwrap();
    EngineHandle::start(m, cfg).unwrap()
}

/// Every event of a request, in order.
fn events(mut s: tokenfab_engine::RequestStream) -> Vec<StreamEvent> {
    let mut v = Vec::new();
    while let Some(ev) = s.blocking_recv() {
        assert!(!matches!(ev, StreamEvent::Error(_)), "{ev:?}");
        v.push(ev);
    }
    v
}

/// Runs `reqs` all at once and returns each one's events.
fn run(e: &EngineHandle, reqs: &[EngineRequest]) -> Vec<Vec<StreamEvent>> {
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    streams.into_iter().map(events).collect()
}

/// Asserts that each request's events are the same, naming the first difference. Prefix-cache
/// hits in `usage` are left out: they depend on which requests shared a step, not on speculation.
fn same(got: &[Vec<StreamEvent>], want: &[Vec<StreamEvent>], what: &str) {
    let norm = |v: &[Vec<StreamEvent>]| -> Vec<Vec<StreamEvent>> {
        v.iter()
            .map(|evs| {
                evs.iter()
                    .map(|ev| match ev {
                        StreamEvent::End { reason, usage } => StreamEvent::End {
                            reason: *reason,
                            usage: tokenfab_engine::Usage {
                                cached_tokens: 0,
                                ..*usage
                            },
                        },
                        ev => ev.clone(),
                    })
                    .collect()
            })
            .collect()
    };
    let (got, want) = (norm(got), norm(want));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Some(j) = (0..g.len().max(w.len())).find(|&j| g.get(j) != w.get(j)) {
            panic!(
                "{what}: request {i} differs at event {j} of {}: {:?} instead of {:?}",
                w.len(),
                g.get(j),
                w.get(j)
            );
        }
    }
}

fn accepted(e: &EngineHandle) -> u64 {
    e.metrics().spec.as_ref().unwrap().num_accepted_tokens.get()
}

/// Prompts of the tiny byte-level model with repeated stretches, so that drafts find matches.
fn requests() -> Vec<EngineRequest> {
    let texts = [
        "abcabcabcabcabc",
        "the cat sat on the mat; the cat sat on the",
        "0123456789 0123456789 01234",
        "xyzzy",
        "hello hello hello hello",
        "one two three one two three one",
    ];
    let mut reqs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let base = EngineRequest {
            prompt_tokens: t.bytes().map(u32::from).collect(),
            max_tokens: 20 + 7 * i,
            ignore_eos: true,
            ..Default::default()
        };
        reqs.push(base.clone());
        reqs.push(EngineRequest {
            logprobs: Some(2),
            ..base.clone()
        });
        reqs.push(EngineRequest {
            max_tokens: 1 + i,
            ..base.clone()
        });
        reqs.push(EngineRequest {
            sampling: SamplingParams {
                temperature: 0.9,
                top_k: 20,
                seed: Some(i as u64),
                ..Default::default()
            },
            ..base.clone()
        });
        reqs.push(EngineRequest {
            sampling: SamplingParams {
                repetition_penalty: 1.3,
                ..Default::default()
            },
            ..base.clone()
        });
    }
    reqs
}

#[test]
fn speculation_changes_no_event_of_any_request() {
    let reqs = requests();
    let plain = tiny("plain", EngineConfig::default());
    let want = run(&plain, &reqs);
    plain.shutdown(Duration::from_secs(5));

    let e = tiny(
        "spec",
        EngineConfig {
            speculative: spec(5),
            ..Default::default()
        },
    );
    // One at a time (drafts get the whole budget), then all together.
    let alone: Vec<_> = reqs
        .iter()
        .map(|r| run(&e, std::slice::from_ref(r)).remove(0))
        .collect();
    same(&alone, &want, "alone");
    let together = run(&e, &reqs);
    same(&together, &want, "together");
    let m = e.metrics().spec.as_ref().unwrap();
    assert!(
        m.num_accepted_tokens.get() > 50 && m.num_drafts.get() > 20,
        "drafts: {}, accepted {} of {}",
        m.num_drafts.get(),
        m.num_accepted_tokens.get(),
        m.num_draft_tokens.get()
    );
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn preemption_and_prefix_caching_with_speculation_keep_every_output() {
    let reqs: Vec<EngineRequest> = requests().into_iter().step_by(5).collect();
    let plain = tiny("pool-plain", EngineConfig::default());
    let want = run(&plain, &reqs);
    plain.shutdown(Duration::from_secs(5));
    // 2 layers x 32 kv dims x 2 x 2 bytes (f16) = 256 bytes a token: 10 blocks of 16 tokens.
    let e = tiny(
        "pool-spec",
        EngineConfig {
            kv_cache_bytes: 256 * 16 * 10,
            speculative: spec(5),
            ..Default::default()
        },
    );
    same(&run(&e, &reqs), &want, "small pool");
    assert!(
        e.metrics().num_preemptions.get() > 0,
        "the pool was meant to force preemption"
    );
    // Again: prompts now hit the prefix cache, outputs are unchanged.
    let hits = e.metrics().prefix_cache_hits.get();
    same(&run(&e, &reqs), &want, "prefix cached");
    assert!(e.metrics().prefix_cache_hits.get() > hits);
    assert!(accepted(&e) > 0);
    assert_eq!(e.num_unfinished(), 0);
    e.shutdown(Duration::from_secs(5));
}

/// The default model, loaded afresh for each engine.
fn real_model() -> LoadedModel {
    let path = tokenfab_loader::testing::default_model()
        .expect("the default model is needed: scripts/fetch-model.sh");
    LoadedModel::load(&path).unwrap()
}

/// A chat turn asking the real model to copy a text: its answer is mostly drafted and accepted.
fn copy_request(m: &LoadedModel) -> EngineRequest {
    let prompt = "<|im_start|>user\nRepeat this text exactly: The quick brown fox jumps over \
                  the lazy dog. A journey of a thousand miles begins with a single step. All \
                  that glitters is not gold.<|im_end|>\n<|im_start|>assistant\n";
    EngineRequest {
        prompt_tokens: m.tokenizer.encode(prompt, true, true).unwrap(),
        max_tokens: 48,
        logprobs: Some(1),
        ..Default::default()
    }
}

#[test]
fn the_real_model_copying_its_input_drafts_and_accepts_with_the_same_text() {
    let m = real_model();
    let req = copy_request(&m);
    let plain = EngineHandle::start(m, EngineConfig::default()).unwrap();
    let want = run(&plain, std::slice::from_ref(&req));
    let tokens: Vec<u32> = want[0]
        .iter()
        .filter_map(|ev| match ev {
            StreamEvent::Token { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    let text: String = want[0]
        .iter()
        .filter_map(|ev| match ev {
            StreamEvent::Token { text, .. } | StreamEvent::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(tokens.len() >= 20, "{text:?}");
    // Stop strings and stop tokens from the middle of the answer, where drafts are verified: the
    // request must end on the same token, its later draft tokens dropped.
    let mut reqs = vec![req.clone()];
    for at in [8, 13, 19] {
        let stop: String = text.chars().skip(3 * at).take(4).collect();
        reqs.push(EngineRequest {
            stop: vec![stop],
            ..req.clone()
        });
        reqs.push(EngineRequest {
            stop_token_ids: vec![tokens[at]],
            ..req.clone()
        });
    }
    reqs.push(EngineRequest {
        max_tokens: 11,
        ..req.clone()
    });
    let want: Vec<_> = reqs
        .iter()
        .map(|r| run(&plain, std::slice::from_ref(r)).remove(0))
        .collect();
    plain.shutdown(Duration::from_secs(5));

    let e = EngineHandle::start(
        real_model(),
        EngineConfig {
            speculative: spec(5),
            ..Default::default()
        },
    )
    .unwrap();
    let got: Vec<_> = reqs
        .iter()
        .map(|r| run(&e, std::slice::from_ref(r)).remove(0))
        .collect();
    same(&got, &want, "real model");
    let m = e.metrics().spec.as_ref().unwrap();
    let (drafted, acc) = (m.num_draft_tokens.get(), m.num_accepted_tokens.get());
    assert!(
        acc >= 40 && acc * 2 >= drafted,
        "accepted {acc} of {drafted}"
    );
    e.shutdown(Duration::from_secs(5));
}
