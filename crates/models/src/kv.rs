//! The paged KV cache's storage: one preallocated pool of fixed-size blocks per layer, stored as
//! f32, f16 (the default, as llama.cpp's) or Q8_0 blocks. Which block belongs to which sequence is
//! the caller's bookkeeping (block tables).

pub use tokenfab_backend::cpu::attention::KvDtype;
use tokenfab_backend::cpu::attention::KvStore;

use crate::error::{Error, Result};

/// K and V for every layer, as `num_blocks * block_size` slots of `kv_dim` values each.
pub struct KvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    /// KV heads times head size.
    pub kv_dim: usize,
    pub dtype: KvDtype,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) k: Vec<KvStore>,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) v: Vec<KvStore>,
}

impl KvCache {
    /// A zeroed pool; `head_dim` is checked against the dtype (Q8_0 blocks of 32 must not straddle
    /// two heads).
    pub fn new(
        n_layers: usize,
        kv_dim: usize,
        head_dim: usize,
        dtype: KvDtype,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        dtype.check_head_dim(head_dim).map_err(Error::Config)?;
        let slots = block_size * num_blocks;
        Ok(Self {
            block_size,
            num_blocks,
            kv_dim,
            dtype,
            k: (0..n_layers)
                .map(|_| KvStore::new(dtype, slots, kv_dim))
                .collect(),
            v: (0..n_layers)
                .map(|_| KvStore::new(dtype, slots, kv_dim))
                .collect(),
        })
    }

    /// Bytes one token takes across all layers (K and V) stored as `dtype`.
    pub fn bytes_per_token(n_layers: usize, kv_dim: usize, dtype: KvDtype) -> usize {
        2 * n_layers * dtype.row_bytes(kv_dim)
    }

    /// Slots (tokens) the pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvStore::bytes).sum()
    }
}
