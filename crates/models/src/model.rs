//! A loaded model on the host: its configuration, RoPEs and weights (matrices in their GGUF block
//! format where a quantized kernel reads it, else f32), and the CPU's forward pass over them.

use tokenfab_backend::cpu::attention::RowKv;
use tokenfab_backend::cpu::ops::{CpuOps, CpuStep};
use tokenfab_backend::rope::Rope;
use tokenfab_loader::Gguf;
use tokenfab_types::profile::ForwardHook;

use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::forward::forward_hooked;
use crate::kv::{KvCache, KvDtype};
use crate::rope::ropes;
use crate::scratch::Scratch;
use crate::weight::{Tensors, Weight, Weights};

/// Dummy weights a GPU generates: each tensor of a Llama GGUF (`blk.{l}.attn_q.weight`, ...)
/// from the key of (seed, its name), uniform with variance 1/fan_in, exactly as
/// `tokenfab_engine::dummy::build_gguf` makes them on the host; norms are ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDummy {
    pub seed: u64,
    /// No separate output matrix: the logits use the embedding.
    pub tied_embeddings: bool,
}

/// A model of any supported architecture (see [`crate::config::Arch`]).
pub struct Model {
    pub cfg: ModelConfig,
    /// Indexed by [`ModelConfig::rope_index`].
    pub(crate) ropes: Vec<Rope>,
    /// `None` for weights made on the device ([`Model::device_dummy`]): no host copy.
    pub(crate) weights: Option<Weights<Weight, Vec<f32>>>,
    /// Dummy weights generated on the GPU from a seed instead of uploaded ([`DeviceDummy`]).
    pub device_dummy: Option<DeviceDummy>,
    /// How a GPU stores the layers' matrices (`--quantization fp8`: FP8 with per-tensor scales);
    /// the CPU ignores it (it runs what `weights` hold).
    pub gpu_weights: crate::cuda::GpuWeights,
    /// (k_scale, v_scale) per layer: an FP8 KV cache's calibrated scales when the checkpoint
    /// carries them (`blk.{i}.attn_k_scale` / `attn_v_scale`, from vLLM's names; see
    /// `kv_scales`); `None`: scale 1. Unused by a bf16/f16/f32 cache, as in vLLM.
    pub kv_scales: Option<Vec<(f32, f32)>>,
}

