//! Models as shapes: what a step reads and computes depends only on the layer sizes, the number
//! format of the weights and of the KV cache, never on the weights' values.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokenfab_engine::dummy::DummyConfig;
use tokenfab_loader::{GgmlType, Gguf};
use tokenfab_models::ModelConfig;

use crate::PlanError;

/// How numbers are stored: their bytes and which peak multiplies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    Fp8,
    /// A GGUF block format (Q8_0, Q4_1, Q4_K, ...).
    Ggml(GgmlType),
}

/// The arithmetic a matrix product over weights of a [`Dtype`] runs in: the key of a device's
/// peaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    F32,
    /// bf16 and f16 tensor-core (or vector) products.
    Bf16,
    Fp8,
    /// u8 x i8 dot products: the CPU's kernels for GGUF block formats quantize activations to
    /// 8 bits, as llama.cpp does.
    Int8,
}

impl Dtype {
    /// Bytes per stored value, block scales included (Q4_1: 20 bytes per 32 values).
    pub fn bytes_per_value(self) -> f64 {
        match self {
            Dtype::F32 => 4.0,
            Dtype::F16 | Dtype::Bf16 => 2.0,
            Dtype::Fp8 => 1.0,
            Dtype::Ggml(t) => t.block_bytes() as f64 / t.block_len() as f64,
        }
    }

    /// The arithmetic its products run in.
    pub fn compute(self) -> Compute {
        match self {
            Dtype::F32 => Compute::F32,
            Dtype::F16 | Dtype::Bf16 => Compute::Bf16,
            Dtype::Fp8 => Compute::Fp8,
            Dtype::Ggml(GgmlType::F32) => Compute::F32,
            Dtype::Ggml(GgmlType::F16 | GgmlType::BF16) => Compute::Bf16,
            Dtype::Ggml(_) => Compute::Int8,
        }
    }

    fn from_ggml(t: GgmlType) -> Dtype {
        match t {
            GgmlType::F32 => Dtype::F32,
            GgmlType::F16 => Dtype::F16,
            GgmlType::BF16 => Dtype::Bf16,
            t => Dtype::Ggml(t),
        }
    }
}

const DTYPES: &str = "f32, f16, bf16, fp8, q8_0, q6_k, q5_k, q5_0, q5_1, q4_k, q4_0, q4_1";

impl FromStr for Dtype {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Dtype::F32,
            "f16" | "fp16" | "float16" => Dtype::F16,
            "bf16" | "bfloat16" => Dtype::Bf16,
            "fp8" | "f8" | "fp8_e4m3" | "float8" => Dtype::Fp8,
            "q8_0" => Dtype::Ggml(GgmlType::Q8_0),
            "q6_k" => Dtype::Ggml(GgmlType::Q6K),
            "q5_k" => Dtype::Ggml(GgmlType::Q5K),
            "q5_0" => Dtype::Ggml(GgmlType::Q5_0),
            "q5_1" => Dtype::Ggml(GgmlType::Q5_1),
            "q4_k" => Dtype::Ggml(GgmlType::Q4K),
            "q4_0" => Dtype::Ggml(GgmlType::Q4_0),
            "q4_1" => Dtype::Ggml(GgmlType::Q4_1),
            other => {
                return Err(PlanError::Invalid(format!(
                    "unknown number format `{other}` (known: {DTYPES})"
                )))
            }
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dtype::F32 => f.write_str("f32"),
            Dtype::F16 => f.write_str("f16"),
            Dtype::Bf16 => f.write_str("bf16"),
            Dtype::Fp8 => f.write_str("fp8"),
            Dtype::Ggml(t) => write!(f, "{}", format!("{t:?}").to_ascii_lowercase()),
        }
    }
}

