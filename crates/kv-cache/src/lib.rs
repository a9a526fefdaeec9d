//! Bookkeeping of a paged KV cache: which physical blocks each request holds, an LRU free queue,
//! and prefix caching by chained block hashes. Follows vLLM v1 `kv_cache_manager.py` and
//! `block_pool.py`.
//!
//! Invariant: no tensors, no async and no I/O here; a block with `ref_cnt == 0` is in the free
//! queue and a cache hit is verified against the block's stored tokens and parent, never trusted
//! to a hash; KV events (when on) describe the index exactly, in order.

pub mod block_hash;
pub mod block_pool;
pub mod events;
pub mod manager;
pub mod msgpack;
pub mod vllm_hash;

pub use block_hash::{hash_block, hash_full_blocks, BlockHash};
pub use block_pool::{BlockKey, BlockPool};
pub use events::KvEvent;
pub use manager::{ComputedBlocks, KvCacheManager};
pub use vllm_hash::{FullHash, HashAlgo, VllmHasher};
