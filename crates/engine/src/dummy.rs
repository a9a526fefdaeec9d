//! Deterministic random weights of a real model's shape (vLLM's `--load-format dummy`), so that
//! throughput at real scale can be measured where real weights cannot be downloaded.
//!
//! The weights are built as an in-memory GGUF and loaded through the normal path, so every backend
//! sees the same bytes for the same seed; or, for models too large for host memory, generated on
//! the GPU ([`device_model`]: `--dummy-dtype fp8`, or `--dummy-on-device`). Each value comes from a
//! counter-based generator keyed by (seed, tensor name, index) (`cuda::fp8::dummy_value`, the
//! same function as the device's kernel): the same on any machine, in any order, on any number
//! of threads or GPU blocks.
//! The tokenizer is byte-level: one token per byte, then ChatML specials, then filler tokens up to
//! the preset's vocabulary size.

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;
use tokenfab_backend::cuda::fp8;
pub use tokenfab_loader::byte_vocab::byte_level_tokenizer;
use tokenfab_loader::chat_template::ChatTemplate;
use tokenfab_loader::quant::fp8::{e4m3_to_f32, E4M3_MAX};
use tokenfab_loader::tokenizer::Tokenizer;
use tokenfab_loader::{quant, GgmlType, Gguf, GgufWriter, Value};
use tokenfab_models::{DeviceDummy, GpuWeights, Model};

use crate::error::{Error, Result};
use crate::model::LoadedModel;

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

/// What the dummy matrices hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DummyValues {
    /// `u x a`, u uniform in [-1, 1) from (seed, tensor name, index), a = sqrt(3 / fan_in).
    Uniform,
    /// The FP8 values a GPU makes of the same u for `--dummy-dtype fp8`: `e4m3(448 u) x a / 448`
    /// (with `ty` F32 this is the CPU twin of the device's FP8 dummy model).
    Fp8,
}

/// Random values for a tensor, scaled like a trained layer (uniform with variance 1/fan_in): the
/// CPU twin of the device's `dummy_fill` (the same generator, `cuda::fp8::dummy_value`).
fn random(seed: u64, name: &str, n: usize, fan_in: usize, values: DummyValues) -> Vec<f32> {
    let k = fp8::dummy_key(seed, name);
    let a = fp8::dummy_range(fan_in);
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                let i = (c << 16 | j) as u64;
                *x = match values {
                    DummyValues::Uniform => fp8::dummy_value(k, i) * a,
                    DummyValues::Fp8 => e4m3_to_f32(fp8::dummy_code(k, i)) * (a / E4M3_MAX),
                };
            }
        });
    v
}

/// A complete GGUF file of `cfg`'s shape: matrices in `ty` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, ...),
/// norms in F32 (all ones, as freshly initialized).
pub fn build_gguf(name: &str, cfg: &DummyConfig, seed: u64, ty: GgmlType) -> Result<Vec<u8>> {
    build_gguf_with(name, cfg, seed, ty, DummyValues::Uniform)
}

/// The metadata and tokenizer of `cfg`'s dummy model, no tensors: what a model whose weights a
/// GPU generates is described by ([`device_model`]).
pub fn build_gguf_meta(name: &str, cfg: &DummyConfig) -> Result<Vec<u8>> {
    Ok(meta(name, cfg)?.to_bytes())
}

/// A dummy model whose weights the GPU generates from `seed` ([`tokenfab_models::Model::device_dummy`]):
/// sized and made on the device, nothing of a 70B model held in host memory. The layers'
/// matrices in `w` (bf16 or FP8); the same values as [`build_gguf`]'s (FP8: [`DummyValues::Fp8`]).
pub fn device_model(preset: &str, seed: u64, w: GpuWeights) -> Result<LoadedModel> {
    let cfg = DummyConfig::resolve(preset)?;
    let g = Gguf::from_bytes(build_gguf_meta(preset, &cfg)?)?;
    let d = DeviceDummy {
        seed,
        tied_embeddings: cfg.tied_embeddings,
    };
    let model = Model::device_dummy(&g, d, w)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let template = ChatTemplate::from_gguf(&g, &tokenizer)?;
    Ok(LoadedModel {
        path: format!("dummy-{preset}").into(),
        name: format!("dummy-{preset}"),
        model,
        tokenizer,
        template,
        file_tensor_bytes: 0,
    })
}

fn meta(name: &str, cfg: &DummyConfig) -> Result<GgufWriter> {
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
    Ok(w)
}

