//! The paged KV cache's storage: one preallocated pool of fixed-size blocks per layer.
//! Which block belongs to which sequence is the caller's bookkeeping (block tables).

/// K and V for every layer, as `num_blocks * block_size` slots of `kv_dim` floats each.
pub struct KvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    /// KV heads times head size.
    pub kv_dim: usize,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) k: Vec<Vec<f32>>,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, block_size: usize, num_blocks: usize) -> Self {
        let slots = block_size * num_blocks;
        Self {
            block_size,
            num_blocks,
            kv_dim,
            k: (0..n_layers).map(|_| vec![0.0; slots * kv_dim]).collect(),
            v: (0..n_layers).map(|_| vec![0.0; slots * kv_dim]).collect(),
        }
    }

    /// Bytes one token takes across all layers (K and V, f32).
    pub fn bytes_per_token(n_layers: usize, kv_dim: usize) -> usize {
        2 * n_layers * kv_dim * std::mem::size_of::<f32>()
    }

    /// Slots (tokens) the pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }
}