impl Serialize for Dtype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A Llama-family model as the cost model sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShape {
    pub name: String,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + output), the scheduler's `max_model_len`.
    pub context_len: usize,
    pub tied_embeddings: bool,
    /// How the layer matrices are stored (for a GGUF: the format holding most of their bytes).
    pub weight_dtype: Dtype,
    /// Bytes of one layer's matrices (Q, K, V, O, gate, up, down) as stored.
    pub layer_matrix_bytes: f64,
    /// Bytes of the output matrix (the embedding itself when tied).
    pub lm_head_bytes: f64,
    /// How the output matrix is stored.
    pub lm_head_dtype: Dtype,
    /// Bytes of the embedding table when it is a separate matrix (0 when tied).
    pub embedding_bytes: f64,
}

/// Shapes the planner knows beyond the dummy-weights presets (for published comparisons).
const EXTRA_PRESETS: &[&str] = &["llama2-70b"];

impl ModelShape {
    /// Multiply-adds of one layer's matrices per token.
    pub fn layer_params(&self) -> f64 {
        let (d, q, kv, f) = (
            self.dim as f64,
            (self.n_heads * self.head_dim) as f64,
            (self.n_kv_heads * self.head_dim) as f64,
            self.ffn_dim as f64,
        );
        d * q + 2.0 * d * kv + q * d + 3.0 * d * f
    }

    /// Multiply-adds of the output matrix per logits row.
    pub fn lm_head_params(&self) -> f64 {
        (self.vocab_size * self.dim) as f64
    }

    /// Bytes of every matrix held in memory (the embedding table once when tied).
    pub fn weight_bytes(&self) -> f64 {
        self.n_layers as f64 * self.layer_matrix_bytes + self.lm_head_bytes + self.embedding_bytes
    }

    /// Bytes one token's K and V take over all layers stored as `kv`.
    pub fn kv_bytes_per_token(&self, kv: Dtype) -> f64 {
        2.0 * (self.n_layers * self.n_kv_heads * self.head_dim) as f64 * kv.bytes_per_value()
    }