/// The checkpoint's FP8 KV cache scales: for every layer both or, in the whole file, none; each
/// finite and above 0. Marks the tensors read.
fn kv_scales(g: &Gguf, cfg: &ModelConfig, t: &Tensors) -> Result<Option<Vec<(f32, f32)>>> {
    let name = |l: usize, kv: &str| format!("blk.{l}.attn_{kv}_scale");
    if (0..cfg.n_layers)
        .all(|l| g.tensor(&name(l, "k")).is_none() && g.tensor(&name(l, "v")).is_none())
    {
        return Ok(None);
    }
    let one = |l: usize, kv: &str| -> Result<f32> {
        let n = name(l, kv);
        let v = t.vector_opt(g, &n, 1)?.ok_or_else(|| {
            Error::Config(format!(
                "`{n}` is missing: a checkpoint with KV cache scales has them for every layer"
            ))
        })?[0];
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::Config(format!(
                "`{n}` is {v}: a KV cache scale must be finite and above 0"
            )));
        }
        Ok(v)
    };
    (0..cfg.n_layers)
        .map(|l| Ok((one(l, "k")?, one(l, "v")?)))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl Model {
    /// Loads the model from a GGUF file, keeping quantized matrices quantized.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_gguf_with(g, false)
    }

    /// Loads the model; with `f32_weights` every matrix is dequantized to f32 (4x the memory; a
    /// reference for the quantized kernels).
    pub fn from_gguf_with(g: &Gguf, f32_weights: bool) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        let t = Tensors::new(f32_weights);
        let weights = Weights::load(g, &cfg, &t)?;
        let ropes = ropes(&cfg, g, &t)?;
        let kv_scales = kv_scales(g, &cfg, &t)?;
        t.all_used(g, &cfg.arch)?;
        Ok(Self {
            cfg,
            ropes,
            weights: Some(weights),
            device_dummy: None,
            gpu_weights: Default::default(),
            kv_scales,
        })
    }

    /// A Llama-architecture model of `g`'s shape (metadata only: no tensors are read) whose
    /// weights a GPU generates from `d` (see `tokenfab_backend::cuda::fp8::dummy_value`); the CPU
    /// cannot run it, and nothing of its weights is held on the host.
    pub fn device_dummy(
        g: &Gguf,
        d: DeviceDummy,
        gpu_weights: crate::cuda::GpuWeights,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        if cfg.arch != "llama" {
            return Err(Error::Config(format!(
                "dummy weights made on the device have Llama's tensors; this shape is `{}`",
                cfg.arch
            )));
        }
        let ropes = ropes(&cfg, g, &Tensors::new(false))?;
        Ok(Self {
            cfg,
            ropes,
            weights: None,
            device_dummy: Some(d),
            gpu_weights,
            kv_scales: None,
        })
    }

    /// The host's weights, or an error for a model whose weights only a GPU makes.
    pub fn host_weights(&self) -> Result<&Weights<Weight, Vec<f32>>> {
        self.weights.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "dummy weights generated on the device have no host copy: run them with --device cuda"
                    .into(),
            )
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

    /// Builds every matrix's repacked copies for the CPU kernels now, in parallel over the
    /// pool (see `QMatrix::prepack`).
    pub fn prepack(&self) {
        use rayon::prelude::*;
        let Some(w) = &self.weights else { return };
        let mut all: Vec<&Weight> = vec![w.output()];
        for l in &w.layers {
            all.extend([&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down]);
        }
        all.par_iter().for_each(|m| m.prepack());
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weights.as_ref().map_or(0, Weights::bytes)
    }

    /// The weights (for executors that upload them to a device).
    ///
    /// # Panics
    /// For a [`Model::device_dummy`], which has none on the host ([`Self::host_weights`]).
    pub fn weights(&self) -> &Weights<Weight, Vec<f32>> {
        self.host_weights().expect("a model with host weights")
    }

    pub fn ropes(&self) -> &[Rope] {
        &self.ropes
    }

    /// Runs the batch, writing each token's K/V into `kv`, and returns the logits of
    /// `batch.logits_rows`: (logits_rows.len(), vocab). Allocates its buffers on every call;
    /// executors use [`Model::forward_into`] with a [`Scratch`] they keep.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Result<Vec<f32>> {
        let mut s = Scratch::default();
        Ok(self.forward_into(batch, kv, &mut s)?.to_vec())
    }

    /// [`Model::forward`] over the buffers of `s`, returning the logits held in `s`. Once `s` has
    /// seen a batch of this size, the pass allocates nothing.
    pub fn forward_into<'s>(
        &self,
        batch: &ForwardBatch,
        kv: &mut KvCache,
        s: &'s mut Scratch,
    ) -> Result<&'s mut [f32]> {
        self.forward_profiled(batch, kv, s, None)
    }

    /// [`Model::forward_into`], telling `hook` where each phase of the pass ends (see
    /// [`crate::forward::forward_hooked`]).
    pub fn forward_profiled<'s>(
        &self,
        batch: &ForwardBatch,
        kv: &mut KvCache,
        s: &'s mut Scratch,
        hook: Option<&mut dyn ForwardHook>,
    ) -> Result<&'s mut [f32]> {
        let c = &self.cfg;
        let weights = self.host_weights()?;
        if kv.kv_dim != c.kv_dim() || kv.k.len() != c.n_layers {
            return Err(Error::Batch("KV cache was made for another model".into()));
        }
        batch.plan_into(kv.block_size, kv.num_blocks, &mut s.seq_of, &mut s.slots)?;
        batch.check_tokens(c.vocab_size)?;
        let (n, r) = (batch.tokens.len(), batch.logits_rows.len());
        s.fit(c, n, r);
        let seq_of = &s.seq_of;
        let rows = |t: usize| RowKv {
            block_table: batch.seqs[seq_of[t]].block_table,
            start: 0,
            ctx: batch.positions[t] as usize + 1,
        };
        let step = CpuStep {
            tokens: batch.tokens,
            positions: batch.positions,
            slots: &s.slots,
            logits_rows: batch.logits_rows,
            rows: &rows,
        };
        let kv_pair = (&mut kv.k[..], &mut kv.v[..]);
        let mut ops = CpuOps::new(step, &self.ropes, kv_pair, kv.block_size, &mut s.cpu);
        // On a pool thread: every product's fork-join then starts there (see `in_pool`).
        let acts = &mut s.acts;
        tokenfab_backend::cpu::in_pool(|| forward_hooked(c, weights, &mut ops, acts, hook))?;
        Ok(&mut s.acts.logits[..r * c.vocab_size])
    }
}
