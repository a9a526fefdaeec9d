//! The Llama architecture (Llama 2/3, SmolLM, TinyLlama, Mistral; Qwen2 with its Q/K/V biases and
//! NeoX RoPE) as one plain forward pass.

use rayon::prelude::*;
use tokenfab_backend::cpu::{self, Matrix};
use tokenfab_loader::{quant, Gguf};

use crate::batch::ForwardBatch;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::rope::Rope;

struct Layer {
    /// (dim,)
    attn_norm: Vec<f32>,
    /// (q_dim + 2 * kv_dim, dim): Q, K and V projections stacked, one product for all three.
    wqkv: Matrix,
    /// (q_dim + 2 * kv_dim,) Q/K/V biases (qwen2), stacked like `wqkv`.
    bqkv: Option<Vec<f32>>,
    /// (dim, q_dim)
    wo: Matrix,
    /// (dim,)
    ffn_norm: Vec<f32>,
    /// (2 * ffn_dim, dim): gate rows then up rows.
    w_gate_up: Matrix,
    /// (dim, ffn_dim)
    w_down: Matrix,
}

/// A loaded Llama-family model with f32 weights.
pub struct Llama {
    pub cfg: LlamaConfig,
    /// (vocab, dim)
    tok_embd: Matrix,
    /// (vocab, dim); `None` when tied to `tok_embd`.
    output: Option<Matrix>,
    /// (dim,)
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
}

/// Reads a 2-D weight of `rows` outputs by `cols` inputs (ggml dims `[cols, rows]`) as f32.
fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let data = tensor(g, name, &[cols as u64, rows as u64])?;
    Ok(Matrix::new(rows, cols, data))
}

fn tensor(g: &Gguf, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    let t = g
        .tensor(name)
        .ok_or_else(|| tokenfab_loader::Error::MissingTensor(name.into()))?;
    let mut found = t.dims.clone();
    while found.len() > dims.len() && found.last() == Some(&1) {
        found.pop();
    }
    if found != dims {
        return Err(Error::Shape {
            name: name.into(),
            expected: dims.to_vec(),
            found: t.dims.clone(),
        });
    }
    let mut out = vec![0f32; t.n_elements() as usize];
    quant::dequantize(t.ty, g.tensor_bytes(t), &mut out).map_err(|e| match e {
        tokenfab_loader::Error::UnsupportedType { ty, .. } => {
            tokenfab_loader::Error::UnsupportedType {
                name: name.into(),
                ty,
            }
        }
        e => e,
    })?;
    Ok(out)
}

fn stack(parts: Vec<Matrix>) -> Matrix {
    let cols = parts[0].cols;
    let rows = parts.iter().map(|m| m.rows).sum();
    let data = parts.into_iter().flat_map(|m| m.data).collect();
    Matrix::new(rows, cols, data)
}

impl Llama {
    /// Loads the model from a GGUF file, dequantizing every weight to f32.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let (dim, q_dim, kv_dim, ffn) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let tok_embd = matrix(g, "token_embd.weight", cfg.vocab_size, dim)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Some(matrix(g, "output.weight", cfg.vocab_size, dim)?),
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
                    wqkv: stack(vec![
                        matrix(g, &n("attn_q.weight"), q_dim, dim)?,
                        matrix(g, &n("attn_k.weight"), kv_dim, dim)?,
                        matrix(g, &n("attn_v.weight"), kv_dim, dim)?,
                    ]),
                    bqkv,
                    wo: matrix(g, &n("attn_output.weight"), dim, q_dim)?,
                    ffn_norm: tensor(g, &n("ffn_norm.weight"), &[dim as u64])?,
                    w_gate_up: stack(vec![
                        matrix(g, &n("ffn_gate.weight"), ffn, dim)?,
                        matrix(g, &n("ffn_up.weight"), ffn, dim)?,
                    ]),
                    w_down: matrix(g, &n("ffn_down.weight"), dim, ffn)?,
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
        let m = |m: &Matrix| m.data.len();
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| m(&l.wqkv) + m(&l.wo) + m(&l.w_gate_up) + m(&l.w_down) + 2 * self.cfg.dim)
            .sum();
        4 * (per_layer + m(&self.tok_embd) + self.output.as_ref().map_or(0, m))
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
            x[t * dim..(t + 1) * dim].copy_from_slice(self.tok_embd.row(tok as usize));
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
            cpu::matmul(&xn, n, &layer.wqkv, &mut qkv);
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
            cpu::matmul(&att, n, &layer.wo, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);

            cpu::rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            cpu::matmul(&xn, n, &layer.w_gate_up, &mut gu);
            for (hr, g) in h.chunks_exact_mut(ffn).zip(gu.chunks_exact_mut(2 * ffn)) {
                let (gate, up) = g.split_at_mut(ffn);
                cpu::silu_mul(gate, up);
                hr.copy_from_slice(gate);
            }
            cpu::matmul(&h, n, &layer.w_down, &mut tmp);
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
        cpu::matmul(
            &last,
            r,
            self.output.as_ref().unwrap_or(&self.tok_embd),
            &mut logits,
        );
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
}