    /// A shape from `spec`: a preset (`smollm2-135m`, `llama3-8b`, `llama3-70b`, `llama2-70b`,
    /// `tiny`), a GGUF file (shape and stored formats from its header), a Hugging Face
    /// `config.json` or a dummy-weights JSON config. `dtype` restores the weights in another
    /// format (required for presets and JSON configs).
    pub fn resolve(spec: &str, dtype: Option<Dtype>) -> Result<Self, PlanError> {
        if spec.ends_with(".gguf") {
            let mut s = Self::from_gguf(Path::new(spec))?;
            if let Some(d) = dtype {
                s.restore(d);
            }
            return Ok(s);
        }
        let d = dtype.ok_or_else(|| {
            PlanError::Invalid(format!(
                "`--weight-dtype` is required for the shape `{spec}` (a GGUF file carries its own)"
            ))
        })?;
        if spec.ends_with(".json") {
            let text = std::fs::read_to_string(spec)
                .map_err(|e| PlanError::Invalid(format!("reading {spec}: {e}")))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| PlanError::Invalid(format!("{spec}: {e}")))?;
            if v.get("hidden_size").is_some() {
                return Self::from_hf_config(spec, &v, d);
            }
        }
        let cfg = match spec {
            "llama2-70b" => DummyConfig {
                n_layers: 80,
                dim: 8192,
                ffn_dim: 28672,
                n_heads: 64,
                n_kv_heads: 8,
                vocab_size: 32000,
                context_len: 4096,
                rope_base: 10000.0,
                tied_embeddings: false,
            },
            other => DummyConfig::resolve(other).map_err(|e| {
                PlanError::Invalid(format!("{e}; the planner also knows {EXTRA_PRESETS:?}"))
            })?,
        };
        Ok(Self::from_dummy(spec, &cfg, d))
    }

    fn from_dummy(name: &str, c: &DummyConfig, d: Dtype) -> Self {
        let mut s = ModelShape {
            name: name.to_string(),
            n_layers: c.n_layers,
            dim: c.dim,
            ffn_dim: c.ffn_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.dim / c.n_heads.max(1),
            vocab_size: c.vocab_size,
            context_len: c.context_len,
            tied_embeddings: c.tied_embeddings,
            weight_dtype: d,
            layer_matrix_bytes: 0.0,
            lm_head_bytes: 0.0,
            lm_head_dtype: d,
            embedding_bytes: 0.0,
        };
        s.restore(d);
        s
    }

    fn from_hf_config(path: &str, v: &serde_json::Value, d: Dtype) -> Result<Self, PlanError> {
        let get = |k: &str| -> Result<usize, PlanError> {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| PlanError::Invalid(format!("{path}: no integer `{k}`")))
        };
        let n_heads = get("num_attention_heads")?;
        let dim = get("hidden_size")?;
        let cfg = DummyConfig {
            n_layers: get("num_hidden_layers")?,
            dim,
            ffn_dim: get("intermediate_size")?,
            n_heads,
            n_kv_heads: get("num_key_value_heads").unwrap_or(n_heads),
            vocab_size: get("vocab_size")?,
            context_len: get("max_position_embeddings")?,
            rope_base: 10000.0,
            tied_embeddings: v
                .get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        };
        let mut s = Self::from_dummy(path, &cfg, d);
        if let Ok(h) = get("head_dim") {
            s.head_dim = h;
            s.restore(d);
        }
        Ok(s)
    }

    /// The shape of a GGUF file from its header: sizes from the `{arch}.*` keys, bytes and
    /// formats from the tensor table (no weight is read).
    pub fn from_gguf(path: &Path) -> Result<Self, PlanError> {
        let g =
            Gguf::open(path).map_err(|e| PlanError::Invalid(format!("{}: {e}", path.display())))?;
        let c = ModelConfig::from_gguf(&g)
            .map_err(|e| PlanError::Invalid(format!("{}: {e}", path.display())))?;
        let mut per_type: Vec<(GgmlType, f64)> = Vec::new();
        let mut layer_bytes = 0.0;
        for l in 0..c.n_layers {
            for m in [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                let name = format!("blk.{l}.{m}.weight");
                let t = g.tensor(&name).ok_or_else(|| {
                    PlanError::Invalid(format!("{}: no tensor `{name}`", path.display()))
                })?;
                layer_bytes += t.n_bytes as f64;
                match per_type.iter_mut().find(|(ty, _)| *ty == t.ty) {
                    Some((_, b)) => *b += t.n_bytes as f64,
                    None => per_type.push((t.ty, t.n_bytes as f64)),
                }
            }
        }
        let main = per_type
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|&(t, _)| t)
            .ok_or_else(|| PlanError::Invalid(format!("{}: no layers", path.display())))?;
        let embd = g.tensor("token_embd.weight").ok_or_else(|| {
            PlanError::Invalid(format!("{}: no tensor `token_embd.weight`", path.display()))
        })?;
        let output = g.tensor("output.weight");
        let head = output.unwrap_or(embd);
        let name = g
            .opt("general.name", Gguf::get_str)
            .ok()
            .flatten()
            .map(str::to_string)
            .unwrap_or_else(|| path.display().to_string());
        Ok(ModelShape {
            name,
            n_layers: c.n_layers,
            dim: c.dim,
            ffn_dim: c.ffn_dim,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            context_len: c.context_len,
            tied_embeddings: output.is_none(),
            weight_dtype: Dtype::from_ggml(main),
            layer_matrix_bytes: layer_bytes / c.n_layers.max(1) as f64,
            lm_head_bytes: head.n_bytes as f64,
            lm_head_dtype: Dtype::from_ggml(head.ty),
            embedding_bytes: if output.is_some() {
                embd.n_bytes as f64
            } else {
                0.0
            },
        })
    }

    /// Every matrix stored as `d` instead.
    pub fn restore(&mut self, d: Dtype) {
        let b = d.bytes_per_value();
        self.weight_dtype = d;
        self.lm_head_dtype = d;
        self.layer_matrix_bytes = self.layer_params() * b;
        self.lm_head_bytes = self.lm_head_params() * b;
        self.embedding_bytes = if self.tied_embeddings {
            0.0
        } else {
            self.lm_head_bytes
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_have_their_bytes_and_arithmetic() {
        let q41: Dtype = "q4_1".parse().unwrap();
        assert_eq!(q41.bytes_per_value(), 20.0 / 32.0);
        assert_eq!(q41.compute(), Compute::Int8);
        assert_eq!(
            "Q8_0".parse::<Dtype>().unwrap().bytes_per_value(),
            34.0 / 32.0
        );
        assert_eq!("bf16".parse::<Dtype>().unwrap().compute(), Compute::Bf16);
        assert_eq!("fp8".parse::<Dtype>().unwrap().bytes_per_value(), 1.0);
        assert_eq!(q41.to_string(), "q4_1");
        let e = "int3".parse::<Dtype>().unwrap_err().to_string();
        assert!(e.contains("`int3`") && e.contains("q4_k"), "{e}");
    }

    #[test]
    fn llama3_presets_have_their_published_sizes() {
        // Llama 3 8B: 32 layers of 4096 wide, FFN 14336, 8 KV heads of 128.
        let s = ModelShape::resolve("llama3-8b", Some(Dtype::Bf16)).unwrap();
        // 4096*4096*2 + 2*4096*1024 + 3*4096*14336 = 218,103,808 per layer.
        assert_eq!(s.layer_params(), 218_103_808.0);
        // About 8.03 billion parameters: 16.06 GB in bf16.
        assert!(
            (s.weight_bytes() / 1e9 - 16.06).abs() < 0.02,
            "{}",
            s.weight_bytes()
        );
        // K and V: 2 * 32 layers * 1024 * 2 bytes = 131,072 bytes (128 KiB) per token.
        assert_eq!(s.kv_bytes_per_token(Dtype::Bf16), 131_072.0);
        let s70 = ModelShape::resolve("llama3-70b", Some(Dtype::Fp8)).unwrap();
        assert!(
            (s70.weight_bytes() / 1e9 - 70.55).abs() < 0.1,
            "{}",
            s70.weight_bytes()
        );
        let l2 = ModelShape::resolve("llama2-70b", Some(Dtype::Fp8)).unwrap();
        assert_eq!(l2.vocab_size, 32000);
        assert!(ModelShape::resolve("llama3-8b", None)
            .unwrap_err()
            .to_string()
            .contains("--weight-dtype"));
        assert!(ModelShape::resolve("nope", Some(Dtype::Bf16))
            .unwrap_err()
            .to_string()
            .contains("llama2-70b"));
    }

    #[test]
    fn hf_config_and_gguf_header() {
        let dir = std::env::temp_dir().join(format!("tokenfab-plan-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.json");
        std::fs::write(
            &cfg,
            r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
                "max_position_embeddings": 512, "tie_word_embeddings": true}"#,
        )
        .unwrap();
        let hf = ModelShape::resolve(cfg.to_str().unwrap(), Some(Dtype::Bf16)).unwrap();
        assert_eq!(
            (hf.head_dim, hf.n_kv_heads, hf.embedding_bytes),
            (16, 2, 0.0)
        );
        // The same shape written as a Q8_0 GGUF: bytes from the tensor table.
        let tiny = DummyConfig::resolve("tiny").unwrap();
        let bytes = tokenfab_engine::dummy::build_gguf("tiny", &tiny, 1, GgmlType::Q8_0).unwrap();
        let path = dir.join("tiny.gguf");
        std::fs::write(&path, bytes).unwrap();
        let g = ModelShape::resolve(path.to_str().unwrap(), None).unwrap();
        assert_eq!(g.weight_dtype, Dtype::Ggml(GgmlType::Q8_0));
        assert_eq!((g.n_layers, g.dim, g.ffn_dim), (2, 64, 96));
        assert_eq!(g.layer_matrix_bytes, g.layer_params() * 34.0 / 32.0);
        assert!(!g.tied_embeddings);
        std::fs::remove_dir_all(&dir).ok();
    }
}
