//! Deterministic random weights of a real model's shape (vLLM's `--load-format dummy`), so that
//! throughput at real scale can be measured where real weights cannot be downloaded.
//!
//! The weights are built as an in-memory GGUF and loaded through the normal path, so every backend
//! sees the same bytes for the same seed. Each value comes from a counter-based generator keyed by
//! (seed, tensor name, index): the same on any machine, in any order, on any number of threads.
//! The tokenizer is byte-level: one token per byte, then ChatML specials, then filler tokens up to
//! the preset's vocabulary size.

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;
pub use tokenfab_loader::byte_vocab::byte_level_tokenizer;
use tokenfab_loader::{quant, GgmlType, GgufWriter, Value};

use crate::error::{Error, Result};

/// A model shape.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DummyConfig {
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub context_len: usize,
    pub rope_base: f32,
    /// Whether the output matrix is the embedding (no `output.weight`).
    #[serde(default)]
    pub tied_embeddings: bool,
}

/// The named presets.
pub const PRESETS: &[&str] = &["smollm2-135m", "llama3-8b", "llama3-70b", "tiny"];

impl DummyConfig {
    /// A preset by name, or a JSON file with the fields of [`DummyConfig`].
    pub fn resolve(name: &str) -> Result<Self> {
        let c = |n_layers,
                 dim,
                 ffn_dim,
                 n_heads,
                 n_kv_heads,
                 vocab_size,
                 context_len,
                 rope_base,
                 tied| Self {
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            vocab_size,
            context_len,
            rope_base,
            tied_embeddings: tied,
        };
        Ok(match name {
            "smollm2-135m" => c(30, 576, 1536, 9, 3, 49152, 8192, 100000.0, true),
            "llama3-8b" => c(32, 4096, 14336, 32, 8, 128256, 8192, 500000.0, false),
            "llama3-70b" => c(80, 8192, 28672, 64, 8, 128256, 8192, 500000.0, false),
            "tiny" => c(2, 64, 96, 4, 2, 300, 512, 10000.0, false),
            path if path.ends_with(".json") => {
                let text = std::fs::read_to_string(Path::new(path))
                    .map_err(|e| Error::Invalid(format!("reading dummy config {path}: {e}")))?;
                serde_json::from_str(&text)
                    .map_err(|e| Error::Invalid(format!("dummy config {path}: {e}")))?
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown dummy-weights preset `{other}` (presets: {}, or a .json config)",
                    PRESETS.join(", ")
                )))
            }
        })
    }

    /// Parameters of the model (embedding counted once when tied).
    pub fn n_params(&self) -> u64 {
        let (d, f, hd) = (
            self.dim as u64,
            self.ffn_dim as u64,
            (self.dim / self.n_heads) as u64,
        );
        let kv = self.n_kv_heads as u64 * hd;
        let layer = d * d * 2 + 2 * d * kv + 3 * d * f + 2 * d;
        let embd = self.vocab_size as u64 * d;
        self.n_layers as u64 * layer + embd * if self.tied_embeddings { 1 } else { 2 } + d
    }
}

/// One uniform value in [-1, 1) for (key, index): splitmix64 of the pair.
fn value(key: u64, i: u64) -> f32 {
    let mut z = key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn key(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Random values for a tensor, scaled like a trained layer (uniform with variance 1/fan_in).
fn random(seed: u64, name: &str, n: usize, fan_in: usize) -> Vec<f32> {
    let k = key(seed, name);
    let a = (3.0 / fan_in as f32).sqrt();
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = value(k, (c << 16 | j) as u64) * a;
            }
        });
    v
}

