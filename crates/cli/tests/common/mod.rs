//! Helpers for the end-to-end tests: the real default model, the binary, and llama.cpp's
//! reference outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use tokenfab_loader::testing::workspace_root as root;

/// `../shared` beside the checkout (reference data, peers).
pub fn shared() -> PathBuf {
    root().join("../shared")
}

/// The default model, fetched with `scripts/fetch-model.sh` when missing.
pub fn model() -> PathBuf {
    tokenfab_loader::testing::default_model().unwrap()
}

/// Runs the tokenfab binary; panics with its stderr when it fails.
pub fn tokenfab(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tokenfab");
    assert!(
        out.status.success(),
        "tokenfab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The PPL of `tokenfab perplexity`'s last line, `PPL = X +/- Y`.
pub fn ppl_of(out: &str) -> f64 {
    let line = out.lines().last().expect("perplexity printed nothing");
    line.strip_prefix("PPL = ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("not a PPL line: {line:?}"))
}

#[derive(serde::Deserialize)]
pub struct Reference {
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    pub greedy_logprobs: Vec<Option<f32>>,
}

/// llama.cpp's greedy continuations of 13 prompts on the default model.
pub fn references() -> Vec<Reference> {
    let path = shared().join("reference/smollm2-greedy.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes the references as `tokenfab score` input rows (prompt, llama.cpp's greedy tokens) into
/// `dir/rows.jsonl` and returns its path.
pub fn score_rows(refs: &[Reference], dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let input = dir.join("rows.jsonl");
    let rows: Vec<String> = refs
        .iter()
        .map(|r| {
            serde_json::json!({"prompt_tokens": r.prompt_tokens, "tokens": r.greedy_tokens})
                .to_string()
        })
        .collect();
    std::fs::write(&input, rows.join("\n")).unwrap();
    input
}

/// `tokenfab score` of `input` with `model` on the CPU (where the references were taken): one
/// JSON object per row.
pub fn score(model: &Path, input: &Path) -> Vec<serde_json::Value> {
    let out = tokenfab(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
