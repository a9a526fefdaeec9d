//! The Llama architecture (Llama 2/3, SmolLM, TinyLlama, Mistral; Qwen2 with its Q/K/V biases and
//! NeoX RoPE) as one plain forward pass.

use rayon::prelude::*;
use std::borrow::Cow;

use tokenfab_backend::cpu::{self, Matrix};
use tokenfab_loader::Gguf;

use crate::batch::ForwardBatch;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::rope::Rope;
use crate::weight::{dequant, raw, Weight};

struct Layer {
    /// (dim,)
    attn_norm: Vec<f32>,
    /// (q_dim + 2 * kv_dim, dim): Q, K and V projections stacked, one product for all three.
    wqkv: Weight,
    /// (q_dim + 2 * kv_dim,) Q/K/V biases (qwen2), stacked like `wqkv`.
    bqkv: Option<Vec<f32>>,
    /// (dim, q_dim)
    wo: Weight,
    /// (dim,)
    ffn_norm: Vec<f32>,
    /// (2 * ffn_dim, dim): gate rows then up rows.
    w_gate_up: Weight,
    /// (dim, ffn_dim)
    w_down: Weight,
}

/// One layer's weights, borrowed (shapes as in `Layer`).
pub(crate) struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub wqkv: Cow<'a, Matrix>,
    pub bqkv: Option<&'a [f32]>,
    pub wo: Cow<'a, Matrix>,
    pub ffn_norm: &'a [f32],
    pub w_gate_up: Cow<'a, Matrix>,
    pub w_down: Cow<'a, Matrix>,
}

/// A loaded Llama-family model: matrices in their GGUF block format where a quantized kernel reads
/// it (activations are quantized to 8 bits per block, as llama.cpp does), else f32.
pub struct Llama {
    pub cfg: LlamaConfig,
    /// (vocab, dim)
    tok_embd: Weight,
    /// (vocab, dim); `None` when tied to `tok_embd`.
    output: Option<Weight>,
    /// (dim,)
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
}

/// Reads a 1-D tensor (norms, biases) as f32.
fn tensor(g: &Gguf, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    let (ty, bytes) = raw(g, name, dims)?;
    dequant(name, ty, bytes, dims.iter().product::<u64>() as usize)
}

