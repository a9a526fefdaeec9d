//! Constrained decoding through the engine on a tiny random model (byte-level vocabulary): every
//! output matches its constraint, a completed grammar ends with `stop` whatever `ignore_eos`
//! says, logprobs are the masked distribution's, and a batch that mixes constrained and free
//! rows gives each row what it gives alone.

use std::sync::Arc;
use std::time::Duration;

use tokenfab_engine::testing::write_tiny_model;
use tokenfab_engine::{EngineConfig, EngineHandle, EngineRequest, LoadedModel, StreamEvent};
use tokenfab_structured::{Compiled, Constraint};
use tokenfab_types::{FinishReason, SamplingParams};

fn engine(name: &str) -> EngineHandle {
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-engine-constrained-{name}-{}",
        std::process::id()
    ));
    let m = LoadedModel::load(&write_tiny_model(&dir)).unwrap();
    EngineHandle::start(m, EngineConfig::default()).unwrap()
}

fn compile(e: &EngineHandle, c: Constraint) -> Arc<Compiled> {
    e.grammars().unwrap().compile(&c).unwrap()
}

/// Sampled at temperature 1 with `seed` (the tiny model's distribution is nearly flat, so a
/// free row wanders over the whole vocabulary).
fn request(prompt: &[u32], seed: u64, grammar: Option<Arc<Compiled>>) -> EngineRequest {
    EngineRequest {
        prompt_tokens: prompt.to_vec(),
        max_tokens: 40,
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        logprobs: Some(0),
        grammar,
        ..Default::default()
    }
}

struct Out {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    reason: FinishReason,
}

fn collect(mut s: tokenfab_engine::RequestStream) -> Out {
    let mut o = Out {
        tokens: vec![],
        text: String::new(),
        logprobs: vec![],
        reason: FinishReason::Abort,
    };
    loop {
        match s.blocking_recv().expect("stream ended without End") {
            StreamEvent::Token {
                token,
                text,
                logprob,
            } => {
                o.tokens.push(token);
                o.text.push_str(&text);
                o.logprobs.extend(logprob.map(|l| l.logprob));
            }
            StreamEvent::Text(t) => o.text.push_str(&t),
            StreamEvent::End { reason, .. } => {
                o.reason = reason;
                return o;
            }
            StreamEvent::Error(e) => panic!("engine error: {e}"),
            StreamEvent::ClientTimeout { after } => panic!("read too slowly: {after:?}"),
            StreamEvent::PromptLogprobs(_) => {}
        }
    }
}

