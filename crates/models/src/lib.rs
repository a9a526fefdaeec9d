//! Model architectures written as plain forward passes over a batch of tokens from any number of
//! sequences, reading and writing a paged KV cache.
//!
//! Invariant: a model reads its configuration from metadata with an explicit error for each missing
//! key, holds its weights immutably after loading, and computes each sequence's tokens
//! independently of whatever else shares the batch.

pub mod batch;
pub mod config;
pub mod cuda_llama;
pub mod error;
pub mod executor;
pub mod kv;
pub mod llama;
mod rope;
pub mod scratch;
pub mod testing;
pub mod weight;

pub use batch::{ForwardBatch, SeqSlice};
pub use config::{LlamaConfig, RopeKind, RopeScaling};
pub use cuda_llama::{CudaConfig, CudaExecutor};
pub use error::{Error, Result};
pub use executor::{CpuExecutor, Executor};
pub use kv::{KvCache, KvDtype};
pub use llama::Llama;
pub use scratch::Scratch;
pub use weight::Weight;

#[cfg(test)]
mod tests;