/// A complete GGUF file of `cfg`'s shape: matrices in `ty` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, ...),
/// norms in F32 (all ones, as freshly initialized).
pub fn build_gguf(name: &str, cfg: &DummyConfig, seed: u64, ty: GgmlType) -> Result<Vec<u8>> {
    if cfg.n_heads == 0
        || !cfg.dim.is_multiple_of(cfg.n_heads)
        || cfg.n_kv_heads == 0
        || !cfg.n_heads.is_multiple_of(cfg.n_kv_heads)
    {
        return Err(Error::Invalid(format!(
            "dummy config: {} heads / {} KV heads do not divide {}",
            cfg.n_heads, cfg.n_kv_heads, cfg.dim
        )));
    }
    let mut w = GgufWriter::new();
    let a = "llama";
    let k = |s: &str| format!("{a}.{s}");
    w.meta("general.architecture", Value::String(a.into()))
        .meta("general.name", Value::String(format!("dummy-{name}")))
        .meta(&k("block_count"), Value::U32(cfg.n_layers as u32))
        .meta(&k("embedding_length"), Value::U32(cfg.dim as u32))
        .meta(&k("feed_forward_length"), Value::U32(cfg.ffn_dim as u32))
        .meta(&k("attention.head_count"), Value::U32(cfg.n_heads as u32))
        .meta(
            &k("attention.head_count_kv"),
            Value::U32(cfg.n_kv_heads as u32),
        )
        .meta(&k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .meta(&k("context_length"), Value::U32(cfg.context_len as u32))
        .meta(&k("rope.freq_base"), Value::F32(cfg.rope_base))
        .meta(&k("vocab_size"), Value::U32(cfg.vocab_size as u32));
    byte_level_tokenizer(&mut w, cfg.vocab_size);
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let kv = cfg.n_kv_heads * (d / cfg.n_heads);
    let matrix = |w: &mut GgufWriter, tname: &str, rows: usize, cols: usize| -> Result<()> {
        let vals = random(seed, tname, rows * cols, cols);
        let mut bytes = Vec::new();
        quant::quantize(ty, &vals, &mut bytes)?;
        w.tensor(tname, &[cols as u64, rows as u64], ty, bytes);
        Ok(())
    };
    matrix(&mut w, "token_embd.weight", cfg.vocab_size, d)?;
    if !cfg.tied_embeddings {
        matrix(&mut w, "output.weight", cfg.vocab_size, d)?;
    }
    w.tensor_f32("output_norm.weight", &[d as u64], &vec![1.0; d]);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        w.tensor_f32(&n("attn_norm.weight"), &[d as u64], &vec![1.0; d]);
        w.tensor_f32(&n("ffn_norm.weight"), &[d as u64], &vec![1.0; d]);
        matrix(&mut w, &n("attn_q.weight"), d, d)?;
        matrix(&mut w, &n("attn_k.weight"), kv, d)?;
        matrix(&mut w, &n("attn_v.weight"), kv, d)?;
        matrix(&mut w, &n("attn_output.weight"), d, d)?;
        matrix(&mut w, &n("ffn_gate.weight"), f, d)?;
        matrix(&mut w, &n("ffn_up.weight"), f, d)?;
        matrix(&mut w, &n("ffn_down.weight"), d, f)?;
    }
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenfab_loader::Gguf;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let cfg = DummyConfig::resolve("tiny").unwrap();
        let a = build_gguf("tiny", &cfg, 1, GgmlType::Q8_0).unwrap();
        assert_eq!(a, build_gguf("tiny", &cfg, 1, GgmlType::Q8_0).unwrap());
        assert_ne!(a, build_gguf("tiny", &cfg, 2, GgmlType::Q8_0).unwrap());
        let g = Gguf::from_bytes(a).unwrap();
        assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), 300);
        assert_eq!(
            g.tensor("blk.1.ffn_down.weight").unwrap().dims,
            vec![96, 64]
        );
    }

    #[test]
    fn presets_and_errors() {
        let c = DummyConfig::resolve("llama3-8b").unwrap();
        // Llama 3 8B has about 8.03 billion parameters.
        assert!(
            (c.n_params() as f64 / 1e9 - 8.03).abs() < 0.02,
            "{}",
            c.n_params()
        );
        let c = DummyConfig::resolve("smollm2-135m").unwrap();
        assert!(
            (c.n_params() as f64 / 1e6 - 134.5).abs() < 0.5,
            "{}",
            c.n_params()
        );
        assert!(DummyConfig::resolve("nope")
            .unwrap_err()
            .to_string()
            .contains("llama3-70b"));
    }

    #[test]
    fn values_are_uniform_in_range() {
        let v = random(7, "x", 10000, 3);
        assert!(v.iter().all(|x| x.abs() <= 1.0));
        let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.03, "{mean}");
    }
}
