//! The Llama architecture (Llama 2/3, SmolLM, TinyLlama, Mistral; Qwen2 with its Q/K/V biases and
//! NeoX RoPE) as one plain forward pass.

use rayon::prelude::*;
use std::borrow::Cow;

use tokenfab_backend::cpu::attention::{self, AttnInput, AttnShape, RowKv};
use tokenfab_backend::cpu::{self, Matrix};
use tokenfab_loader::Gguf;

use crate::batch::ForwardBatch;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::kv::{KvCache, KvDtype};
use crate::rope::Rope;
use crate::scratch::{Scratch, Sizes};
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

    /// A KV pool shaped for this model, stored as `dtype`.
    pub fn new_kv_cache(
        &self,
        dtype: KvDtype,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<KvCache> {
        let c = &self.cfg;
        KvCache::new(
            c.n_layers,
            c.kv_dim(),
            c.head_dim,
            dtype,
            block_size,
            num_blocks,
        )
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
    /// `batch.logits_rows`: (logits_rows.len(), vocab). Allocates its buffers on every call;
    /// executors use [`Llama::forward_into`] with a [`Scratch`] they keep.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Vec<f32>> {
        let mut s = Scratch::default();
        Ok(self.forward_into(batch, kv, &mut s)?.to_vec())
    }

    /// [`Llama::forward`] over the buffers of `s`, returning the logits held in `s`. Once `s` has
    /// seen a batch of this size, the pass allocates nothing.
    pub fn forward_into<'s>(
        &self,
        batch: &ForwardBatch,
        kv: &mut KvCache,
        s: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        let c = &self.cfg;
        let (dim, q_dim, kv_dim, ffn, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        if kv.kv_dim != kv_dim || kv.k.len() != c.n_layers {
            return Err(Error::Batch("KV cache was made for another model".into()));
        }
        batch.plan_into(kv.block_size, kv.num_blocks, &mut s.seq_of, &mut s.slots)?;
        if let Some(&tok) = batch.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Batch(format!(
                "token {tok} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let (n, r) = (batch.tokens.len(), batch.logits_rows.len());
        let qkv_w = q_dim + 2 * kv_dim;
        let half = self.rope.half();
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            block_size: kv.block_size,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        s.fit(&Sizes {
            n,
            r,
            dim,
            qkv: qkv_w,
            q_dim,
            ffn,
            half_rope: half,
            vocab: c.vocab_size,
            attn: attention::scratch_len(&shape),
        });
        // Row t of each buffer belongs to batch.tokens[t] (shapes in `Scratch`).
        let x = &mut s.x[..n * dim];
        let xn = &mut s.xn[..n * dim];
        let qkv = &mut s.qkv[..n * qkv_w];
        let att = &mut s.att[..n * q_dim];
        let tmp = &mut s.tmp[..n * dim];
        let gu = &mut s.gu[..n * 2 * ffn];
        let h = &mut s.h[..n * ffn];
        let (cos, sin) = (&mut s.cos[..n * half], &mut s.sin[..n * half]);
        let attn_scratch = &mut s.attn[..];
        let (seq_of, slots) = (&s.seq_of, &s.slots);

        for (t, &tok) in batch.tokens.iter().enumerate() {
            self.tok_embd
                .row_f32(tok as usize, &mut x[t * dim..(t + 1) * dim]);
            let r = t * half..(t + 1) * half;
            self.rope
                .angles(batch.positions[t], &mut cos[r.clone()], &mut sin[r]);
        }

        // The hot loop: every layer over all rows of all sequences at once.
        for (l, layer) in self.layers.iter().enumerate() {
            if l == 0 {
                cpu::rms_norm(x, &layer.attn_norm, c.rms_eps, xn);
            } else {
                // The previous layer's FFN output joins the residual here.
                cpu::add_rms_norm(x, tmp, &layer.attn_norm, c.rms_eps, xn);
            }
            layer.wqkv.matmul(xn, n, qkv);
            // Per row, one pass: bias, RoPE on Q and K, K and V into the pool.
            for (t, row) in qkv.chunks_exact_mut(qkv_w).enumerate() {
                if let Some(b) = &layer.bqkv {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
                let hr = t * half..(t + 1) * half;
                self.rope
                    .apply(&mut row[..q_dim + kv_dim], hd, &cos[hr.clone()], &sin[hr]);
                kv.k[l].write(slots[t], &row[q_dim..q_dim + kv_dim]);
                kv.v[l].write(slots[t], &row[q_dim + kv_dim..]);
            }
            let inp = AttnInput {
                shape,
                q: qkv,
                q_stride: qkv_w,
                rows: |t: usize| RowKv {
                    block_table: batch.seqs[seq_of[t]].block_table,
                    ctx: batch.positions[t] as usize + 1,
                },
                k: &kv.k[l],
                v: &kv.v[l],
            };
            attention::paged_attention(&inp, att, attn_scratch);
            layer.wo.matmul(att, n, tmp);
            cpu::add_rms_norm(x, tmp, &layer.ffn_norm, c.rms_eps, xn);
            layer.w_gate_up.matmul(xn, n, gu);
            cpu::silu_mul_rows(gu, h, ffn);
            layer.w_down.matmul(h, n, tmp);
        }

        // The last FFN output joins the residual of the logits rows only.
        let resid = &mut s.resid[..r * dim];
        let last = &mut s.last[..r * dim];
        for (i, &row) in batch.logits_rows.iter().enumerate() {
            let (xr, tr) = (
                &x[row * dim..(row + 1) * dim],
                &tmp[row * dim..(row + 1) * dim],
            );
            resid[i * dim..(i + 1) * dim]
                .iter_mut()
                .zip(xr.iter().zip(tr))
                .for_each(|(o, (a, b))| *o = a + b);
        }
        cpu::rms_norm(resid, &self.output_norm, c.rms_eps, last);
        let logits = &mut s.logits[..r * c.vocab_size];
        self.output
            .as_ref()
            .unwrap_or(&self.tok_embd)
            .matmul(last, r, logits);
        Ok(logits)
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
