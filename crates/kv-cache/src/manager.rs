//! Per-request view of the block pool: which blocks each request holds, prefix-cache lookups,
//! all-or-nothing slot allocation. Follows vLLM v1 `vllm/v1/core/kv_cache_manager.py`.

use std::collections::HashMap;

use tokenfab_types::{BlockId, RequestId, TokenId};

use crate::block_hash::{hash_block, hash_full_blocks, BlockHash};
use crate::block_pool::{BlockKey, BlockPool};
use crate::events::KvEvent;
use crate::vllm_hash::{FullHash, VllmHasher};

/// Prefix-cache hit for a request that has no blocks yet; no references are taken until
/// [`KvCacheManager::allocate_slots`] is called with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    /// Cached blocks holding the request's first `blocks.len()` full blocks, in sequence order.
    pub blocks: Vec<BlockId>,
    /// Tokens already in the KV cache = `blocks.len() * block_size`; always `< tokens.len()`.
    pub num_computed_tokens: usize,
}

/// The blocks one request holds.
#[derive(Debug, Default)]
struct ReqBlocks {
    /// Block table: block `i` holds the KV of token positions `i * block_size ..`.
    blocks: Vec<BlockId>,
    /// Token slots reserved so far (`num_computed + num_new` of the last allocation).
    num_tokens: usize,
    /// Leading blocks already offered to the prefix-cache index.
    num_hashed_blocks: usize,
    /// Hash of block `num_hashed_blocks - 1` (the parent of the next block to hash).
    last_hash: Option<BlockHash>,
    /// Canonical key of block `num_hashed_blocks - 1`, named as parent by the next one.
    last_key: Option<BlockKey>,
    /// vLLM's hash of block `num_hashed_blocks - 1`, when KV events are on.
    last_ext: Option<FullHash>,
}

/// Block tables of all requests over one [`BlockPool`].
#[derive(Debug)]
pub struct KvCacheManager {
    /// The physical blocks.
    pool: BlockPool,
    /// Tokens per block.
    block_size: usize,
    /// Whether full blocks are registered by hash and shared between requests.
    enable_prefix_caching: bool,
    /// Blocks held by each live request.
    reqs: HashMap<RequestId, ReqBlocks>,
    /// Prompt tokens looked up in the prefix cache (vLLM `prefix_cache_queries`).
    queries: u64,
    /// Of those, tokens found cached (vLLM `prefix_cache_hits`).
    hits: u64,
    /// vLLM's block hashes for KV events; `None` while events are off.
    hasher: Option<VllmHasher>,
}

