//! Model architectures, each written once over the device operations of
//! [`tokenfab_backend::ops`] (`forward.rs`) and run on the CPU (`model.rs`, `executor.rs`) or a
//! CUDA device (`cuda.rs`), over a batch of tokens from any number of sequences reading and
//! writing a paged KV cache.
//!
//! Invariant: a model reads its configuration from metadata with an explicit error for each missing
//! or unsupported key and each tensor it has no use for, holds its weights immutably after loading,
//! and computes each sequence's tokens independently of whatever else shares the batch.

pub mod batch;
pub mod config;
pub mod cuda;
pub mod error;
pub mod executor;
pub mod forward;
pub mod kv;
pub mod model;
mod rope;
pub mod sample_twin;
pub mod scratch;
pub mod testing;
pub mod weight;

pub use batch::{ForwardBatch, SeqSlice};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use cuda::{CudaConfig, CudaExecutor, GpuWeights};
pub use error::{Error, Result};
pub use executor::{CpuExecutor, DeviceSampler, DeviceSampling, Executor, SampledStep, TokenMasks};
pub use kv::{KvCache, KvDtype};
pub use model::{DeviceDummy, Model};
pub use scratch::Scratch;
pub use tokenfab_backend::rope::RopeKind;
pub use weight::{LayerWeights, Tensors, Weight, Weights};

#[cfg(test)]
mod tests;
