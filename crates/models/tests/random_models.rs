//! Qwen3 and Phi-3 at their real layouts with random weights, written by
//! `scripts/random-models.py` with the `gguf` package, against llama.cpp's greedy continuations
//! of the same files (`reference/random-*-greedy.jsonl`, made by `scripts/llama-reference.py
//! random`): teacher-forced on llama.cpp's tokens, tokenfab's top-1 must be llama.cpp's token on
//! at least 99% of positions. Needs python3 (the script installs `gguf` with pip when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use tokenfab_loader::Gguf;
use tokenfab_models::{ForwardBatch, KvDtype, Model, SeqSlice};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model files, written (and checked against the sha256 llama.cpp scored) by the script.
fn models() -> Vec<PathBuf> {
    let out = Command::new("python3")
        .arg(root().join("scripts/random-models.py"))
        .output()
        .expect("running python3 scripts/random-models.py");
    assert!(
        out.status.success(),
        "random-models.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// (positions where llama.cpp's token is tokenfab's top-1, positions, mean |logprob difference|)
fn score(model: &Model, reference: &Path) -> (usize, usize, f64) {
    let (mut agree, mut total, mut diffs) = (0, 0, Vec::new());
    let text = std::fs::read_to_string(reference).unwrap();
    for line in text.lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        let (prompt, greedy) = (ids(&j["prompt_tokens"]), ids(&j["greedy_tokens"]));
        let tokens: Vec<u32> = prompt.iter().chain(&greedy).copied().collect();
        let positions: Vec<u32> = (0..tokens.len() as u32).collect();
        let table: Vec<u32> = (0..tokens.len().div_ceil(16) as u32).collect();
        let mut kv = model.new_kv_cache(KvDtype::F16, 16, table.len()).unwrap();
        let seqs = [SeqSlice {
            rows: 0..tokens.len(),
            block_table: &table,
        }];
        // Row p's logits predict token p + 1: the rows before each greedy token.
        let rows: Vec<usize> = (prompt.len() - 1..tokens.len() - 1).collect();
        let batch = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logits_rows: &rows,
        };
        let logits = model.forward(&batch, &mut kv).unwrap();
        let vocab = model.cfg.vocab_size;
        for (i, &want) in greedy.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let best = (0..vocab).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
            total += 1;
            agree += usize::from(best == Some(want as usize));
            if let Some(lp) = j["greedy_logprobs"][i].as_f64() {
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
                diffs.push((row[want as usize] as f64 - lse - lp).abs());
            }
        }
    }
    (agree, total, diffs.iter().sum::<f64>() / diffs.len() as f64)
}

#[test]
fn qwen3_and_phi3_give_llama_cpp_top_1() {
    for path in models() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let model = Model::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
        let reference = root().join(format!("reference/{name}-greedy.jsonl"));
        let (agree, total, mad) = score(&model, &reference);
        let share = agree as f64 / total as f64;
        eprintln!(
            "{name}: top-1 equal on {agree}/{total} positions ({:.2}%), mean |logprob diff| {mad:.4}",
            share * 100.0
        );
        assert!(total >= 500, "{name}: {total} positions");
        assert!(
            share >= 0.99,
            "{name}: top-1 equal on {:.2}%",
            share * 100.0
        );
        assert!(mad <= 0.02, "{name}: mean |logprob diff| {mad:.4}");
    }
}
