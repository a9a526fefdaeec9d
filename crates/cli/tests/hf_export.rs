//! The default model exported as a bf16 Hugging Face checkpoint (scripts/export-hf.py) and run
//! with `--model DIR` (quantized to Q8_0 at load): its tokens and perplexity against the GGUF's.
//!
//! The bf16 export cannot agree bit for bit: bf16 rounds the GGUF's Q4_1 values and Q8_0 re-rounds
//! them (an f32 export read as f32 still diverges where two tokens nearly tie, since the GGUF runs
//! Q4_1 kernels on 8-bit activations and an f32 checkpoint f32 products). So its greedy tokens
//! are compared as the GGUF's own test compares them with llama.cpp: teacher-forced top-1
//! agreement and the first free-running tokens; and perplexity within 2%. The f32 export
//! quantized at load to the GGUF's own formats (`--quantization q4_1`) is the same model: same
//! blocks, same greedy tokens.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The bf16 export, made once per test process into cargo's scratch folder (overwritten by the
/// next run rather than left behind in /tmp).
fn checkpoint() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hf-export");
        tokenfab_loader::testing::export_hf(&model(), &dir, &[]);
        dir
    })
}

fn greedy(model: &Path, prompt: &str) -> Vec<u32> {
    greedy_with(model, prompt, &[])
}

/// The first 8 greedy tokens after `prompt` (end of generation ignored), on the CPU.
fn greedy_with(model: &Path, prompt: &str, extra: &[&str]) -> Vec<u32> {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let out = tokenfab(&args);
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    serde_json::from_value(j["tokens"].clone()).unwrap()
}

#[test]
fn checkpoint_tokens_follow_the_gguf() {
    let (gguf, hf) = (model(), checkpoint());
    let refs = references();
    let input = score_rows(&refs, hf);
    let (a, b) = (score(&gguf, &input), score(hf, &input));
    assert_eq!((a.len(), b.len()), (refs.len(), refs.len()));
    // Where the GGUF's top choice is the scored token, the checkpoint's is too, or within 0.1
    // nats of it (the criterion tests/reference.rs holds the GGUF to against llama.cpp).
    let (mut positions, mut same_top, mut scored, mut agree, mut diff) = (0, 0, 0, 0, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let col = |v: &serde_json::Value, k: &str| -> Vec<f64> {
            serde_json::from_value(v[k].clone()).unwrap()
        };
        let (top_a, top_b) = (col(x, "top_ids"), col(y, "top_ids"));
        let (lp_a, lp_b) = (col(x, "logprobs"), col(y, "logprobs"));
        let (best_a, best_b) = (col(x, "top_logprobs"), col(y, "top_logprobs"));
        for i in 0..top_a.len() {
            positions += 1;
            same_top += usize::from(top_a[i] == top_b[i]);
            diff += (lp_a[i] - lp_b[i]).abs();
            if best_a[i] <= lp_a[i] {
                scored += 1;
                agree += usize::from(best_b[i] - lp_b[i] <= 0.1);
            }
        }
    }
    let (share, mad) = (agree as f64 / scored as f64, diff / positions as f64);
    eprintln!(
        "checkpoint vs GGUF: the GGUF's top token is the checkpoint's (within 0.1 nats) at \
         {agree}/{scored} positions ({:.2}%); same top-1 at {same_top}/{positions}; \
         mean |dlogprob| {mad:.4}",
        share * 100.0
    );
    assert!(scored >= 500, "only {scored} positions");
    assert!(
        share >= 0.98,
        "only {:.2}% of positions agree",
        share * 100.0
    );
    assert!(mad <= 0.1, "mean |dlogprob| {mad:.4} > 0.1");

    // Free running: the GGUF's first greedy tokens.
    let mut matched = 0;
    for r in &refs {
        let (x, y) = (greedy(&gguf, &r.prompt), greedy(hf, &r.prompt));
        assert_eq!(x[0], y[0], "prompt {:?}: first token", r.prompt);
        if x[..4] == y[..4] {
            matched += 1;
        } else {
            eprintln!("prompt {:?}: GGUF {x:?}, checkpoint {y:?}", r.prompt);
        }
    }
    eprintln!(
        "{matched}/{} prompts: first 4 greedy tokens equal",
        refs.len()
    );
    assert!(matched >= 10, "only {matched} of {} prompts", refs.len());
}

fn perplexity(model: &Path, extra: &[&str]) -> f64 {
    let text = shared().join("reference/texts/GPL-2.txt");
    let mut args = vec![
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        text.to_str().unwrap(),
        "--ctx",
        "512",
    ];
    args.extend_from_slice(extra);
    let out = tokenfab(&args);
    let line = out.lines().last().unwrap();
    line.strip_prefix("PPL = ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no perplexity in {line:?}"))
}

/// The default model exported in f32 (its dequantized values, exactly) and quantized back at load
/// with `--quantization q4_1` (the output matrix, the tied embedding, Q8_0 as in the file) holds
/// the GGUF's own blocks, Q/K rows un-permuted by the export and permuted back by the loader: the
/// same model, so greedy decoding gives the GGUF's tokens exactly.
#[test]
fn f32_checkpoint_quantized_to_q4_1_gives_the_gguf_greedy_tokens() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hf-export-f32");
    tokenfab_loader::testing::export_hf(&model(), &dir, &["--dtype", "f32"]);
    let gguf = tokenfab_loader::Gguf::open(model()).unwrap();
    let view = tokenfab_loader::hf::open(
        &dir,
        &tokenfab_loader::HfOptions {
            quantization: tokenfab_loader::Quantization::Q4_1,
        },
    )
    .unwrap();
    let mut differing = Vec::new();
    for t in &gguf.tensors {
        let v = view
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((v.ty, &v.dims), (t.ty, &t.dims), "{}", t.name);
        if view.tensor_bytes(v) != gguf.tensor_bytes(t) {
            differing.push(t.name.clone());
        }
    }
    assert!(differing.is_empty(), "tensors differ: {differing:?}");
    for r in references() {
        let got = greedy_with(&dir, &r.prompt, &["--quantization", "q4_1"]);
        assert_eq!(got, greedy(&model(), &r.prompt), "prompt {:?}", r.prompt);
    }
}

#[test]
fn q8_0_checkpoint_perplexity_is_within_two_percent_of_the_gguf() {
    let want = perplexity(&model(), &[]);
    let got = perplexity(checkpoint(), &["--quantization", "q8_0"]);
    eprintln!("perplexity GPL-2.txt: GGUF {want:.4}, checkpoint q8_0 {got:.4}");
    assert!(
        (got / want - 1.0).abs() <= 0.02,
        "checkpoint {got:.4} vs GGUF {want:.4}"
    );
}

#[test]
fn quantization_of_a_gguf_file_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(["generate", "--prompt", "x", "--max-tokens", "1"])
        .args([
            "--model",
            model().to_str().unwrap(),
            "--quantization",
            "q4_0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--quantization applies to Hugging Face checkpoint"),
        "{err}"
    );
}

#[test]
fn a_directory_that_is_not_a_checkpoint_is_named() {
    let dir = std::env::temp_dir().join(format!("tokenfab-hf-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(["generate", "--prompt", "x", "--max-tokens", "1"])
        .args(["--model", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
}
