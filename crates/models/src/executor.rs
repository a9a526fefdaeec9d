//! What the engine's model runner drives: a model with its KV pool on some device.

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
