//! Model hyper-parameters read from GGUF metadata (`{arch}.*` keys), with what each supported
//! architecture adds to the Llama shape. Every key that would change the computation and is not
//! supported is an error naming it.

use tokenfab_backend::ops::{Activation, Heads, RopeKind};
use tokenfab_loader::{Gguf, Value};

use crate::error::{Error, Result};

/// The architectures tokenfab runs (GGUF `general.architecture` names).
pub const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, gemma3, phi3";

/// An architecture: the Llama shape plus its own steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, TinyLlama, Mistral (GGUF `llama` or `mistral`): the plain shape.
    Llama,
    /// Qwen2 / Qwen2.5: Q/K/V biases, NeoX RoPE.
    Qwen2,
    /// Qwen3: per-head RMSNorm of Q and K, NeoX RoPE.
    Qwen3,
    /// Gemma 3: embeddings scaled by √dim, Q/K norms, norms after attention and after the FFN
    /// (before each joins the residual), GeGLU, sliding-window layers between global ones, each
    /// kind with its own RoPE base.
    Gemma3,
    /// Phi-3: fused QKV and gate|up tensors, LongRoPE's per-pair factors and attention factor.
    Phi3,
}

impl Arch {
    fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }
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

/// Gemma 3's sliding-window attention.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a windowed layer attends to, its own included.
    pub window: usize,
    /// (n_layers,) whether each layer is windowed.
    pub layers: Vec<bool>,
    /// RoPE base of the windowed layers (their positions are not scaled).
    pub rope_base: f32,
}

/// Phi-3's LongRoPE: per-pair frequency divisors (`rope_factors_long` past the original context,
/// `rope_factors_short` within it) and a factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub original_context: usize,
    pub attn_factor: f32,
}

/// A model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture` as the file spells it.
    pub arch: String,
    pub kind: Arch,
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
    pub long_rope: Option<LongRope>,
    pub sliding_window: Option<SlidingWindow>,
    /// Multiplies the embedding rows.
    pub embed_scale: f32,
    /// Multiplies q·k.
    pub attn_scale: f32,
    pub activation: Activation,
}

impl ModelConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let kind = Arch::from_name(&arch).ok_or_else(|| Error::UnsupportedArch(arch.clone()))?;
        let k = |s: &str| format!("{arch}.{s}");
        let unsupported = |what: String| Err(Error::Unsupported(format!("{arch}: {what}")));
        let dim = g.get_usize(&k("embedding_length"))?;
        let n_layers = g.get_usize(&k("block_count"))?;
        if n_layers == 0 {
            return Err(Error::Config("`block_count` must be at least 1".into()));
        }
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
        if let Some(v) = g.opt(&k("attention.value_length"), Gguf::get_usize)? {
            if v != head_dim {
                return unsupported(format!("V heads of {v} differ from K heads of {head_dim}"));
            }
        }
        let vocab_size = match g.opt(&k("vocab_size"), Gguf::get_usize)? {
            Some(v) => v,
            None => g.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let context_len = g.get_usize(&k("context_length"))?;
        let rope_scaling = match g.opt(&k("rope.scaling.type"), Gguf::get_str)? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: g.get_f64(&k("rope.scaling.factor"))? as f32,
            },
            Some(other) => return unsupported(format!("rope scaling `{other}`")),
        };
        let cap = g.opt(&k("final_logit_softcapping"), Gguf::get_f64)?;
        if cap.is_some_and(|c| c != 0.0) {
            return unsupported("final_logit_softcapping".into());
        }
        if g.opt(&k("attn_logit_softcapping"), Gguf::get_f64)?
            .is_some_and(|c| c != 0.0)
        {
            return unsupported("attn_logit_softcapping".into());
        }
        let long_rope = match kind {
            Arch::Phi3 => Some(LongRope {
                original_context: g
                    .opt(&k("rope.scaling.original_context_length"), Gguf::get_usize)?
                    .unwrap_or(context_len),
                attn_factor: g
                    .opt(&k("rope.scaling.attn_factor"), Gguf::get_f64)?
                    .unwrap_or(1.0) as f32,
            }),
            _ => None,
        };
        let sliding_window = match kind {
            Arch::Gemma3 => sliding_window(g, &arch, n_layers)?,
            // llama.cpp runs Phi-3 without its window (its converters do not describe which
            // layers have one); so does tokenfab, to give the same results.
            _ => None,
        };
        let cfg = Self {
            kind,
            n_layers,
            ffn_dim: g.get_usize(&k("feed_forward_length"))?,
            context_len,
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g
                .opt(&k("rope.freq_base"), Gguf::get_f64)?
                .unwrap_or(10000.0) as f32,
            rope_dim: g
                .opt(&k("rope.dimension_count"), Gguf::get_usize)?
                .unwrap_or(head_dim),
            rope_kind: match kind {
                Arch::Llama => RopeKind::Normal,
                _ => RopeKind::Neox,
            },
            embed_scale: match kind {
                Arch::Gemma3 => (dim as f32).sqrt(),
                _ => 1.0,
            },
            attn_scale: match kind {
                // llama.cpp's choice (after gemma_pytorch): the 27B model (62 layers) scales by
                // the residual width per head, the others by the head size.
                Arch::Gemma3 if n_layers == 62 => 1.0 / ((dim / n_heads) as f32).sqrt(),
                _ => 1.0 / (head_dim as f32).sqrt(),
            },
            activation: match kind {
                Arch::Gemma3 => Activation::GeluTanh,
                _ => Activation::Silu,
            },
            arch,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            rope_scaling,
            long_rope,
            sliding_window,
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

    pub fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The window of layer `l`, if it has one.
    pub fn window(&self, l: usize) -> Option<usize> {
        let s = self.sliding_window.as_ref()?;
        s.layers[l].then_some(s.window)
    }

    /// Which of the model's RoPEs layer `l` uses: 0 the global one, 1 the sliding-window one.
    pub fn rope_index(&self, l: usize) -> usize {
        usize::from(self.window(l).is_some())
    }
}

/// Gemma 3's windows as llama.cpp reads them: `attention.sliding_window` positions (none when
/// absent or 0) on the layers `attention.sliding_window_pattern` marks (an array of bools, or n:
/// every n-th layer global, the others windowed; 6 when absent), RoPE base `rope.freq_base_swa`
/// (10000 when absent).
fn sliding_window(g: &Gguf, arch: &str, n_layers: usize) -> Result<Option<SlidingWindow>> {
    let k = |s: &str| format!("{arch}.{s}");
    let window = g
        .opt(&k("attention.sliding_window"), Gguf::get_usize)?
        .unwrap_or(0);
    if window == 0 {
        return Ok(None);
    }
    let key = k("attention.sliding_window_pattern");
    let layers = match g.get(&key) {
        None => (0..n_layers).map(|l| l % 6 < 5).collect(),
        Some(Value::Array(_, v)) => {
            let flags: Option<Vec<bool>> = v.iter().map(Value::as_bool).collect();
            match flags {
                Some(f) if f.len() == n_layers => f,
                _ => return Err(Error::Config(format!("`{key}` must hold {n_layers} bools"))),
            }
        }
        Some(_) => {
            let n = g.get_usize(&key)?;
            (0..n_layers).map(|l| n == 0 || l % n < n - 1).collect()
        }
    };
    Ok(Some(SlidingWindow {
        window,
        layers,
        rope_base: g
            .opt(&k("rope.freq_base_swa"), Gguf::get_f64)?
            .unwrap_or(10000.0) as f32,
    }))
}
