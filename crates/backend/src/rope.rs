//! Rotary position embedding as llama.cpp applies it: the angles of a position (computed in f64
//! from per-pair frequencies a model derives from its configuration), and the rotation of each
//! head's leading dimensions. Every device uses these angles (the CPU per step, CUDA as tables
//! made once), so both rotate by the same values.

/// Which dimensions RoPE pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" mode, used for `llama` GGUFs (whose Q/K
    /// weights the converter permuted).
    Normal,
    /// Halves (i, i + d/2): GPT-NeoX / Hugging Face `rotate_half` (Qwen, Gemma, Phi-3).
    Neox,
}

/// One RoPE: pairing, rotated dimensions and the angle per position of each pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub kind: RopeKind,
    /// Rotated dimensions per head (even, at most the head size).
    pub dim: usize,
    /// (dim / 2,) angle per position of each pair: base^(-2i/dim), divided by any frequency
    /// factor, times any position scale.
    pub inv_freq: Vec<f64>,
    /// Multiplies cos and sin (the attention factor of Phi-3's LongRoPE; 1 otherwise), as
    /// llama.cpp's `attn_factor`.
    pub mscale: f32,
}

impl Rope {
    /// Pairs rotated per head.
    pub fn half(&self) -> usize {
        self.dim / 2
    }

    /// (dim/2,) cos and sin for one position.
    pub fn angles(&self, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
        for (i, f) in self.inv_freq.iter().enumerate() {
            let theta = pos as f64 * f;
            cos[i] = theta.cos() as f32 * self.mscale;
            sin[i] = theta.sin() as f32 * self.mscale;
        }
    }

    /// Rotates every head (of `head_dim`) in `x` in place by one position's angles. Written as
    /// loops over whole pairs without index checks so that the compiler vectorizes them (each
    /// value is still `x0·cos - x1·sin` or `x0·sin + x1·cos`, rounded after each product and the
    /// sum, on every path); inlined, so a caller compiled for a wider instruction set gets its
    /// registers (the CPU calls it from its AVX2 and AVX-512 functions).
    #[inline(always)]
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.half();
        let (cos, sin) = (&cos[..half], &sin[..half]);
        for head in x.chunks_exact_mut(head_dim) {
            let head = &mut head[..2 * half];
            match self.kind {
                RopeKind::Normal => {
                    for ((p, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                        let (x0, x1) = (p[0], p[1]);
                        p[0] = x0 * c - x1 * s;
                        p[1] = x0 * s + x1 * c;
                    }
                }
                RopeKind::Neox => {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x0 * s + x1 * c;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_pair_the_right_dimensions() {
        let rope = |kind| Rope {
            kind,
            dim: 4,
            inv_freq: vec![1.0, 0.0],
            mscale: 1.0,
        };
        let (mut cos, mut sin) = ([0f32; 2], [0f32; 2]);
        rope(RopeKind::Normal).angles(1, &mut cos, &mut sin);
        // Pair 0 turns by 1 radian, pair 1 not at all; dimension 4 of the head is not rotated.
        let mut x = [1.0f32, 0.0, 1.0, 0.0, 9.0];
        rope(RopeKind::Normal).apply(&mut x, 5, &cos, &sin);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(&x[2..], &[1.0, 0.0, 9.0]);
        let mut x = [1.0f32, 1.0, 0.0, 0.0];
        rope(RopeKind::Neox).apply(&mut x, 4, &cos, &sin);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!((x[1], x[3]), (1.0, 0.0));
        let scaled = Rope {
            mscale: 2.0,
            ..rope(RopeKind::Neox)
        };
        let (mut c2, mut s2) = ([0f32; 2], [0f32; 2]);
        scaled.angles(1, &mut c2, &mut s2);
        assert_eq!((c2[0], s2[0]), (2.0 * cos[0], 2.0 * sin[0]));
    }
}