#[test]
fn outputs_match_their_constraint_and_end_with_stop_despite_ignore_eos() {
    let e = engine("match");
    let digits = compile(&e, Constraint::Regex("[0-9]{3}-[a-c]{2}".into()));
    let choice = compile(&e, Constraint::Choice(vec!["yes".into(), "no".into()]));
    for seed in 0..6 {
        let d = collect(
            e.submit(request(&[1, 2, 3], seed, Some(digits.clone())))
                .unwrap(),
        );
        let b = d.text.as_bytes();
        assert_eq!(d.text.len(), 6, "{:?}", d.text);
        assert!(
            b[..3].iter().all(u8::is_ascii_digit) && b[3] == b'-',
            "{:?}",
            d.text
        );
        assert!(
            b[4..].iter().all(|c| (b'a'..=b'c').contains(c)),
            "{:?}",
            d.text
        );
        // Six characters, then the end-of-generation token the grammar forces.
        assert_eq!(d.tokens.len(), 7);
        assert_eq!(d.reason, FinishReason::Stop);

        let c = collect(
            e.submit(request(&[4, 5], seed, Some(choice.clone())))
                .unwrap(),
        );
        assert!(c.text == "yes" || c.text == "no", "{:?}", c.text);
        assert_eq!(c.reason, FinishReason::Stop);
    }
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn logprobs_are_those_of_the_masked_distribution() {
    let e = engine("logprobs");
    // One choice: every token (and the final end-of-generation) is forced, probability 1.
    let only = compile(&e, Constraint::Choice(vec!["abc".into()]));
    let o = collect(e.submit(request(&[7, 8, 9], 3, Some(only))).unwrap());
    assert_eq!(o.text, "abc");
    assert_eq!(o.logprobs.len(), 4);
    assert!(o.logprobs.iter().all(|&l| l == 0.0), "{:?}", o.logprobs);
    // A free row of the same model is never certain.
    let f = collect(e.submit(request(&[7, 8, 9], 3, None)).unwrap());
    assert!(f.logprobs.iter().all(|&l| l < 0.0), "{:?}", f.logprobs);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_mixed_batch_gives_every_row_what_it_gives_alone() {
    let e = engine("mixed");
    let schema = compile(
        &e,
        Constraint::JsonSchema {
            schema: serde_json::json!({
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                               "c": {"enum": ["x", "y"]}},
                "required": ["n", "c"]
            }),
            strict: true,
        },
    );
    let regex = compile(&e, Constraint::Regex("[a-z]{4}".into()));
    let grammar = |i: usize| match i % 3 {
        0 => Some(schema.clone()),
        1 => Some(regex.clone()),
        _ => None,
    };
    // Room for the whitespace JSON allows (up to 24 characters at each place, and a random
    // model likes it); free rows stop at 40.
    let reqs: Vec<EngineRequest> = (0..12)
        .map(|i| EngineRequest {
            max_tokens: if i % 3 == 0 { 250 } else { 40 },
            ..request(&[10 + i as u32, 20, 30], i as u64, grammar(i))
        })
        .collect();
    let alone: Vec<Out> = reqs
        .iter()
        .map(|r| collect(e.submit(r.clone()).unwrap()))
        .collect();
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let together: Vec<Out> = streams.into_iter().map(collect).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.tokens, t.tokens, "row {i}");
        match i % 3 {
            0 => {
                let v: serde_json::Value = serde_json::from_str(&a.text)
                    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", a.text, a.reason));
                assert!(v["n"].as_u64().is_some_and(|n| n < 100), "{v}");
                assert!(v["c"] == "x" || v["c"] == "y", "{v}");
                assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
                assert_eq!(a.reason, FinishReason::Stop);
            }
            1 => {
                assert!(a.text.len() == 4 && a.text.bytes().all(|c| c.is_ascii_lowercase()));
                assert_eq!(a.reason, FinishReason::Stop);
            }
            // Free rows ignore end-of-generation and run to their length.
            _ => assert_eq!((a.tokens.len(), a.reason), (40, FinishReason::Length)),
        }
    }
    let m = e.metrics();
    assert!(m.structured_mask_rows.get() > 0);
    assert!(m.structured_mask_seconds.count() > 0);
    e.shutdown(Duration::from_secs(5));
}

/// With n-gram speculation on, constrained rows are never drafted (their masks follow one
/// matcher state per step) and still match their constraint, and every row, constrained or
/// free, gives the tokens it gives with speculation off; free rows that copy their prompt are
/// drafted.
#[test]
fn speculation_leaves_constrained_rows_undrafted_and_every_row_unchanged() {
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-engine-constrained-spec-{}",
        std::process::id()
    ));
    let path = write_tiny_model(&dir);
    let start = |speculative| {
        let cfg = EngineConfig {
            speculative,
            ..EngineConfig::default()
        };
        EngineHandle::start(LoadedModel::load(&path).unwrap(), cfg).unwrap()
    };
    let spec = tokenfab_engine::SpeculativeConfig::from_json(
        r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}"#,
    )
    .unwrap();
    let (plain, fast) = (start(None), start(Some(spec)));
    let regex = Constraint::Regex("[a-c]{3}[0-9]{3}".into());
    // A repetitive prompt gives the free rows something to copy; greedy, so drafts are accepted
    // whenever the model repeats.
    let prompt: Vec<u32> = [5u32, 6, 7, 8].repeat(6);
    let reqs = |e: &EngineHandle| -> Vec<EngineRequest> {
        let g = compile(e, regex.clone());
        (0..6)
            .map(|i| EngineRequest {
                sampling: SamplingParams::default(),
                ..request(&prompt, i, (i % 2 == 0).then(|| g.clone()))
            })
            .collect()
    };
    let run = |e: &EngineHandle| -> Vec<Out> {
        let streams: Vec<_> = reqs(e).into_iter().map(|r| e.submit(r).unwrap()).collect();
        streams.into_iter().map(collect).collect()
    };
    let (a, b) = (run(&plain), run(&fast));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a.tokens, b.tokens, "row {i}");
        if i % 2 == 0 {
            let t = b.text.as_bytes();
            assert_eq!(t.len(), 6, "{:?}", b.text);
            assert!(
                t[..3].iter().all(|c| (b'a'..=b'c').contains(c)),
                "{:?}",
                b.text
            );
            assert!(t[3..].iter().all(u8::is_ascii_digit), "{:?}", b.text);
        }
    }
    let spec = fast.metrics().spec.as_ref().expect("spec metrics");
    assert!(
        spec.num_draft_tokens.get() > 0,
        "the free rows were drafted"
    );
    plain.shutdown(Duration::from_secs(5));
    fast.shutdown(Duration::from_secs(5));
}