/// [`build_gguf`] with the matrices' values chosen by `values`.
pub fn build_gguf_with(
    name: &str,
    cfg: &DummyConfig,
    seed: u64,
    ty: GgmlType,
    values: DummyValues,
) -> Result<Vec<u8>> {
    let mut w = meta(name, cfg)?;
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let kv = cfg.n_kv_heads * (d / cfg.n_heads);
    let matrix = |w: &mut GgufWriter, tname: &str, rows: usize, cols: usize| -> Result<()> {
        let vals = random(seed, tname, rows * cols, cols, values);
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
mod device_tests;

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
        let v = random(7, "x", 10000, 3, DummyValues::Uniform);
        assert!(v.iter().all(|x| x.abs() <= 1.0));
        let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.03, "{mean}");
    }

    /// `--dummy-dtype fp8`'s host twin holds exactly the values of the device's FP8 codes times
    /// the tensor's scale, each within FP8's error of the plain dummy value.
    #[test]
    fn fp8_twin_values() {
        let a = random(3, "blk.0.ffn_up.weight", 5000, 64, DummyValues::Uniform);
        let b = random(3, "blk.0.ffn_up.weight", 5000, 64, DummyValues::Fp8);
        let k = fp8::dummy_key(3, "blk.0.ffn_up.weight");
        let s = fp8::dummy_range(64) / E4M3_MAX;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(*y, e4m3_to_f32(fp8::dummy_code(k, i as u64)) * s);
            assert!(
                (x - y).abs() <= (x.abs() / 16.0).max(s / 1024.0) * 1.0001,
                "{x} {y}"
            );
        }
        assert_ne!(a, b);
    }

    /// A model made on the device holds nothing on the host: 70B's shape loads from metadata
    /// alone, and the CPU refuses to run it, naming why.
    #[test]
    fn device_models_have_no_host_weights() {
        let m = device_model("llama3-70b", 1, GpuWeights::Fp8).unwrap();
        assert_eq!(m.model.weight_bytes(), 0);
        assert_eq!((m.model.cfg.n_layers, m.model.cfg.dim), (80, 8192));
        assert_eq!(m.model.gpu_weights, GpuWeights::Fp8);
        assert_eq!(m.tokenizer.vocab_size(), 128_256);
        let e = tokenfab_models::CpuExecutor::new(m.model, Default::default(), 16, 4)
            .err()
            .expect("no host weights")
            .to_string();
        assert!(e.contains("--device cuda"), "{e}");
    }

    /// Llama 3 70B on one H200 (nvidia-smi's 143,771 MiB; the driver reports about 139 GiB
    /// usable) at `--gpu-memory-utilization 0.9` with the dummy made on the device: in bf16 the
    /// weights alone (131.5 GiB) exceed the budget and the error says so before anything is
    /// allocated; in FP8 (layers 1 byte per weight, embedding and output bf16: 67.7 GiB) the
    /// model fits with about 56 GiB of FP8 KV (160 KiB per token: ~366,000 tokens; 2 x that
    /// as bf16 KV would halve it).
    #[test]
    fn llama3_70b_in_fp8_fits_one_h200_with_kv_at_0_9() {
        use tokenfab_backend::cuda::memory::{self, KvSizing, DEFAULT_RESERVE};
        use tokenfab_models::cuda::{device_footprint, llama_weight_bytes};
        use tokenfab_models::{CudaConfig, KvDtype};
        const GIB: f64 = (1u64 << 30) as f64;
        let dc = DummyConfig::resolve("llama3-70b").unwrap();
        let m = device_model("llama3-70b", 0, GpuWeights::Fp8)
            .unwrap()
            .model;
        let c = &m.cfg;
        let bf16 = llama_weight_bytes(c, false, GpuWeights::Bf16);
        let fp8 = llama_weight_bytes(c, false, GpuWeights::Fp8);
        let params = dc.n_params() as usize;
        let norms = 80 * 2 * 8192 + 8192;
        assert_eq!(
            bf16,
            2 * params + 2 * norms,
            "bf16: 2 bytes per weight, 4 per norm value"
        );
        let embed = 2 * 128_256 * 8192;
        assert_eq!(
            fp8,
            params - embed + 2 * embed + 80 * 4 * 4 + 80 * 2 * 8192 * 3 + 8192 * 3
        );
        let tables: usize = m.ropes().iter().map(|r| 8 * r.half() * c.context_len).sum();
        let cuda = CudaConfig {
            kv_dtype: KvDtype::Fp8,
            ..Default::default()
        };
        let (total, context) = ((139.0 * GIB) as usize, 500usize << 20);
        let free = total - context;
        let e = device_footprint(c, bf16, tables, false, &cuda)
            .unwrap()
            .check(total, free, 0.9)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weights 131.") && e.contains("the device has 139.00 GiB"),
            "{e}"
        );
        let f = device_footprint(c, fp8, tables, true, &cuda).unwrap();
        f.check(total, free, 0.9).unwrap();
        // After the upload the pool takes what is left of 0.9 x 139 GiB.
        let used = context + f.weights + f.activations + f.tables;
        let per_block = memory::bytes_per_block(80, 1024, 16, 1);
        let s = KvSizing {
            total_mem: total,
            free_mem: total - used,
            utilization: 0.9,
            bytes_per_block: per_block,
            reserve: DEFAULT_RESERVE,
        };
        let kv = s.kv_bytes().unwrap() as f64 / GIB;
        let tokens = (s.num_blocks().unwrap() - 1) * 16;
        eprintln!(
            "70B fp8 on 139 GiB at 0.9: weights {:.2} GiB, activations {:.2} GiB, KV {kv:.2} GiB = {tokens} tokens",
            f.weights as f64 / GIB,
            f.activations as f64 / GIB
        );
        assert!(
            (f.weights as f64 / GIB - 67.7).abs() < 0.1,
            "{}",
            f.weights as f64 / GIB
        );
        assert!((55.0..57.0).contains(&kv), "{kv}");
        assert!(tokens > 360_000, "{tokens}");
        // The seed's load (512 streams of 128 in + 128 out) needs 131,072 of them.
        assert!(tokens > 512 * 256 * 2);
    }
}
