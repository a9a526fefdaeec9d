//! Reads model files and what comes with them: GGUF containers and Hugging Face checkpoints
//! (read as a GGUF view), quantized weight blocks, the tokenizer and the chat template.
//!
//! Invariant: this crate knows no model's computation; it hands out bytes, f32 values, token ids
//! and strings, and every malformed input becomes an [`Error`], never a panic. The one place that
//! names architectures is [`hf`], which maps a checkpoint's config keys and tensor names onto
//! llama.cpp's GGUF ones, as llama.cpp's converter does.

pub mod byte_vocab;
mod chat_roles;
pub mod chat_template;
pub mod error;
pub mod ggml_type;
pub mod gguf;
pub mod hf;
pub mod quant;
pub mod safetensors;
pub mod testing;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, TemplateMessage};
pub use error::{Error, Result};
pub use ggml_type::GgmlType;
pub use gguf::{Gguf, GgufWriter, TensorInfo, Value, ValueType};
pub use hf::{HfOptions, Quantization};
pub use tokenizer::Tokenizer;
