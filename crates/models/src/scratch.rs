//! Every buffer one CPU forward pass needs, owned by the executor and reused across steps.
//! Buffers grow when a bigger batch comes and never shrink, so a step whose shape was seen before
//! allocates nothing.

use tokenfab_backend::cpu::ops::{fit, CpuScratch};

use crate::config::ModelConfig;
use crate::forward::Acts;

/// Activations of one forward pass over `n` rows, `r` of them producing logits (shapes in
/// [`Acts`]); only the first rows of each buffer belong to the current pass.
#[derive(Default)]
pub struct Scratch {
    pub(crate) acts: Acts<Vec<f32>, Vec<f32>>,
    /// RoPE angles, attention state, the logits rows' residual.
    pub(crate) cpu: CpuScratch,
    /// (n,) each row's sequence index and KV slot
    pub(crate) seq_of: Vec<usize>,
    pub(crate) slots: Vec<usize>,
}

impl Scratch {
    /// Grows every activation buffer to a pass of `n` rows and `r` logits rows.
    pub(crate) fn fit(&mut self, c: &ModelConfig, n: usize, r: usize) {
        let a = &mut self.acts;
        fit(&mut a.x, n * c.dim);
        fit(&mut a.xn, n * c.dim);
        fit(&mut a.qkv, n * (c.q_dim() + 2 * c.kv_dim()));
        fit(&mut a.att, n * c.q_dim());
        fit(&mut a.tmp, n * c.dim);
        fit(&mut a.gu, n * 2 * c.ffn_dim);
        fit(&mut a.h, n * c.ffn_dim);
        fit(&mut a.logits, r * c.vocab_size);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let a = &self.acts;
        let f = [&a.x, &a.xn, &a.qkv, &a.att, &a.tmp, &a.gu, &a.h, &a.logits];
        f.iter().map(|v| v.capacity() * 4).sum::<usize>()
            + self.cpu.bytes()
            + (self.seq_of.capacity() + self.slots.capacity()) * std::mem::size_of::<usize>()
    }
}
