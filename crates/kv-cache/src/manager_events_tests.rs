//! KV events of `KvCacheManager`: what is stored and removed, and that a subscriber replaying
//! the events predicts every prefix-cache hit exactly.

use std::collections::HashMap;

use super::tests::admit;
use super::*;
use crate::block_pool::BlockPool;
use crate::vllm_hash::HashAlgo;

fn hasher() -> VllmHasher {
    VllmHasher::with_seed(HashAlgo::Sha256Cbor, "0")
}

fn with_events(num_blocks: usize, block_size: usize) -> KvCacheManager {
    let mut m = KvCacheManager::new(num_blocks, block_size, true);
    m.enable_events(hasher());
    m
}

fn drain(m: &mut KvCacheManager) -> Vec<KvEvent> {
    let mut out = Vec::new();
    m.drain_events(&mut out);
    out
}

/// vLLM hashes (external) of the full blocks of `tokens`.
fn chain(tokens: &[TokenId], block_size: usize) -> Vec<u64> {
    let mut h = hasher();
    let mut parent = None;
    tokens
        .chunks_exact(block_size)
        .map(|c| {
            let f = h.hash_block(parent.as_ref(), c);
            parent = Some(f);
            f.external()
        })
        .collect()
}

#[test]
fn prompt_blocks_are_stored_once_and_hits_store_nothing() {
    let mut m = with_events(10, 4);
    let p: Vec<TokenId> = (100..110).collect();
    admit(&mut m, 1, &p).unwrap();
    let want = chain(&p, 4);
    assert_eq!(
        drain(&mut m),
        vec![KvEvent::Stored {
            block_hashes: want.clone(),
            parent_block_hash: None,
            token_ids: p[..8].to_vec(),
            block_size: 4,
        }]
    );
    // The same prompt again: both full blocks are hits; nothing new enters the index.
    assert_eq!(admit(&mut m, 2, &p).unwrap().num_computed_tokens, 8);
    assert!(drain(&mut m).is_empty());
    // Request 1 decodes two tokens: its third block fills and is stored after the second.
    let mut t = p.clone();
    t.extend([7, 8]);
    m.allocate_slots(1, &t, 2, None).unwrap();
    assert_eq!(
        drain(&mut m),
        vec![KvEvent::Stored {
            block_hashes: vec![chain(&t, 4)[2]],
            parent_block_hash: Some(want[1]),
            token_ids: t[8..12].to_vec(),
            block_size: 4,
        }]
    );
}

#[test]
fn eviction_removes_the_reused_block() {
    let mut m = with_events(2, 4);
    let p: Vec<TokenId> = (0..5).collect();
    admit(&mut m, 1, &p).unwrap();
    m.free(1);
    drain(&mut m);
    // Two new blocks: the pool hands out its LRU block first, which holds p's first block.
    admit(&mut m, 2, &(50..58).collect::<Vec<_>>()).unwrap();
    let ev = drain(&mut m);
    assert_eq!(
        ev[0],
        KvEvent::Removed {
            block_hashes: vec![chain(&p, 4)[0]]
        }
    );
    assert!(matches!(ev[1], KvEvent::Stored { .. }));
}

/// Pool level: evicting a block takes its cached descendants out of the index too, and a block
/// whose parent is not indexed is never stored.
#[test]
fn evicting_a_parent_removes_its_descendants() {
    let mut p = BlockPool::new(4);
    p.enable_events();
    let ids = p.allocate(3).unwrap();
    let ext = |x: u8| Some(FullHash::new(&[x; 32]));
    let (k0, s0) = p.register_with(ids[0], 10, None, &[1], ext(1));
    let (k1, s1) = p.register_with(ids[1], 11, Some(k0), &[2], ext(2));
    let (_, s2) = p.register_with(ids[2], 12, Some(k1), &[3], ext(3));
    assert!(s0 && s1 && s2);
    // Freed parent first, so it is the first evicted.
    p.free(ids.iter().copied());
    p.allocate(2).unwrap(); // the 4th block (never used), then ids[0]
    assert_eq!(p.num_cached(), 0);
    let mut out = Vec::new();
    p.events_mut().unwrap().drain_into(&mut out);
    let e = |x: u8| FullHash::new(&[x; 32]).external();
    assert_eq!(
        out,
        vec![KvEvent::Removed {
            block_hashes: vec![e(1), e(2), e(3)]
        }]
    );
    // A child named after a parent no longer indexed is not registered.
    let stale = k1;
    let id = p.allocate(1).unwrap()[0];
    assert!(!p.register_with(id, 13, Some(stale), &[4], ext(4)).1);
    assert!(!p.is_cached(id));
}