impl KvCacheManager {
    /// `num_blocks` blocks of `block_size` tokens. Panics on `block_size == 0`.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be > 0");
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_prefix_caching,
            reqs: HashMap::new(),
            queries: 0,
            hits: 0,
            hasher: None,
        }
    }

    /// Records KV events from now on, naming blocks by `hasher`'s vLLM hashes. Call it before
    /// the first allocation: blocks cached earlier have no vLLM hash and are never reported.
    pub fn enable_events(&mut self, hasher: VllmHasher) {
        debug_assert_eq!(
            self.pool.num_cached(),
            0,
            "events enabled after blocks were cached"
        );
        self.pool.enable_events();
        self.hasher = Some(hasher);
    }

    /// Moves the events recorded since the last call into `out`, oldest first (nothing while
    /// events are off).
    pub fn drain_events(&mut self, out: &mut Vec<KvEvent>) {
        if let Some(log) = self.pool.events_mut() {
            log.drain_into(out);
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks not held by any request (including cached ones that may be evicted).
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Fraction of blocks held by at least one request, in `[0, 1]` (vLLM `kv_cache_usage_perc`).
    pub fn usage(&self) -> f32 {
        let n = self.pool.num_blocks();
        if n == 0 {
            return 0.0;
        }
        (n - self.pool.num_free()) as f32 / n as f32
    }

    /// `(queries, hits)` in tokens since creation.
    pub fn prefix_cache_stats(&self) -> (u64, u64) {
        (self.queries, self.hits)
    }

    /// Whether prefix caching is on.
    pub fn prefix_caching_enabled(&self) -> bool {
        self.enable_prefix_caching
    }

    /// The block pool, read-only (ref counts and the free queue, for tests and metrics).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The request's block table (empty for an unknown request).
    pub fn block_table(&self, req: RequestId) -> &[BlockId] {
        self.reqs.get(&req).map_or(&[], |r| &r.blocks)
    }

    /// Token slots the request's blocks cover as of its last allocation (0 for an unknown one).
    pub fn num_computed_slots(&self, req: RequestId) -> usize {
        self.reqs.get(&req).map_or(0, |r| r.num_tokens)
    }

    /// The longest run of leading full blocks of `tokens` already cached, never all of `tokens`
    /// (at least one token is left to compute so the model produces logits). Counts a query of
    /// `tokens.len()` tokens and the hit tokens when prefix caching is on; a request that is
    /// looked up again (it did not fit, or was preempted) counts again, as in vLLM.
    pub fn get_computed_blocks(&mut self, tokens: &[TokenId]) -> ComputedBlocks {
        if !self.enable_prefix_caching || tokens.is_empty() {
            return ComputedBlocks::default();
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        let hashes = hash_full_blocks(tokens, self.block_size, max_blocks);
        let mut blocks = Vec::new();
        let mut parent = None;
        for (h, chunk) in hashes.iter().zip(tokens.chunks_exact(self.block_size)) {
            match self.pool.lookup(*h, parent, chunk) {
                Some(id) => {
                    blocks.push(id);
                    parent = Some(self.pool.key(id));
                }
                None => break,
            }
        }
        let num_computed_tokens = blocks.len() * self.block_size;
        self.queries += tokens.len() as u64;
        self.hits += num_computed_tokens as u64;
        ComputedBlocks {
            blocks,
            num_computed_tokens,
        }
    }

    /// Grows `req`'s blocks to cover `num_computed + num_new_tokens` token slots, where
    /// `num_computed` is what its blocks already cover, or, for a request without blocks,
    /// `computed.num_computed_tokens` (its cached blocks are taken first). `tokens` is every
    /// token of the request known so far (prompt + output).
    ///
    /// Returns the newly allocated block ids, or `None` when the free blocks do not suffice; then
    /// nothing has changed. On success, blocks that will be full once the scheduled tokens are
    /// computed are registered in the prefix cache, so the runner must write a step's KV before
    /// any attention of that step reads it (vLLM does the same).
    ///
    /// `computed` must come from [`Self::get_computed_blocks`] with no allocation in between; it
    /// is ignored for a request that already holds blocks.
    pub fn allocate_slots(
        &mut self,
        req: RequestId,
        tokens: &[TokenId],
        num_new_tokens: usize,
        computed: Option<&ComputedBlocks>,
    ) -> Option<Vec<BlockId>> {
        let existing = self.reqs.get(&req);
        let (held, num_computed, to_touch): (usize, usize, &[BlockId]) = match (existing, computed)
        {
            (Some(r), _) => (r.blocks.len(), r.num_tokens, &[]),
            (None, Some(c)) => (c.blocks.len(), c.num_computed_tokens, &c.blocks),
            (None, None) => (0, 0, &[]),
        };
        let total = num_computed + num_new_tokens;
        let num_new_blocks = total.div_ceil(self.block_size).saturating_sub(held);
        // Touching a cached block that sits in the free queue uses up a free block too.
        let touched_free = to_touch
            .iter()
            .filter(|&&b| self.pool.ref_cnt(b) == 0)
            .count();
        if num_new_blocks + touched_free > self.pool.num_free() {
            return None;
        }
        debug_assert!(
            to_touch.iter().all(|&b| self.pool.is_cached(b)),
            "stale ComputedBlocks"
        );
        let to_touch = to_touch.to_vec();
        self.pool.touch(&to_touch);
        let new_blocks = self.pool.allocate(num_new_blocks).expect("checked above");
        let r = self.reqs.entry(req).or_insert_with(|| ReqBlocks {
            blocks: to_touch,
            ..ReqBlocks::default()
        });
        r.blocks.extend_from_slice(&new_blocks);
        r.num_tokens = total;
        if self.enable_prefix_caching {
            let num_full = total.min(tokens.len()) / self.block_size;
            let mut hashing = Hashing {
                pool: &mut self.pool,
                vllm: self.hasher.as_mut(),
                block_size: self.block_size,
            };
            hashing.hash_new_full_blocks(r, tokens, num_full);
        }
        Some(new_blocks)
    }

    /// Rolls `req`'s reserved slots back to its first `num_tokens` (speculative tokens that were
    /// rejected); the next allocation grows from there. Its blocks stay held for the tokens that
    /// take those positions next. Blocks are only ever registered in the prefix cache for known
    /// tokens (`allocate_slots`' `tokens`), so no cached block holds a rolled-back slot. Unknown
    /// requests and counts above what is reserved are ignored.
    pub fn truncate_slots(&mut self, req: RequestId, num_tokens: usize) {
        if let Some(r) = self.reqs.get_mut(&req) {
            debug_assert!(
                num_tokens >= r.num_hashed_blocks * self.block_size,
                "a cached block would lose verified tokens"
            );
            r.num_tokens = r.num_tokens.min(num_tokens);
        }
    }

    /// Drops `req`'s references; blocks no one holds go to the free queue, last block first, so
    /// a sequence's tail is evicted before its head. They stay findable by hash until reused.
    /// Unknown requests are ignored.
    pub fn free(&mut self, req: RequestId) {
        if let Some(r) = self.reqs.remove(&req) {
            self.pool.free(r.blocks.into_iter().rev());
        }
    }

    /// Forgets the prefix cache; refused (false) while any request holds blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_cache()
    }
}

/// What registering a request's new full blocks needs beside the request itself.
struct Hashing<'a> {
    pool: &'a mut BlockPool,
    vllm: Option<&'a mut VllmHasher>,
    block_size: usize,
}