impl Llama {
    /// Loads the model from a GGUF file, keeping quantized matrices quantized.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_gguf_with(g, false)
    }

    /// Loads the model; with `f32_weights` every matrix is dequantized to f32 (4x the memory; a
    /// reference for the quantized kernels).
    pub fn from_gguf_with(g: &Gguf, f32_weights: bool) -> Result<Self> {
        let matrix =
            |name: &str, rows: usize, cols: usize| Weight::load(g, name, rows, cols, f32_weights);
        let cfg = LlamaConfig::from_gguf(g)?;
        let (dim, q_dim, kv_dim, ffn) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let tok_embd = matrix("token_embd.weight", cfg.vocab_size, dim)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Some(matrix("output.weight", cfg.vocab_size, dim)?),
            None => None,
        };
        let output_norm = tensor(g, "output_norm.weight", &[dim as u64])?;
        let freq_factors = match g.tensor("rope_freqs.weight") {
            Some(_) => Some(tensor(g, "rope_freqs.weight", &[cfg.rope_dim as u64 / 2])?),
            None => None,
        };
        let layers = (0..cfg.n_layers)
            .into_par_iter()
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}");
                let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                    match g.tensor(&n(s)) {
                        Some(_) => tensor(g, &n(s), &[len as u64]).map(Some),
                        None => Ok(None),
                    }
                };
                let biases = [
                    bias("attn_q.bias", q_dim)?,
                    bias("attn_k.bias", kv_dim)?,
                    bias("attn_v.bias", kv_dim)?,
                ];
                let bqkv = if biases.iter().any(Option::is_some) {
                    let [bq, bk, bv] = biases;
                    let mut b = bq.unwrap_or_else(|| vec![0.0; q_dim]);
                    b.extend(bk.unwrap_or_else(|| vec![0.0; kv_dim]));
                    b.extend(bv.unwrap_or_else(|| vec![0.0; kv_dim]));
                    Some(b)
                } else {
                    None
                };
                Ok(Layer {
                    attn_norm: tensor(g, &n("attn_norm.weight"), &[dim as u64])?,
                    wqkv: Weight::stack(vec![
                        matrix(&n("attn_q.weight"), q_dim, dim)?,
                        matrix(&n("attn_k.weight"), kv_dim, dim)?,
                        matrix(&n("attn_v.weight"), kv_dim, dim)?,
                    ]),
                    bqkv,
                    wo: matrix(&n("attn_output.weight"), dim, q_dim)?,
                    ffn_norm: tensor(g, &n("ffn_norm.weight"), &[dim as u64])?,
                    w_gate_up: Weight::stack(vec![
                        matrix(&n("ffn_gate.weight"), ffn, dim)?,
                        matrix(&n("ffn_up.weight"), ffn, dim)?,
                    ]),
                    w_down: matrix(&n("ffn_down.weight"), dim, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = Rope::new(&cfg, freq_factors.as_deref());
        Ok(Self {
            cfg,
            tok_embd,
            output,
            output_norm,
            layers,
            rope,
        })
    }

    /// A KV pool shaped for this model.
    pub fn new_kv_cache(&self, block_size: usize, num_blocks: usize) -> KvCache {
        KvCache::new(self.cfg.n_layers, self.cfg.kv_dim(), block_size, num_blocks)
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wqkv.bytes()
                    + l.wo.bytes()
                    + l.w_gate_up.bytes()
                    + l.w_down.bytes()
                    + 8 * self.cfg.dim
            })
            .sum();
        per_layer + self.tok_embd.bytes() + self.output.as_ref().map_or(0, Weight::bytes)
    }

    /// Runs the batch, writing each token's K/V into `kv`, and returns the logits of
    /// `batch.logits_rows`: (logits_rows.len(), vocab).
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (dim, q_dim, kv_dim, ffn, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        if kv.kv_dim != kv_dim || kv.k.len() != c.n_layers {
            return Err(Error::Batch("KV cache was made for another model".into()));
        }
        let (seq_of, slots) = batch.plan(kv.block_size, kv.num_blocks)?;
        let n = batch.tokens.len();
        let qkv_w = q_dim + 2 * kv_dim;

        // Activations, row t belonging to batch.tokens[t].
        let mut x = vec![0f32; n * dim]; // (n, dim) residual stream
        let mut xn = vec![0f32; n * dim]; // (n, dim) normalized
        let mut qkv = vec![0f32; n * qkv_w]; // (n, q_dim + 2 kv_dim)
        let mut att = vec![0f32; n * q_dim]; // (n, q_dim) attention output
        let mut tmp = vec![0f32; n * dim]; // (n, dim) projection output
        let mut gu = vec![0f32; n * 2 * ffn]; // (n, 2 ffn) gate | up
        let mut h = vec![0f32; n * ffn]; // (n, ffn)

        for (t, &tok) in batch.tokens.iter().enumerate() {
            if tok as usize >= c.vocab_size {
                return Err(Error::Batch(format!(
                    "token {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            self.tok_embd
                .row_f32(tok as usize, &mut x[t * dim..(t + 1) * dim]);
        }
        // (n, rope_dim / 2) cos and sin per row.
        let half = self.rope.half();
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for t in 0..n {
            let r = t * half..(t + 1) * half;
            self.rope
                .angles(batch.positions[t], &mut cos[r.clone()], &mut sin[r]);
        }

        // The hot loop: every layer over all rows of all sequences at once.
        for (l, layer) in self.layers.iter().enumerate() {
            cpu::rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut xn);
            layer.wqkv.matmul(&xn, n, &mut qkv);
            for (t, row) in qkv.chunks_exact_mut(qkv_w).enumerate() {
                if let Some(b) = &layer.bqkv {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
                let (cs, sn) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                self.rope.apply(&mut row[..q_dim + kv_dim], hd, cs, sn);
                let s = slots[t] * kv_dim;
                kv.k[l][s..s + kv_dim].copy_from_slice(&row[q_dim..q_dim + kv_dim]);
                kv.v[l][s..s + kv_dim].copy_from_slice(&row[q_dim + kv_dim..]);
            }
            self.attention(
                batch,
                &seq_of,
                &qkv,
                &kv.k[l],
                &kv.v[l],
                kv.block_size,
                &mut att,
            );
            layer.wo.matmul(&att, n, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);

            cpu::rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            layer.w_gate_up.matmul(&xn, n, &mut gu);
            for (hr, g) in h.chunks_exact_mut(ffn).zip(gu.chunks_exact_mut(2 * ffn)) {
                let (gate, up) = g.split_at_mut(ffn);
                cpu::silu_mul(gate, up);
                hr.copy_from_slice(gate);
            }
            layer.w_down.matmul(&h, n, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        }

        let r = batch.logits_rows.len();
        let mut last = vec![0f32; r * dim];
        for (i, &row) in batch.logits_rows.iter().enumerate() {
            let src = &x[row * dim..(row + 1) * dim];
            cpu::rms_norm(
                src,
                &self.output_norm,
                c.rms_eps,
                &mut last[i * dim..(i + 1) * dim],
            );
        }
        let mut logits = vec![0f32; r * c.vocab_size];
        self.output
            .as_ref()
            .unwrap_or(&self.tok_embd)
            .matmul(&last, r, &mut logits);
        Ok(logits)
    }

    /// Causal grouped-query attention of every row over its own sequence's KV, split over
    /// (row, head) pairs.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        batch: &ForwardBatch,
        seq_of: &[usize],
        qkv: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        block_size: usize,
        att: &mut [f32],
    ) {
        let c = &self.cfg;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
        let qkv_w = q_dim + 2 * kv_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        att.par_chunks_mut(hd).enumerate().for_each_init(
            Vec::new,
            |scores: &mut Vec<f32>, (i, out)| {
                let (t, head) = (i / c.n_heads, i % c.n_heads);
                let kh = head / group;
                let q = &qkv[t * qkv_w + head * hd..t * qkv_w + (head + 1) * hd];
                let table = batch.seqs[seq_of[t]].block_table;
                let ctx = batch.positions[t] as usize + 1;
                let slot = |p: usize| {
                    (table[p / block_size] as usize * block_size + p % block_size) * kv_dim
                        + kh * hd
                };
                scores.clear();
                scores
                    .extend((0..ctx).map(|p| cpu::dot(q, &k_cache[slot(p)..slot(p) + hd]) * scale));
                cpu::softmax(scores);
                out.fill(0.0);
                for (p, &w) in scores.iter().enumerate() {
                    cpu::axpy(w, &v_cache[slot(p)..slot(p) + hd], out);
                }
            },
        );
    }

    // Read-only views of the weights for other executors (cuda_llama.rs uploads them).

    /// (vocab, dim) embedding, and the (vocab, dim) output matrix (the embedding when tied).
    pub(crate) fn embeddings(&self) -> (Cow<'_, Matrix>, Cow<'_, Matrix>) {
        (
            self.tok_embd.f32(),
            self.output.as_ref().unwrap_or(&self.tok_embd).f32(),
        )
    }

    /// Whether the output matrix is a separate tensor.
    pub(crate) fn has_output(&self) -> bool {
        self.output.is_some()
    }

    /// (dim,) final norm.
    pub(crate) fn output_norm(&self) -> &[f32] {
        &self.output_norm
    }

    pub(crate) fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Layer `l`'s weights, shaped as in [`Layer`].
    pub(crate) fn layer_weights(&self, l: usize) -> LayerWeights<'_> {
        let x = &self.layers[l];
        LayerWeights {
            attn_norm: &x.attn_norm,
            wqkv: x.wqkv.f32(),
            bqkv: x.bqkv.as_deref(),
            wo: x.wo.f32(),
            ffn_norm: &x.ffn_norm,
            w_gate_up: x.w_gate_up.f32(),
            w_down: x.w_down.f32(),
        }
    }
}
