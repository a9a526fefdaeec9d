//! A model's RoPEs from its configuration and frequency tensors, as llama.cpp derives them: one for
//! the global layers, and for Gemma 3 a second one for the sliding-window layers.

use tokenfab_backend::rope::Rope;
use tokenfab_loader::Gguf;

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use crate::weight::Tensors;

/// One RoPE of `dim` rotated dimensions: pair i turns by base^(-2i/dim) / factor[i] * scale per
/// position.
fn rope(cfg: &ModelConfig, base: f32, scale: f64, factors: Option<&[f32]>, mscale: f32) -> Rope {
    let inv_freq = (0..cfg.rope_dim / 2)
        .map(|i| {
            let ff = factors.map_or(1.0, |f| f[i] as f64);
            (base as f64).powf(-2.0 * i as f64 / cfg.rope_dim as f64) / ff * scale
        })
        .collect();
    Rope {
        kind: cfg.rope_kind,
        dim: cfg.rope_dim,
        inv_freq,
        mscale,
    }
}

/// The model's RoPEs, indexed by [`ModelConfig::rope_index`]: the global one first (the position
/// scaling, Llama 3.1's `rope_freqs` or Phi-3's LongRoPE factors and attention factor), then
/// Gemma 3's sliding-window one (its own base, unscaled).
pub(crate) fn ropes(cfg: &ModelConfig, g: &Gguf, t: &Tensors) -> Result<Vec<Rope>> {
    let half = cfg.rope_dim / 2;
    let scale = match cfg.rope_scaling {
        RopeScaling::None => 1.0,
        RopeScaling::Linear { factor } => 1.0 / factor as f64,
    };
    let mut factors = t.vector_opt(g, "rope_freqs.weight", half)?;
    let mut mscale = 1.0;
    if let Some(lr) = &cfg.long_rope {
        // Both tables are in the file; which one applies depends on the context served, as in
        // llama.cpp (whose default context is the model's).
        let long = t.vector_opt(g, "rope_factors_long.weight", half)?;
        let short = t.vector_opt(g, "rope_factors_short.weight", half)?;
        let pick = if cfg.context_len > lr.original_context {
            long
        } else {
            short
        };
        if pick.is_some() {
            factors = pick;
        }
        mscale = lr.attn_factor;
    }
    let mut out = vec![rope(cfg, cfg.rope_base, scale, factors.as_deref(), mscale)];
    if let Some(sw) = &cfg.sliding_window {
        out.push(rope(cfg, sw.rope_base, 1.0, None, 1.0));
    }
    Ok(out)
}
