//! A complete tiny model file for tests: random 2-layer Llama weights, a byte-level BPE vocabulary
//! (one token per byte, plus ChatML specials) and a ChatML template.

use std::path::{Path, PathBuf};

use crate::dummy::byte_level_tokenizer;
use tokenfab_models::testing::tiny_llama;

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
