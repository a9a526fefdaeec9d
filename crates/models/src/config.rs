//! Model hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use tokenfab_loader::Gguf;

use crate::error::{Error, Result};

/// How RoPE pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" mode, used for `llama` GGUFs (whose Q/K
    /// weights the converter permuted).
    Normal,
    /// Halves (i, i + d/2): GPT-NeoX / Hugging Face `rotate_half`, used by qwen2.
    Neox,
}

/// Position scaling applied before the rotation.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
}

/// A Llama-family model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub arch: String,
    pub n_layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_len: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Leading dimensions of each head that RoPE rotates.
    pub rope_dim: usize,
    pub rope_kind: RopeKind,
    pub rope_scaling: RopeScaling,
}

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let rope_kind = match arch.as_str() {
            "llama" | "mistral" | "granite" => RopeKind::Normal,
            "qwen2" => RopeKind::Neox,
            other => return Err(Error::UnsupportedArch(other.into())),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let dim = g.get_usize(&k("embedding_length"))?;
        let n_heads = g.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = g
            .opt(&k("attention.head_count_kv"), Gguf::get_usize)?
            .unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Config(format!(
                "{n_heads} heads cannot share {n_kv_heads} KV heads"
            )));
        }
        let head_dim = g
            .opt(&k("attention.key_length"), Gguf::get_usize)?
            .unwrap_or(dim / n_heads);
        let vocab_size = match g.opt(&k("vocab_size"), Gguf::get_usize)? {
            Some(v) => v,
            None => g.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match g.opt(&k("rope.scaling.type"), Gguf::get_str)? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: g.get_f64(&k("rope.scaling.factor"))? as f32,
            },
            Some(other) => {
                return Err(Error::Config(format!(
                    "rope scaling `{other}` is not supported"
                )))
            }
        };
        let cfg = Self {
            n_layers: g.get_usize(&k("block_count"))?,
            ffn_dim: g.get_usize(&k("feed_forward_length"))?,
            context_len: g.get_usize(&k("context_length"))?,
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g
                .opt(&k("rope.freq_base"), Gguf::get_f64)?
                .unwrap_or(10000.0) as f32,
            rope_dim: g
                .opt(&k("rope.dimension_count"), Gguf::get_usize)?
                .unwrap_or(head_dim),
            arch,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            rope_kind,
            rope_scaling,
        };
        if cfg.rope_dim > cfg.head_dim || !cfg.rope_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "rope dimension {} does not fit head dimension {}",
                cfg.rope_dim, cfg.head_dim
            )));
        }
        Ok(cfg)
    }

    /// Width of the K (and V) projection: KV heads times head size.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the Q projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}
