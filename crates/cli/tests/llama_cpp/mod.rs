//! tokenfab's commands measured against llama.cpp's reference outputs on one model: the
//! comparisons of `reference.rs` (SmolLM2) and `reference_gemma3.rs` (Gemma 3).
#![allow(dead_code)]

use std::path::Path;

use crate::common::{score, score_rows, tokenfab, Reference};

/// How `tokenfab score` agrees with llama.cpp on its greedy continuations.
pub struct Agreement {
    pub positions: usize,
    /// Positions where llama.cpp's token is tokenfab's top choice, or within 0.1 nats of it.
    pub agree: usize,
    /// Mean |tokenfab's - llama.cpp's log-probability of llama.cpp's token|, where llama.cpp
    /// gave one.
    pub mad: f64,
}

impl Agreement {
    pub fn share(&self) -> f64 {
        self.agree as f64 / self.positions as f64
    }
}

/// Teacher-forced: `tokenfab score` on each reference's prompt and greedy tokens.
pub fn teacher_forced(model: &Path, refs: &[Reference]) -> Agreement {
    let dir = std::env::temp_dir().join(format!(
        "tokenfab-score-{}-{}",
        std::process::id(),
        model.file_stem().unwrap().to_string_lossy()
    ));
    let lines = score(model, &score_rows(refs, &dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(lines.len(), refs.len());
    let (mut positions, mut agree, mut diffs) = (0usize, 0usize, Vec::new());
    for (r, got) in refs.iter().zip(&lines) {
        let lps: Vec<f64> = serde_json::from_value(got["logprobs"].clone()).unwrap();
        let tops: Vec<f64> = serde_json::from_value(got["top_logprobs"].clone()).unwrap();
        assert_eq!(lps.len(), r.greedy_tokens.len());
        for i in 0..lps.len() {
            positions += 1;
            if tops[i] - lps[i] <= 0.1 {
                agree += 1;
            }
            if let Some(want) = r.greedy_logprobs[i] {
                diffs.push((lps[i] - want as f64).abs());
            }
        }
    }
    let a = Agreement {
        positions,
        agree,
        mad: diffs.iter().sum::<f64>() / diffs.len() as f64,
    };
    eprintln!(
        "{agree}/{positions} positions agree ({:.2}%), mean |logprob diff| {:.4} over {}",
        a.share() * 100.0,
        a.mad,
        diffs.len()
    );
    a
}

/// Free-running: how many prompts' first `n` tokens of `tokenfab generate` (greedy, EOS
/// ignored) are llama.cpp's. Each prompt must tokenize to as many tokens as llama.cpp's.
pub fn first_tokens_matching(model: &Path, refs: &[Reference], n: usize) -> usize {
    let mut matched = 0;
    for r in refs {
        let out = tokenfab(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &r.prompt,
            "--max-tokens",
            &n.to_string(),
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
            "--device",
            "cpu",
        ]);
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let toks: Vec<u32> = serde_json::from_value(j["tokens"].clone()).unwrap();
        assert_eq!(
            j["prompt_tokens"].as_u64().unwrap() as usize,
            r.prompt_tokens.len(),
            "prompt {:?}",
            r.prompt
        );
        if toks[..n] == r.greedy_tokens[..n] {
            matched += 1;
        } else {
            eprintln!(
                "prompt {:?}: got {:?}, llama.cpp {:?}",
                r.prompt.chars().take(40).collect::<String>(),
                &toks[..n],
                &r.greedy_tokens[..n]
            );
        }
    }
    eprintln!(
        "{matched}/{} prompts match llama.cpp's first {n} greedy tokens",
        refs.len()
    );
    matched
}

/// `tokenfab perplexity` of `file` in chunks of `ctx` tokens.
pub fn perplexity(model: &Path, file: &Path, ctx: usize) -> f64 {
    let out = tokenfab(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        &ctx.to_string(),
        "--device",
        "cpu",
    ]);
    let line = out.lines().last().unwrap();
    line.strip_prefix("PPL = ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Asserts `got` is within 2% of llama.cpp's `want`.
pub fn assert_ppl_close(what: &str, got: f64, want: f64) {
    let rel = (got - want) / want;
    eprintln!(
        "{what}: PPL {got:.4} vs llama.cpp {want} ({:+.2}%)",
        rel * 100.0
    );
    assert!(rel.abs() <= 0.02, "{what}: PPL {:.2}% off", rel * 100.0);
}
