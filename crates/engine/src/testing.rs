//! A complete tiny model file for tests: random 2-layer Llama weights, a byte-level BPE vocabulary
//! (one token per byte, plus ChatML specials) and a ChatML template.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dummy::byte_level_tokenizer;
use tokenfab_models::testing::tiny_llama;
use tokenfab_models::{Executor, ForwardBatch, ModelConfig};

/// Token ids of the specials after the 256 byte tokens.
pub const IM_START: u32 = 256;
pub const IM_END: u32 = 257;
pub const VOCAB: usize = 258;

/// Writes the tiny model to `dir/tiny.gguf` and returns its path.
pub fn write_tiny_model(dir: &Path) -> PathBuf {
    let mut w = tiny_llama("llama", VOCAB);
    byte_level_tokenizer(&mut w, VOCAB);
    std::fs::create_dir_all(dir).expect("test dir");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, w.to_bytes()).expect("writing the tiny model");
    path
}

/// `exec` with every forward pass taking at least `per_step` (a sleep after it): for tests whose
/// point is a consumer slower than the engine, whatever the machine's speed.
pub fn paced(exec: Box<dyn Executor>, per_step: Duration) -> Box<dyn Executor> {
    Box::new(Paced { exec, per_step })
}

struct Paced {
    exec: Box<dyn Executor>,
    per_step: Duration,
}

impl Executor for Paced {
    fn forward(&mut self, batch: &ForwardBatch) -> tokenfab_models::Result<&mut [f32]> {
        std::thread::sleep(self.per_step);
        self.exec.forward(batch)
    }
    fn config(&self) -> &ModelConfig {
        self.exec.config()
    }
    fn block_size(&self) -> usize {
        self.exec.block_size()
    }
    fn num_blocks(&self) -> usize {
        self.exec.num_blocks()
    }
    fn weight_bytes(&self) -> usize {
        self.exec.weight_bytes()
    }
    fn device(&self) -> String {
        self.exec.device()
    }
}
