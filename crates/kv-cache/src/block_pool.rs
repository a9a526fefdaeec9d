//! The pool of physical KV blocks: reference counts, an LRU free queue and the prefix-cache index.
//!
//! Follows vLLM v1 `vllm/v1/core/block_pool.py` (`BlockPool`, `FreeKVCacheBlockQueue`):
//! - a block with `ref_cnt == 0` sits in the free queue, still findable by hash until reused;
//! - allocation takes the queue's head (least recently freed) and evicts its hash;
//! - freeing appends to the tail; a cached hit on a free block "touches" it (removed from the
//!   middle of the queue in O(1), `ref_cnt += 1`).
//!
//! Cache hits are verified, not trusted to the 64-bit hash: a cached block stores its tokens and
//! the [`BlockKey`] of its parent block, and every block's `generation` is bumped each time it is
//! handed out again. A lookup that walks a sequence from its first block and checks both therefore
//! proves, by induction, that the hit holds exactly the same whole prefix.
//!
//! A block enters the index only while its parent is in it (same generation), and evicting a
//! block evicts its cached descendants, which no lookup could reach any more. So the index holds
//! exactly the reachable prefixes, and the KV events recorded here (when enabled) describe it.

use std::collections::HashMap;

use tokenfab_types::{BlockId, TokenId};

use crate::block_hash::BlockHash;
use crate::events::EventLog;
use crate::vllm_hash::FullHash;

/// "No block" in the intrusive free list.
const NIL: u32 = u32::MAX;

/// One lifetime of a physical block: its id plus how many times it had been handed out.
/// Two equal keys name the same block holding the same data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The physical block.
    pub id: BlockId,
    /// Number of times `id` had been allocated when this key was taken.
    pub generation: u64,
}

/// What the pool knows about one physical block.
#[derive(Clone, Debug, Default)]
struct Block {
    /// Number of requests whose block table holds this block; 0 means it is in the free queue.
    ref_cnt: u32,
    /// Times this block was allocated; bumped on every allocation so old [`BlockKey`]s go stale.
    generation: u64,
    /// The prefix hash under which this block is registered in `cached`, if it is.
    hash: Option<BlockHash>,
    /// The block's token ids (`block_size` of them) when `hash` is set, to verify hits; else empty.
    tokens: Vec<TokenId>,
    /// The parent block's key at registration (`None` for a sequence's first block).
    parent: Option<BlockKey>,
    /// vLLM's hash of the block while registered, when events are on.
    ext: Option<FullHash>,
    /// Blocks registered with this one as their parent (some may have left the index since).
    children: Vec<BlockId>,
    /// Free-queue neighbours (`NIL` at the ends or when not queued).
    prev: u32,
    next: u32,
}

/// Fixed set of `num_blocks` blocks with an O(1) LRU free queue and a hash -> block index.
#[derive(Debug)]
pub struct BlockPool {
    /// One entry per physical block, indexed by `BlockId`.
    blocks: Vec<Block>,
    /// Head of the free queue (least recently freed, evicted first), or `NIL`.
    head: u32,
    /// Tail of the free queue (most recently freed), or `NIL`.
    tail: u32,
    /// Number of blocks in the free queue (= blocks with `ref_cnt == 0`).
    num_free: usize,
    /// Prefix-cache index: block hash -> the one block registered under it.
    cached: HashMap<BlockHash, BlockId>,
    /// Index changes not yet drained; `None` while KV events are off.
    events: Option<EventLog>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks, queued in id order. Panics if `num_blocks >= u32::MAX`.
    pub fn new(num_blocks: usize) -> Self {
        assert!(
            num_blocks < NIL as usize,
            "num_blocks must be < {NIL}, given {num_blocks}"
        );
        let mut pool = Self {
            blocks: vec![
                Block {
                    prev: NIL,
                    next: NIL,
                    ..Block::default()
                };
                num_blocks
            ],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
            events: None,
        };
        for id in 0..num_blocks as u32 {
            pool.push_back(id);
        }
        pool
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with `ref_cnt == 0` (free or cached-but-evictable).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Number of requests holding `id`.
    pub fn ref_cnt(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_cnt
    }

    /// The current key of block `id`.
    pub fn key(&self, id: BlockId) -> BlockKey {
        BlockKey {
            id,
            generation: self.blocks[id as usize].generation,
        }
    }

    /// True when `id` is registered in the prefix-cache index.
    pub fn is_cached(&self, id: BlockId) -> bool {
        self.blocks[id as usize].hash.is_some()
    }

    /// Number of entries in the prefix-cache index.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Starts recording index changes (see [`crate::events`]).
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(EventLog::default);
    }

    /// The event log, when events are on.
    pub fn events_mut(&mut self) -> Option<&mut EventLog> {
        self.events.as_mut()
    }

    /// vLLM's hash of `id` if `id` is the block registered under `hash`.
    pub fn cached_ext(&self, id: BlockId, hash: BlockHash) -> Option<FullHash> {
        (self.cached.get(&hash) == Some(&id))
            .then_some(self.blocks[id as usize].ext)
            .flatten()
    }

