//! What the engine's model runner drives: a model with its KV pool on some device.

use tokenfab_backend::cuda::sampling::{Edit, SampleParams, HOST};
use tokenfab_types::profile::ForwardHook;

use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv::{KvCache, KvDtype};
use crate::model::Model;
use crate::scratch::Scratch;

/// A model bound to a device and a KV pool of `num_blocks` blocks of `block_size` tokens.
pub trait Executor: Send {
    /// Runs one batch and returns the logits of `batch.logits_rows`: (rows, vocab), held by the
    /// executor until the next call; the caller may mask them in place.
    fn forward(&mut self, batch: &ForwardBatch) -> Result<&mut [f32]>;
    /// [`Executor::forward`], telling `hook` where each phase of the pass ends. An executor whose
    /// operations return before the device has run them (CUDA's) cannot time them from the host:
    /// it runs the plain pass and never calls the hook, so no phase is recorded.
    fn forward_profiled(
        &mut self,
        batch: &ForwardBatch,
        hook: Option<&mut dyn ForwardHook>,
    ) -> Result<&mut [f32]> {
        let _ = hook;
        self.forward(batch)
    }
    fn config(&self) -> &ModelConfig;
    fn block_size(&self) -> usize;
    fn num_blocks(&self) -> usize;
    /// Bytes of weights resident on the device.
    fn weight_bytes(&self) -> usize;
    /// "cpu", "cuda:0", ...
    fn device(&self) -> String;
    /// Sampling on the device, when this executor has it: then only token ids (and the logits
    /// rows the host asks for) cross the bus. `None`: the host samples every row from
    /// [`Executor::forward`]'s logits.
    fn device_sampler(&mut self) -> Option<&mut dyn DeviceSampler> {
        None
    }
}

/// Forward and sample on the device, in two calls so the host works while the device runs.
pub trait DeviceSampler {
    /// Uploads the batch and its sampling inputs and queues the forward pass, returning without
    /// waiting for it (the host computes grammar masks meanwhile). The logits stay on the device
    /// for [`Self::sample`]. Rows named by `s.feed` take their input token from the tokens the
    /// previous [`Self::sample`] chose, which stay on the device (async scheduling).
    fn launch(&mut self, batch: &ForwardBatch, s: &DeviceSampling) -> Result<()>;
    /// Applies the grammar masks, samples every logits row of the launched batch, waits, and
    /// returns each row's token and the logits of the rows the host samples or reads.
    fn sample(&mut self, masks: &TokenMasks) -> Result<SampledStep<'_>>;
}

/// One step's sampling inputs, one entry per logits row of the batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceSampling<'a> {
    /// (rows,) each row's parameters; its edits are `edits[edits_start..][..edits_len]`.
    pub params: &'a [SampleParams],
    pub edits: &'a [Edit],
    /// (rows,) rows the host samples or reads itself (prompt log-probabilities, draft
    /// verification, top alternatives): their logits come back, their device token is
    /// [`HOST`].
    pub host: &'a [bool],
    /// (batch rows,) or empty: async scheduling's row map. Row `i`'s input token is the one the
    /// previous step sampled at its logits row `feed[i]`, or its own where `feed[i] < 0`
    /// (`tokenfab_backend::cuda::feed`).
    pub feed: &'a [i32],
}

/// The grammar masks of a step, computed while its forward pass runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenMasks<'a> {
    /// (masked rows,) the logits row of each mask.
    pub rows: &'a [u32],
    /// (masked rows, ceil(vocab / 32)) each row's allowed tokens as bit words
    /// (`tokenfab_backend::cuda::token_mask`), applied before sampling.
    pub words: &'a [u32],
}

/// What comes back from a device step.
pub struct SampledStep<'a> {
    /// (rows,) each logits row's token, [`HOST`] where the host samples it (its logits are in
    /// `logits`).
    pub tokens: &'a [u32],
    /// (rows,) the token's log-probability under the (masked) logits, where asked.
    pub logprobs: &'a [f32],
    /// (rows,) where each row's logits sit in `logits` (in rows); `usize::MAX`: not copied back.
    pub host_at: &'a [usize],
    /// (rows copied back, vocab) masked, not otherwise edited.
    pub logits: &'a mut [f32],
}

