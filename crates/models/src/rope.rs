//! Rotary position embedding, as llama.cpp applies it.

use crate::config::{LlamaConfig, RopeKind, RopeScaling};

pub(crate) struct Rope {
    kind: RopeKind,
    /// Rotated dimensions per head.
    dim: usize,
    /// (dim / 2,) angle per position of each pair: base^(-2i/dim) / freq_factor[i] * scale.
    inv_freq: Vec<f64>,
}

impl Rope {
    /// `freq_factors`: Llama 3.1's per-pair divisors (`rope_freqs.weight`), when the file has them.
    pub fn new(cfg: &LlamaConfig, freq_factors: Option<&[f32]>) -> Self {
        let half = cfg.rope_dim / 2;
        let scale = match cfg.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor as f64,
        };
        let inv_freq = (0..half)
            .map(|i| {
                let ff = freq_factors.map_or(1.0, |f| f[i] as f64);
                (cfg.rope_base as f64).powf(-2.0 * i as f64 / cfg.rope_dim as f64) / ff * scale
            })
            .collect();
        Self {
            kind: cfg.rope_kind,
            dim: cfg.rope_dim,
            inv_freq,
        }
    }

    /// (dim/2,) cos and sin for one position.
    pub fn angles(&self, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
        for (i, f) in self.inv_freq.iter().enumerate() {
            let theta = pos as f64 * f;
            cos[i] = theta.cos() as f32;
            sin[i] = theta.sin() as f32;
        }
    }

    /// Rotates every head (of `head_dim`) in `x` in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.dim / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match self.kind {
                    RopeKind::Normal => (2 * i, 2 * i + 1),
                    RopeKind::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    pub fn half(&self) -> usize {
        self.dim / 2
    }
}