#[test]
fn reset_is_one_all_cleared() {
    let mut m = with_events(4, 2);
    admit(&mut m, 1, &[1, 2, 3, 4, 5]).unwrap();
    m.free(1);
    drain(&mut m);
    assert!(m.reset_prefix_cache());
    assert_eq!(drain(&mut m), vec![KvEvent::AllCleared]);
}

#[test]
fn events_off_records_nothing() {
    let mut m = KvCacheManager::new(4, 2, true);
    admit(&mut m, 1, &[1, 2, 3, 4, 5]).unwrap();
    assert!(drain(&mut m).is_empty());
}

/// What a subscriber knows from the events alone: block hash -> (parent hash, tokens).
#[derive(Default)]
struct Replica {
    blocks: HashMap<u64, (Option<u64>, Vec<TokenId>)>,
}

impl Replica {
    fn apply(&mut self, events: Vec<KvEvent>) {
        for e in events {
            match e {
                KvEvent::Stored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                } => {
                    let mut parent = parent_block_hash;
                    for (h, toks) in block_hashes
                        .iter()
                        .zip(token_ids.chunks_exact(block_size as usize))
                    {
                        assert!(parent.is_none_or(|p| self.blocks.contains_key(&p)));
                        let old = self.blocks.insert(*h, (parent, toks.to_vec()));
                        assert!(old.is_none(), "stored twice without a removal");
                        parent = Some(*h);
                    }
                }
                KvEvent::Removed { block_hashes } => {
                    for h in block_hashes {
                        assert!(self.blocks.remove(&h).is_some(), "removed unknown {h}");
                    }
                }
                KvEvent::AllCleared => self.blocks.clear(),
            }
        }
    }

    /// Leading full blocks of `tokens` a lookup would hit, never all of `tokens`.
    fn predicted_hit_blocks(&self, tokens: &[TokenId], block_size: usize) -> usize {
        let max = (tokens.len() - 1) / block_size;
        chain(tokens, block_size)
            .iter()
            .take(max)
            .take_while(|h| self.blocks.contains_key(h))
            .count()
    }
}

/// A random workload under memory pressure (shared prefixes, decode growth, preemption-like
/// frees): after every operation, the events' replica predicts the real lookup exactly.
#[test]
fn replayed_events_predict_every_lookup() {
    const BS: usize = 4;
    let mut m = with_events(24, BS);
    let mut replica = Replica::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let prefixes: Vec<Vec<TokenId>> = (0..4)
        .map(|p| (0..8).map(|i| p * 100 + i).collect())
        .collect();
    let mut live: HashMap<RequestId, Vec<TokenId>> = HashMap::new();
    let (mut removed, mut hits) = (0, 0);
    for step in 0..3000u64 {
        match next(4) {
            0 | 1 => {
                let mut t = prefixes[next(4) as usize][..next(9) as usize].to_vec();
                t.extend((0..1 + next(10)).map(|_| next(3) as TokenId));
                if admit(&mut m, step, &t).is_some() {
                    live.insert(step, t);
                }
            }
            2 => {
                if let Some(&id) = live.keys().nth(next(live.len().max(1) as u64) as usize) {
                    let t = live.get_mut(&id).unwrap();
                    t.push(next(3) as TokenId);
                    if m.allocate_slots(id, t, 1, None).is_none() {
                        t.pop();
                    }
                }
            }
            _ => {
                if let Some(&id) = live.keys().nth(next(live.len().max(1) as u64) as usize) {
                    m.free(id);
                    live.remove(&id);
                }
            }
        }
        let events = drain(&mut m);
        removed += events
            .iter()
            .filter(|e| matches!(e, KvEvent::Removed { .. }))
            .count();
        replica.apply(events);
        assert_eq!(replica.blocks.len(), m.pool().num_cached(), "step {step}");
        for p in &prefixes {
            let mut probe = p.clone();
            probe.extend((0..5).map(|_| next(3) as TokenId));
            let predicted = replica.predicted_hit_blocks(&probe, BS);
            let real = m.get_computed_blocks(&probe).blocks.len();
            assert_eq!(predicted, real, "step {step}: {probe:?}");
            hits += real;
        }
    }
    // The workload did evict and did hit (the comparison above was not vacuous).
    assert!(
        removed > 100 && hits > 1000,
        "removed {removed}, hits {hits}"
    );
}
