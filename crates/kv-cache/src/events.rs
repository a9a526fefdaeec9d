//! KV-cache events, as vLLM's `vllm/distributed/kv_events.py` defines them: which blocks entered
//! and left the prefix-cache index. Recorded in order by the pool and the manager, drained by the
//! engine after each step (the engine publishes them; nothing here does I/O).
//!
//! They describe the index exactly: a block is reported stored when it becomes findable by a
//! lookup and removed when it stops being findable (evicted for reuse, or cut off with an evicted
//! ancestor), so a subscriber that replays them knows which prefixes a lookup would hit.

use tokenfab_types::TokenId;

/// One change of the prefix-cache index; hashes are vLLM block hashes (`FullHash::external`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive full blocks of one sequence entered the index.
    Stored {
        /// One per block, in sequence order.
        block_hashes: Vec<u64>,
        /// The block before the first one; `None` when the first is a sequence's first block.
        parent_block_hash: Option<u64>,
        /// `block_hashes.len() * block_size` token ids.
        token_ids: Vec<TokenId>,
        block_size: u32,
    },
    /// Blocks left the index.
    Removed { block_hashes: Vec<u64> },
    /// The whole index was dropped.
    AllCleared,
}

/// Events not yet drained, with consecutive removals merged into one event.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<KvEvent>,
}

impl EventLog {
    pub fn stored(
        &mut self,
        block_hashes: Vec<u64>,
        parent_block_hash: Option<u64>,
        token_ids: Vec<TokenId>,
        block_size: usize,
    ) {
        debug_assert_eq!(token_ids.len(), block_hashes.len() * block_size);
        self.events.push(KvEvent::Stored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size: block_size as u32,
        });
    }

    pub fn removed(&mut self, hash: u64) {
        match self.events.last_mut() {
            Some(KvEvent::Removed { block_hashes }) => block_hashes.push(hash),
            _ => self.events.push(KvEvent::Removed {
                block_hashes: vec![hash],
            }),
        }
    }

    pub fn cleared(&mut self) {
        self.events.push(KvEvent::AllCleared);
    }

    /// Moves every event out, oldest first, into `out`.
    pub fn drain_into(&mut self, out: &mut Vec<KvEvent>) {
        out.append(&mut self.events);
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_merge_until_another_event() {
        let mut log = EventLog::default();
        log.removed(1);
        log.removed(2);
        log.stored(vec![3], None, vec![0, 0], 2);
        log.removed(4);
        log.cleared();
        let mut out = Vec::new();
        log.drain_into(&mut out);
        assert!(log.is_empty());
        assert_eq!(
            out,
            vec![
                KvEvent::Removed {
                    block_hashes: vec![1, 2]
                },
                KvEvent::Stored {
                    block_hashes: vec![3],
                    parent_block_hash: None,
                    token_ids: vec![0, 0],
                    block_size: 2
                },
                KvEvent::Removed {
                    block_hashes: vec![4]
                },
                KvEvent::AllCleared,
            ]
        );
    }
}
