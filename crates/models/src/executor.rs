//! What the engine's model runner drives: a model with its KV pool on some device.

use crate::batch::ForwardBatch;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv::KvCache;
use crate::llama::Llama;

/// A model bound to a device and a KV pool of `num_blocks` blocks of `block_size` tokens.
pub trait Executor: Send {
    /// Runs one batch and returns the logits of `batch.logits_rows`: (rows, vocab).
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>>;
    fn config(&self) -> &LlamaConfig;
    fn block_size(&self) -> usize;
    fn num_blocks(&self) -> usize;
    /// Bytes of weights resident on the device.
    fn weight_bytes(&self) -> usize;
    /// "cpu", "cuda:0", ...
    fn device(&self) -> String;
}

/// The CPU: f32 weights in host memory, the KV pool in host memory.
pub struct CpuExecutor {
    pub model: Llama,
    pub kv: KvCache,
}

impl CpuExecutor {
    pub fn new(model: Llama, block_size: usize, num_blocks: usize) -> Self {
        let kv = model.new_kv_cache(block_size, num_blocks);
        Self { model, kv }
    }
}

impl Executor for CpuExecutor {
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Vec<f32>> {
        self.model.forward(batch, &mut self.kv)
    }
    fn config(&self) -> &LlamaConfig {
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