    /// The free queue from head (next to evict) to tail; for tests and debugging.
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NIL {
            out.push(cur);
            cur = self.blocks[cur as usize].next;
        }
        out
    }

    /// Takes `n` blocks from the head of the free queue with `ref_cnt = 1`, evicting their cached
    /// hashes. `None` (and nothing changed) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            self.evict(id);
            let b = &mut self.blocks[id as usize];
            b.children.clear();
            b.generation += 1;
            b.ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Takes one more reference on each block; a free one leaves the free queue (a cache hit).
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            if self.blocks[id as usize].ref_cnt == 0 {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
    }

    /// Drops one reference on each block, in the order given; blocks reaching 0 are appended to
    /// the free queue's tail (so earlier ids in `ids` are evicted first). They stay cached.
    pub fn free(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for id in ids {
            let b = &mut self.blocks[id as usize];
            assert!(b.ref_cnt > 0, "block {id} freed with ref_cnt 0");
            b.ref_cnt -= 1;
            if b.ref_cnt == 0 {
                self.push_back(id);
            }
        }
    }

    /// The block registered under `hash` if it holds exactly `tokens` after the parent `parent`.
    pub fn lookup(
        &self,
        hash: BlockHash,
        parent: Option<BlockKey>,
        tokens: &[TokenId],
    ) -> Option<BlockId> {
        let &id = self.cached.get(&hash)?;
        let b = &self.blocks[id as usize];
        (b.parent == parent && b.tokens == tokens).then_some(id)
    }

    /// Registers the full block `id` (held by a request) under `hash`, with its `tokens` and its
    /// parent's key. Returns the key that children of this block must name as their parent:
    /// `id`'s own key, or the key of an identical block already registered under `hash` (a
    /// duplicate computed concurrently). On a hash collision with different data, `id` stays
    /// unregistered (a future miss, never a wrong hit).
    pub fn register(
        &mut self,
        id: BlockId,
        hash: BlockHash,
        parent: Option<BlockKey>,
        tokens: &[TokenId],
    ) -> BlockKey {
        self.register_with(id, hash, parent, tokens, None).0
    }

    /// [`Self::register`] that also stores vLLM's hash `ext` of the block, and says whether `id`
    /// entered the index now. A block whose parent is not in the index (evicted, or a collision)
    /// is not registered: no lookup could reach it.
    pub fn register_with(
        &mut self,
        id: BlockId,
        hash: BlockHash,
        parent: Option<BlockKey>,
        tokens: &[TokenId],
        ext: Option<FullHash>,
    ) -> (BlockKey, bool) {
        match self.cached.get(&hash) {
            Some(&c) if c == id => (self.key(id), false),
            Some(_) => match self.lookup(hash, parent, tokens) {
                Some(c) => (self.key(c), false),
                None => (self.key(id), false),
            },
            None => {
                // Already registered under another chain (cannot happen for a full block, whose
                // contents are fixed): keep the first registration.
                let registered = self.blocks[id as usize].hash.is_some();
                if registered || parent.is_some_and(|p| !self.is_indexed(p)) {
                    return (self.key(id), false);
                }
                if let Some(p) = parent {
                    self.blocks[p.id as usize].children.push(id);
                }
                let b = &mut self.blocks[id as usize];
                b.hash = Some(hash);
                b.tokens = tokens.to_vec();
                b.parent = parent;
                b.ext = ext;
                self.cached.insert(hash, id);
                (self.key(id), true)
            }
        }
    }

    /// True when `key` is the current lifetime of a block in the index.
    fn is_indexed(&self, key: BlockKey) -> bool {
        let b = &self.blocks[key.id as usize];
        b.generation == key.generation && b.hash.is_some()
    }

    /// Forgets every cached hash. Refuses (false) while any block is held, as vLLM does, since
    /// running requests' chains would otherwise point at forgotten parents.
    pub fn reset_cache(&mut self) -> bool {
        if self.num_free != self.blocks.len() {
            return false;
        }
        // One AllBlocksCleared stands for every removal, as in vLLM.
        let events = self.events.take();
        for id in 0..self.blocks.len() as u32 {
            self.evict(id);
            let b = &mut self.blocks[id as usize];
            b.children.clear();
            b.generation += 1;
        }
        self.events = events;
        if let Some(log) = &mut self.events {
            log.cleared();
        }
        true
    }

    /// Removes `id`'s hash from the index (if registered), and its descendants' (their parent
    /// key goes stale, so no lookup could reach them).
    fn evict(&mut self, id: BlockId) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let key = self.key(id);
            let b = &mut self.blocks[id as usize];
            let Some(h) = b.hash.take() else { continue };
            let parent = b.parent.take();
            let ext = b.ext.take();
            b.tokens = Vec::new();
            let children = std::mem::take(&mut b.children);
            if self.cached.get(&h) == Some(&id) {
                self.cached.remove(&h);
            }
            if let (Some(log), Some(ext)) = (&mut self.events, ext) {
                log.removed(ext.external());
            }
            if let Some(p) = parent.filter(|&p| self.key(p.id) == p) {
                self.blocks[p.id as usize].children.retain(|&c| c != id);
            }
            stack.extend(
                children
                    .into_iter()
                    .filter(|&c| self.blocks[c as usize].parent == Some(key)),
            );
        }
    }

    fn push_back(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        b.prev = self.tail;
        b.next = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.blocks[self.tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let b = &self.blocks[id as usize];
            (b.prev, b.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let b = &mut self.blocks[id as usize];
        b.prev = NIL;
        b.next = NIL;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_hash::hash_block;

    #[test]
    fn new_pool_is_all_free_in_id_order() {
        let p = BlockPool::new(4);
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.free_queue(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn allocate_takes_head_and_free_appends_to_tail() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.allocate(2), Some(vec![0, 1]));
        assert_eq!(p.num_free(), 2);
        p.free([1, 0]);
        assert_eq!(p.free_queue(), vec![2, 3, 1, 0]);
        assert_eq!(p.allocate(3), Some(vec![2, 3, 1]));
    }

    #[test]
    fn allocate_too_many_changes_nothing() {
        let mut p = BlockPool::new(3);
        p.allocate(1).unwrap();
        assert_eq!(p.allocate(3), None);
        assert_eq!(p.num_free(), 2);
        assert_eq!(p.free_queue(), vec![1, 2]);
    }

    #[test]
    fn touch_removes_from_the_middle_of_the_queue() {
        let mut p = BlockPool::new(5);
        p.touch(&[2]);
        assert_eq!(p.free_queue(), vec![0, 1, 3, 4]);
        p.touch(&[0, 4]);
        assert_eq!(p.free_queue(), vec![1, 3]);
        p.touch(&[2]);
        assert_eq!(p.ref_cnt(2), 2);
        p.free([2]);
        assert_eq!(p.free_queue(), vec![1, 3]);
        p.free([2, 4, 0]);
        assert_eq!(p.free_queue(), vec![1, 3, 2, 4, 0]);
        assert_eq!(p.num_free(), 5);
    }

    #[test]
    fn reallocating_a_cached_block_evicts_its_hash() {
        let mut p = BlockPool::new(1);
        let id = p.allocate(1).unwrap()[0];
        let h = hash_block(None, &[1, 2]);
        p.register(id, h, None, &[1, 2]);
        p.free([id]);
        assert_eq!(p.lookup(h, None, &[1, 2]), Some(id));
        let gen = p.key(id).generation;
        p.allocate(1).unwrap();
        assert_eq!(p.lookup(h, None, &[1, 2]), None);
        assert_eq!(p.num_cached(), 0);
        assert_eq!(p.key(id).generation, gen + 1);
    }

    #[test]
    fn lookup_verifies_tokens_and_parent() {
        let mut p = BlockPool::new(3);
        let ids = p.allocate(2).unwrap();
        let h0 = hash_block(None, &[1, 2]);
        let k0 = p.register(ids[0], h0, None, &[1, 2]);
        let h1 = hash_block(Some(h0), &[3, 4]);
        p.register(ids[1], h1, Some(k0), &[3, 4]);
        assert_eq!(p.lookup(h1, Some(k0), &[3, 4]), Some(ids[1]));
        // Same hash presented with other tokens or another parent: a miss, not a wrong hit.
        assert_eq!(p.lookup(h1, Some(k0), &[3, 5]), None);
        assert_eq!(p.lookup(h1, None, &[3, 4]), None);
        let stale = BlockKey {
            id: k0.id,
            generation: k0.generation + 1,
        };
        assert_eq!(p.lookup(h1, Some(stale), &[3, 4]), None);
    }

    #[test]
    fn register_collision_keeps_first_and_duplicate_returns_canonical_key() {
        let mut p = BlockPool::new(3);
        let ids = p.allocate(3).unwrap();
        let k = p.register(ids[0], 42, None, &[1, 2]);
        assert_eq!(k, p.key(ids[0]));
        // Identical data under the same hash: the canonical key is the first block's.
        assert_eq!(p.register(ids[1], 42, None, &[1, 2]), k);
        assert!(!p.is_cached(ids[1]));
        // Forced collision (same hash, other data): not registered, its own key.
        assert_eq!(p.register(ids[2], 42, None, &[9, 9]), p.key(ids[2]));
        assert!(!p.is_cached(ids[2]));
        assert_eq!(p.lookup(42, None, &[1, 2]), Some(ids[0]));
        assert_eq!(p.lookup(42, None, &[9, 9]), None);
    }

    #[test]
    fn reset_cache_only_when_nothing_is_held() {
        let mut p = BlockPool::new(2);
        let id = p.allocate(1).unwrap()[0];
        p.register(id, 5, None, &[1]);
        assert!(!p.reset_cache());
        p.free([id]);
        assert!(p.reset_cache());
        assert_eq!(p.num_cached(), 0);
        assert_eq!(p.lookup(5, None, &[1]), None);
    }
}
