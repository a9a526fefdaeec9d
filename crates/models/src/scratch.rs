//! Every buffer one CPU forward pass needs, owned by the executor and reused across steps.
//! Buffers grow when a bigger batch comes and never shrink, so a step whose shape was seen before
//! allocates nothing.

/// Activations of one forward pass over `n` rows, `r` of them producing logits. Only the first
/// `n * width` values of each buffer belong to the current pass.
#[derive(Default)]
pub struct Scratch {
    /// (n, dim) residual stream
    pub(crate) x: Vec<f32>,
    /// (n, dim) normalized residual
    pub(crate) xn: Vec<f32>,
    /// (n, q_dim + 2 kv_dim) Q | K | V
    pub(crate) qkv: Vec<f32>,
    /// (n, q_dim) attention output
    pub(crate) att: Vec<f32>,
    /// (n, dim) output of the attention or FFN projection, added to `x` by the next norm
    pub(crate) tmp: Vec<f32>,
    /// (n, 2 ffn) gate | up
    pub(crate) gu: Vec<f32>,
    /// (n, ffn) silu(gate) * up
    pub(crate) h: Vec<f32>,
    /// (n, rope_dim / 2) cos and sin per row
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// Per pool thread: online-softmax state and widened K/V rows (`attention::scratch_len`)
    pub(crate) attn: Vec<f32>,
    /// (r, dim) residual of the logits rows, then (r, dim) its final norm
    pub(crate) resid: Vec<f32>,
    pub(crate) last: Vec<f32>,
    /// (r, vocab)
    pub(crate) logits: Vec<f32>,
    /// (n,) each row's sequence index and KV slot
    pub(crate) seq_of: Vec<usize>,
    pub(crate) slots: Vec<usize>,
}

/// Lengths of every buffer for one pass.
pub(crate) struct Sizes {
    pub n: usize,
    pub r: usize,
    pub dim: usize,
    pub qkv: usize,
    pub q_dim: usize,
    pub ffn: usize,
    pub half_rope: usize,
    pub vocab: usize,
    pub attn: usize,
}

/// Makes `v` at least `len` long (growing only).
fn fit(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl Scratch {
    /// Grows every buffer to the pass's sizes.
    pub(crate) fn fit(&mut self, s: &Sizes) {
        let (n, r) = (s.n, s.r);
        fit(&mut self.x, n * s.dim);
        fit(&mut self.xn, n * s.dim);
        fit(&mut self.qkv, n * s.qkv);
        fit(&mut self.att, n * s.q_dim);
        fit(&mut self.tmp, n * s.dim);
        fit(&mut self.gu, n * 2 * s.ffn);
        fit(&mut self.h, n * s.ffn);
        fit(&mut self.cos, n * s.half_rope);
        fit(&mut self.sin, n * s.half_rope);
        fit(&mut self.attn, s.attn);
        fit(&mut self.resid, r * s.dim);
        fit(&mut self.last, r * s.dim);
        fit(&mut self.logits, r * s.vocab);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let f = [
            &self.x,
            &self.xn,
            &self.qkv,
            &self.att,
            &self.tmp,
            &self.gu,
            &self.h,
            &self.cos,
            &self.sin,
            &self.attn,
            &self.resid,
            &self.last,
            &self.logits,
        ];
        f.iter().map(|v| v.capacity() * 4).sum::<usize>()
            + (self.seq_of.capacity() + self.slots.capacity()) * std::mem::size_of::<usize>()
    }
}