impl Hashing<'_> {
    /// Offers blocks `r.num_hashed_blocks..num_full` of `r` to the prefix-cache index; with
    /// events on, each run of blocks that entered it becomes one `Stored` event.
    fn hash_new_full_blocks(&mut self, r: &mut ReqBlocks, tokens: &[TokenId], num_full: usize) {
        let bs = self.block_size;
        // The run of newly indexed blocks: first block index, vLLM hashes.
        let mut run: (usize, Vec<u64>) = (r.num_hashed_blocks, Vec::new());
        let mut run_parent = r.last_ext;
        for i in r.num_hashed_blocks..num_full {
            let chunk = &tokens[i * bs..(i + 1) * bs];
            let h = hash_block(r.last_hash, chunk);
            let id = r.blocks[i];
            let ext = self.vllm.as_mut().map(|v| {
                self.pool
                    .cached_ext(id, h)
                    .unwrap_or_else(|| v.hash_block(r.last_ext.as_ref(), chunk))
            });
            let (key, stored) = self.pool.register_with(id, h, r.last_key, chunk, ext);
            match (stored, ext) {
                (true, Some(e)) => run.1.push(e.external()),
                _ => {
                    self.flush(&mut run, run_parent, tokens);
                    run.0 = i + 1;
                    run_parent = ext;
                }
            }
            r.last_key = Some(key);
            r.last_hash = Some(h);
            r.last_ext = ext;
            r.num_hashed_blocks = i + 1;
        }
        self.flush(&mut run, run_parent, tokens);
    }

    fn flush(&mut self, run: &mut (usize, Vec<u64>), parent: Option<FullHash>, tokens: &[TokenId]) {
        if run.1.is_empty() {
            return;
        }
        let bs = self.block_size;
        let hashes = std::mem::take(&mut run.1);
        let toks = tokens[run.0 * bs..(run.0 + hashes.len()) * bs].to_vec();
        if let Some(log) = self.pool.events_mut() {
            log.stored(hashes, parent.map(|p| p.external()), toks, bs);
        }
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "manager_events_tests.rs"]
mod events_tests;
