//! A model's weights, and reading them from a GGUF: every tensor checked against the shape the
//! architecture expects, matrices kept in their block format where a CPU kernel reads it, and a
//! record of which tensors were read, so that a tensor the architecture does not use (a bias it
//! has no step for, say) is an error naming it instead of being silently ignored.

use std::collections::HashSet;
use std::sync::Mutex;

use rayon::prelude::*;
use tokenfab_backend::cpu::Matrix;
pub use tokenfab_backend::cpu::Weight;
use tokenfab_backend::QMatrix;
use tokenfab_backend::QType;
use tokenfab_loader::{quant, GgmlType, Gguf};

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};

/// One layer's weights on some device: `M` a matrix (rows, cols), `V` a vector.
#[derive(Clone, Debug)]
pub struct LayerWeights<M, V> {
    /// (dim,)
    pub attn_norm: V,
    /// (q_dim + 2 kv_dim, dim): the Q, K and V projections stacked, one product for all three.
    pub wqkv: M,
    /// (q_dim + 2 kv_dim,) Q | K | V biases (Qwen2).
    pub bqkv: Option<V>,
    /// (head_dim,) RMSNorm of each Q head and of each K head (Qwen3, Gemma 3).
    pub q_norm: Option<V>,
    pub k_norm: Option<V>,
    /// (dim, q_dim)
    pub wo: M,
    /// (dim,) norm of the attention output before it joins the residual (Gemma 3).
    pub post_attn_norm: Option<V>,
    /// (dim,)
    pub ffn_norm: V,
    /// (2 ffn, dim): gate rows then up rows.
    pub w_gate_up: M,
    /// (dim, ffn)
    pub w_down: M,
    /// (dim,) norm of the FFN output before it joins the residual (Gemma 3).
    pub post_ffn_norm: Option<V>,
}

/// Which matrix of [`Weights`] a conversion is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixRole {
    /// (vocab, dim), looked up row by row (and the output matrix when tied).
    Embedding,
    /// (vocab, dim), the logits product.
    Output,
    /// A product of a layer: QKV, output projection, gate/up, down.
    Layer,
}

/// A model's weights on some device.
#[derive(Clone, Debug)]
pub struct Weights<M, V> {
    /// (vocab, dim)
    pub tok_embd: M,
    /// (vocab, dim); `None` when tied to `tok_embd`.
    pub output: Option<M>,
    /// (dim,)
    pub output_norm: V,
    pub layers: Vec<LayerWeights<M, V>>,
}

impl<M, V> Weights<M, V> {
    /// The output matrix (the embedding when tied).
    pub fn output(&self) -> &M {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }

    /// The same weights with every matrix and vector converted (uploaded to a device, say).
    pub fn try_map<M2, V2, E>(
        &self,
        m: &mut impl FnMut(&M) -> Result<M2, E>,
        v: &mut impl FnMut(&V) -> Result<V2, E>,
    ) -> Result<Weights<M2, V2>, E> {
        self.try_map_roles(&mut |_, x| m(x), v)
    }

    /// [`Self::try_map`], telling the matrix function which matrix it converts.
    pub fn try_map_roles<M2, V2, E>(
        &self,
        m: &mut impl FnMut(MatrixRole, &M) -> Result<M2, E>,
        v: &mut impl FnMut(&V) -> Result<V2, E>,
    ) -> Result<Weights<M2, V2>, E> {
        fn ov<V, V2, E>(
            x: &Option<V>,
            v: &mut impl FnMut(&V) -> Result<V2, E>,
        ) -> Result<Option<V2>, E> {
            x.as_ref().map(v).transpose()
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(LayerWeights {
                attn_norm: v(&l.attn_norm)?,
                wqkv: m(MatrixRole::Layer, &l.wqkv)?,
                bqkv: ov(&l.bqkv, v)?,
                q_norm: ov(&l.q_norm, v)?,
                k_norm: ov(&l.k_norm, v)?,
                wo: m(MatrixRole::Layer, &l.wo)?,
                post_attn_norm: ov(&l.post_attn_norm, v)?,
                ffn_norm: v(&l.ffn_norm)?,
                w_gate_up: m(MatrixRole::Layer, &l.w_gate_up)?,
                w_down: m(MatrixRole::Layer, &l.w_down)?,
                post_ffn_norm: ov(&l.post_ffn_norm, v)?,
            });
        }
        Ok(Weights {
            tok_embd: m(MatrixRole::Embedding, &self.tok_embd)?,
            output: self
                .output
                .as_ref()
                .map(|o| m(MatrixRole::Output, o))
                .transpose()?,
            output_norm: v(&self.output_norm)?,
            layers,
        })
    }
}

