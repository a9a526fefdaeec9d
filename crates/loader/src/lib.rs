//! Reads model files and what comes with them: GGUF containers, quantized weight blocks, the
//! tokenizer and the chat template stored in the metadata.
//!
//! Invariant: this crate knows no model architecture; it hands out bytes, f32 values, token ids and
//! strings, and every malformed input becomes an [`Error`], never a panic.

pub mod byte_vocab;
mod chat_roles;
pub mod chat_template;
pub mod error;
pub mod ggml_type;
pub mod gguf;
pub mod quant;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use ggml_type::GgmlType;
pub use gguf::{Gguf, GgufWriter, TensorInfo, Value, ValueType};
pub use tokenizer::Tokenizer;