/// The rows whose logits must come back after a device step: those the host reads and those
/// the device left to it. Sets their tokens to [`HOST`] and fills `host_at`; returns the rows
/// in the order they are copied.
pub fn rows_to_copy(tokens: &mut [u32], host: &[bool], host_at: &mut Vec<usize>) -> Vec<usize> {
    host_at.clear();
    let mut rows = Vec::new();
    for (r, t) in tokens.iter_mut().enumerate() {
        if host.get(r).copied().unwrap_or(false) {
            *t = HOST;
        }
        if *t == HOST {
            host_at.push(rows.len());
            rows.push(r);
        } else {
            host_at.push(usize::MAX);
        }
    }
    rows
}

/// Checks a step's sampling inputs against `rows` logits rows of `vocab` tokens.
pub fn check_sampling(s: &DeviceSampling, rows: usize, vocab: usize) -> Result<()> {
    if s.params.len() != rows || s.host.len() != rows {
        return Err(sampling_error(format!(
            "{} parameters and {} host flags for {rows} logits rows",
            s.params.len(),
            s.host.len()
        )));
    }
    tokenfab_backend::cuda::sampling::check_row_inputs(s.params, s.edits, vocab)
        .map_err(sampling_error)
}

/// Checks a step's row map against its `rows` batch rows and the `prev_rows` tokens the previous
/// step sampled.
pub fn check_feed(s: &DeviceSampling, rows: usize, prev_rows: usize) -> Result<()> {
    tokenfab_backend::cuda::feed::check_feed(s.feed, rows, prev_rows).map_err(sampling_error)
}

/// Checks a step's masks against `rows` logits rows of `vocab` tokens.
pub fn check_masks(m: &TokenMasks, rows: usize, vocab: usize) -> Result<()> {
    let words = tokenfab_backend::cuda::token_mask::mask_words(vocab);
    if m.words.len() != m.rows.len() * words {
        return Err(sampling_error(format!(
            "{} mask words for {} masked rows of {words}",
            m.words.len(),
            m.rows.len()
        )));
    }
    match m.rows.iter().find(|&&r| r as usize >= rows) {
        Some(r) => Err(sampling_error(format!(
            "masked row {r} of {rows} logits rows"
        ))),
        None => Ok(()),
    }
}

fn sampling_error(m: String) -> crate::error::Error {
    crate::error::Error::Batch(format!("device sampling: {m}"))
}

/// The CPU: weights, the KV pool and every activation buffer in host memory.
pub struct CpuExecutor {
    pub model: Model,
    pub kv: KvCache,
    /// Activations, reused by every step (a step of a shape seen before allocates nothing).
    scratch: Scratch,
}

impl CpuExecutor {
    /// The model with a pool of `num_blocks` blocks of `block_size` tokens stored as `dtype`.
    /// The CPU kernels' repacked weights are built here, over the pool, rather than inside
    /// the first request.
    pub fn new(model: Model, dtype: KvDtype, block_size: usize, num_blocks: usize) -> Result<Self> {
        model.host_weights()?;
        let kv = model.new_kv_cache(dtype, block_size, num_blocks)?;
        model.prepack();
        Ok(Self {
            model,
            kv,
            scratch: Scratch::default(),
        })
    }
}

impl Executor for CpuExecutor {
    fn forward(&mut self, batch: &ForwardBatch) -> Result<&mut [f32]> {
        self.model
            .forward_into(batch, &mut self.kv, &mut self.scratch)
    }
    fn forward_profiled(
        &mut self,
        batch: &ForwardBatch,
        hook: Option<&mut dyn ForwardHook>,
    ) -> Result<&mut [f32]> {
        self.model
            .forward_profiled(batch, &mut self.kv, &mut self.scratch, hook)
    }
    fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }
    fn block_size(&self) -> usize {
        self.kv.block_size
    }
    fn num_blocks(&self) -> usize {
        self.kv.num_blocks
    }
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }
    fn device(&self) -> String {
        "cpu".into()
    }
}