/// Dequantizes a whole tensor to f32.
fn dequant(name: &str, ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    quant::dequantize(ty, bytes, &mut out).map_err(|e| match e {
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

/// Reads tensors of one file and remembers which.
pub struct Tensors {
    used: Mutex<HashSet<String>>,
    /// Dequantize every matrix to f32 (a reference for the quantized kernels).
    f32_only: bool,
}

impl Tensors {
    pub fn new(f32_only: bool) -> Self {
        Self {
            used: Mutex::default(),
            f32_only,
        }
    }

    /// The raw tensor `name` of ggml dims `dims` (trailing 1s allowed), checked.
    fn raw<'g>(&self, g: &'g Gguf, name: &str, dims: &[u64]) -> Result<(GgmlType, &'g [u8])> {
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
        self.used
            .lock()
            .expect("no panic while holding the lock")
            .insert(name.into());
        Ok((t.ty, g.tensor_bytes(t)))
    }

    /// A (len,) tensor as f32.
    pub fn vector(&self, g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
        let (ty, bytes) = self.raw(g, name, &[len as u64])?;
        dequant(name, ty, bytes, len)
    }

    /// [`Self::vector`], `None` when the file has no such tensor.
    pub fn vector_opt(&self, g: &Gguf, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match g.tensor(name) {
            Some(_) => self.vector(g, name, len).map(Some),
            None => Ok(None),
        }
    }

    /// A (rows, cols) matrix: quantized formats the kernels read stay as they are (unless
    /// `f32_only`), everything else becomes f32.
    pub fn matrix(&self, g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let (ty, bytes) = self.raw(g, name, &[cols as u64, rows as u64])?;
        match QType::of(ty).filter(|_| !self.f32_only) {
            Some(q) => Ok(Weight::Quant(
                QMatrix::new(q, rows, cols, bytes.to_vec())
                    .map_err(|e| Error::Config(e.to_string()))?,
            )),
            None => Ok(Weight::F32(Matrix::new(
                rows,
                cols,
                dequant(name, ty, bytes, rows * cols)?,
            ))),
        }
    }

    /// Every tensor of the file was read, or an error naming the first that was not.
    pub fn all_used(&self, g: &Gguf, arch: &str) -> Result<()> {
        let used = self.used.lock().expect("no panic while holding the lock");
        match g.tensors.iter().find(|t| !used.contains(&t.name)) {
            Some(t) => Err(Error::Unsupported(format!(
                "{arch}: tensor `{}` has no place in tokenfab's {arch} forward pass",
                t.name
            ))),
            None => Ok(()),
        }
    }
}

impl Weights<Weight, Vec<f32>> {
    /// Reads every weight `cfg`'s architecture uses.
    pub(crate) fn load(g: &Gguf, cfg: &ModelConfig, t: &Tensors) -> Result<Self> {
        let (dim, ffn, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let gemma = cfg.kind == Arch::Gemma3;
        let qk_norm = matches!(cfg.kind, Arch::Qwen3 | Arch::Gemma3);
        let layers = (0..cfg.n_layers)
            .into_par_iter()
            .map(|l| {
                let n = |s: &str| format!("blk.{l}.{s}");
                let vector = |s: &str, len: usize| t.vector(g, &n(s), len);
                let matrix = |s: &str, rows: usize| t.matrix(g, &n(s), rows, dim);
                let (wqkv, bqkv) = if g.tensor(&n("attn_qkv.weight")).is_some() {
                    let w = matrix("attn_qkv.weight", q_dim + 2 * kv_dim)?;
                    (w, t.vector_opt(g, &n("attn_qkv.bias"), q_dim + 2 * kv_dim)?)
                } else {
                    let w = Weight::stack(vec![
                        matrix("attn_q.weight", q_dim)?,
                        matrix("attn_k.weight", kv_dim)?,
                        matrix("attn_v.weight", kv_dim)?,
                    ]);
                    let bias = |s: &str, len| t.vector_opt(g, &n(s), len);
                    let biases = [
                        bias("attn_q.bias", q_dim)?,
                        bias("attn_k.bias", kv_dim)?,
                        bias("attn_v.bias", kv_dim)?,
                    ];
                    let b = biases.iter().any(Option::is_some).then(|| {
                        let [bq, bk, bv] = biases;
                        let mut b = bq.unwrap_or_else(|| vec![0.0; q_dim]);
                        b.extend(bk.unwrap_or_else(|| vec![0.0; kv_dim]));
                        b.extend(bv.unwrap_or_else(|| vec![0.0; kv_dim]));
                        b
                    });
                    (w, b)
                };
                // Phi-3 stores gate and up as one (2 ffn, dim) `ffn_up`, gate rows first.
                let w_gate_up =
                    if cfg.kind == Arch::Phi3 && g.tensor(&n("ffn_gate.weight")).is_none() {
                        matrix("ffn_up.weight", 2 * ffn)?
                    } else {
                        Weight::stack(vec![
                            matrix("ffn_gate.weight", ffn)?,
                            matrix("ffn_up.weight", ffn)?,
                        ])
                    };
                let opt = |on: bool, s: &str, len: usize| on.then(|| vector(s, len)).transpose();
                Ok(LayerWeights {
                    attn_norm: vector("attn_norm.weight", dim)?,
                    wqkv,
                    bqkv,
                    q_norm: opt(qk_norm, "attn_q_norm.weight", hd)?,
                    k_norm: opt(qk_norm, "attn_k_norm.weight", hd)?,
                    wo: t.matrix(g, &n("attn_output.weight"), dim, q_dim)?,
                    post_attn_norm: opt(gemma, "post_attention_norm.weight", dim)?,
                    ffn_norm: vector("ffn_norm.weight", dim)?,
                    w_gate_up,
                    w_down: t.matrix(g, &n("ffn_down.weight"), dim, ffn)?,
                    post_ffn_norm: opt(gemma, "post_ffw_norm.weight", dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_embd: t.matrix(g, "token_embd.weight", cfg.vocab_size, dim)?,
            output: match g.tensor("output.weight") {
                Some(_) => Some(t.matrix(g, "output.weight", cfg.vocab_size, dim)?),
                None => None,
            },
            output_norm: t.vector(g, "output_norm.weight", dim)?,
            layers,
        })
    }

    /// Bytes of weights held in memory.
    pub fn bytes(&self) -> usize {
        let v = |x: &Vec<f32>| 4 * x.len();
        let ov = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, v);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wqkv.bytes()
                    + l.wo.bytes()
                    + l.w_gate_up.bytes()
                    + l.w_down.bytes()
                    + v(&l.attn_norm)
                    + v(&l.ffn_norm)
                    + ov(&l.bqkv)
                    + ov(&l.q_norm)
                    + ov(&l.k_norm)
                    + ov(&l.post_attn_norm)
                    + ov(&l.post_ffn_norm)
            })
            .sum();
        layers
            + self.tok_embd.bytes()
            + self.output.as_ref().map_or(0, Weight::bytes)
            + v(&self.output_norm)
    }
}
