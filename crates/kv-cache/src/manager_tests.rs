//! Tests of `KvCacheManager` with no model, after vLLM `tests/v1/core/test_prefix_caching.py`.

use super::*;

/// `n` distinct tokens starting at `start`.
fn toks(start: u32, n: usize) -> Vec<TokenId> {
    (start..start + n as u32).collect()
}

/// Schedules a whole new prompt the way the scheduler does: lookup, then allocate the rest.
pub(super) fn admit(
    m: &mut KvCacheManager,
    req: RequestId,
    tokens: &[TokenId],
) -> Option<ComputedBlocks> {
    let c = m.get_computed_blocks(tokens);
    m.allocate_slots(req, tokens, tokens.len() - c.num_computed_tokens, Some(&c))?;
    Some(c)
}

#[test]
fn allocate_free_round_trip_restores_free_count() {
    let mut m = KvCacheManager::new(10, 4, false);
    let t = toks(0, 10);
    let new = m.allocate_slots(1, &t, 10, None).unwrap();
    assert_eq!(new.len(), 3);
    assert_eq!(m.block_table(1), &new[..]);
    assert_eq!(m.num_free_blocks(), 7);
    assert_eq!(m.num_computed_slots(1), 10);
    m.free(1);
    assert_eq!(m.num_free_blocks(), 10);
    assert!(m.block_table(1).is_empty());
    m.free(1); // unknown request: ignored
    assert_eq!(m.num_free_blocks(), 10);
}

#[test]
fn none_leaves_state_unchanged() {
    let mut m = KvCacheManager::new(4, 4, true);
    let a = toks(0, 9);
    admit(&mut m, 1, &a).unwrap(); // 3 blocks
    m.free(1);
    m.allocate_slots(2, &toks(100, 4), 4, None).unwrap(); // 1 block; 3 free, two of them cached
    let queue = m.pool().free_queue();
    let cached = m.pool().num_cached();
    // Request 3 hits a's first two blocks (which must be touched) and needs 2 more: 2 + 2 > 3.
    let b: Vec<TokenId> = a[..8].iter().copied().chain(toks(500, 5)).collect();
    let c = m.get_computed_blocks(&b);
    assert_eq!(c.blocks.len(), 2);
    assert_eq!(m.allocate_slots(3, &b, b.len() - 8, Some(&c)), None);
    assert_eq!(m.pool().free_queue(), queue);
    assert_eq!(m.pool().num_cached(), cached);
    assert!(m.block_table(3).is_empty());
    for &id in &c.blocks {
        assert_eq!(m.pool().ref_cnt(id), 0);
    }
    // An existing request that cannot grow keeps its table.
    let before = m.block_table(2).to_vec();
    assert_eq!(m.allocate_slots(2, &toks(100, 30), 26, None), None);
    assert_eq!(m.block_table(2), &before[..]);
    assert_eq!(m.num_computed_slots(2), 4);
}

#[test]
fn second_request_with_same_prompt_shares_full_blocks() {
    let mut m = KvCacheManager::new(10, 4, true);
    let p = toks(0, 10); // 2 full blocks + 2 tokens
    let c1 = admit(&mut m, 1, &p).unwrap();
    assert_eq!(c1.num_computed_tokens, 0);
    let c2 = admit(&mut m, 2, &p).unwrap();
    assert_eq!(c2.num_computed_tokens, 8);
    assert_eq!(c2.blocks, m.block_table(1)[..2]);
    for &id in &c2.blocks {
        assert_eq!(m.pool().ref_cnt(id), 2);
    }
    // The partial third block is private to each request.
    assert_ne!(m.block_table(1)[2], m.block_table(2)[2]);
    assert_eq!(m.pool().ref_cnt(m.block_table(2)[2]), 1);
    assert_eq!(m.num_free_blocks(), 10 - 4);
    assert_eq!(m.prefix_cache_stats(), (20, 8));
    m.free(1);
    m.free(2);
    assert_eq!(m.num_free_blocks(), 10);
}

#[test]
fn never_all_tokens_are_cached() {
    let mut m = KvCacheManager::new(10, 4, true);
    let p = toks(0, 8); // exactly two full blocks
    admit(&mut m, 1, &p).unwrap();
    let c = m.get_computed_blocks(&p);
    assert_eq!(
        c.num_computed_tokens, 4,
        "the last block is recomputed so one token remains"
    );
    assert_eq!(m.get_computed_blocks(&p[..1]).num_computed_tokens, 0);
    assert_eq!(m.get_computed_blocks(&[]).num_computed_tokens, 0);
    let longer: Vec<TokenId> = p.iter().copied().chain([99]).collect();
    assert_eq!(m.get_computed_blocks(&longer).num_computed_tokens, 8);
}

#[test]
fn prefix_caching_off_never_hits() {
    let mut m = KvCacheManager::new(10, 4, false);
    let p = toks(0, 12);
    admit(&mut m, 1, &p).unwrap();
    assert_eq!(m.get_computed_blocks(&p), ComputedBlocks::default());
    assert_eq!(m.pool().num_cached(), 0);
    assert_eq!(m.prefix_cache_stats(), (0, 0));
}

#[test]
fn same_block_tokens_after_different_prefixes_do_not_match() {
    let mut m = KvCacheManager::new(10, 2, true);
    admit(&mut m, 1, &[1, 2, 7, 8, 0]).unwrap();
    // Block [7, 8] exists, but after [3, 4], not after [1, 2].
    assert_eq!(
        m.get_computed_blocks(&[3, 4, 7, 8, 0]).num_computed_tokens,
        0
    );
    assert_eq!(
        m.get_computed_blocks(&[1, 2, 7, 9, 0]).num_computed_tokens,
        2
    );
    assert_eq!(
        m.get_computed_blocks(&[1, 2, 7, 8, 5]).num_computed_tokens,
        4
    );
}

#[test]
fn freed_blocks_stay_cached_until_reused() {
    let mut m = KvCacheManager::new(3, 4, true);
    let p = toks(0, 9);
    admit(&mut m, 1, &p).unwrap();
    m.free(1);
    assert_eq!(m.num_free_blocks(), 3);
    let c = admit(&mut m, 2, &p).unwrap();
    assert_eq!(c.num_computed_tokens, 8);
    assert_eq!(m.usage(), 1.0);
}

#[test]
fn lru_evicts_least_recently_freed_and_tail_of_sequence_first() {
    let mut m = KvCacheManager::new(6, 2, true);
    let a = toks(0, 5); // blocks a0 a1 + partial
    let b = toks(100, 5);
    admit(&mut m, 1, &a).unwrap();
    admit(&mut m, 2, &b).unwrap();
    let ta = m.block_table(1).to_vec();
    let tb = m.block_table(2).to_vec();
    m.free(1);
    m.free(2);
    // Freed in reverse sequence order, a before b.
    let want: Vec<BlockId> = ta.iter().rev().chain(tb.iter().rev()).copied().collect();
    assert_eq!(m.pool().free_queue(), want);
    // Two new blocks evict a's partial block and a1: a0 survives, a1 does not.
    m.allocate_slots(3, &toks(900, 4), 4, None).unwrap();
    assert_eq!(m.get_computed_blocks(&a).num_computed_tokens, 2);
    assert_eq!(m.get_computed_blocks(&b).num_computed_tokens, 4);
}

#[test]
fn touched_block_is_not_evicted() {
    let mut m = KvCacheManager::new(4, 2, true);
    let a = toks(0, 3); // a0 + partial
    admit(&mut m, 1, &a).unwrap();
    let a0 = m.block_table(1)[0];
    m.free(1);
    // Request 2 hits a0 (touch), then a request needing every other block takes the rest.
    let c = admit(&mut m, 2, &a).unwrap();
    assert_eq!(c.blocks, vec![a0]);
    assert_eq!(m.pool().ref_cnt(a0), 1);
    let other = toks(50, 4);
    assert!(m.allocate_slots(3, &other, 4, None).is_some());
    assert_eq!(m.num_free_blocks(), 0);
    assert_eq!(m.block_table(2)[0], a0);
    assert!(!m.block_table(3).contains(&a0));
    assert_eq!(m.get_computed_blocks(&a).blocks, vec![a0]);
}

#[test]
fn usage_counts_held_blocks_only() {
    let mut m = KvCacheManager::new(8, 4, true);
    assert_eq!(m.usage(), 0.0);
    admit(&mut m, 1, &toks(0, 8)).unwrap();
    assert_eq!(m.usage(), 0.25);
    admit(&mut m, 2, &toks(0, 8)).unwrap(); // shares block 0, own copy of block 1
    assert_eq!(m.usage(), 0.375);
    m.free(1);
    assert_eq!(m.usage(), 0.25);
    m.free(2);
    assert_eq!(m.usage(), 0.0);
    assert_eq!(KvCacheManager::new(0, 4, true).usage(), 0.0);
}

#[test]
fn decode_growth_allocates_exactly_when_a_block_fills() {
    let mut m = KvCacheManager::new(10, 4, true);
    let mut t = toks(0, 3);
    assert_eq!(m.allocate_slots(1, &t, 3, None).unwrap().len(), 1);
    // Decode one token at a time: the token at position p needs slot p.
    for step in 0..10 {
        t.push(1000 + step);
        let pos = t.len() - 1;
        let new = m.allocate_slots(1, &t, 1, None).unwrap();
        let want = usize::from(pos.is_multiple_of(4));
        assert_eq!(new.len(), want, "position {pos}");
        assert_eq!(m.block_table(1).len(), pos / 4 + 1);
        assert_eq!(m.num_computed_slots(1), pos + 1);
    }
}

#[test]
fn decoded_blocks_are_cached_once_full() {
    let mut m = KvCacheManager::new(10, 2, true);
    let mut t = vec![1, 2, 3];
    m.allocate_slots(1, &t, 3, None).unwrap();
    assert_eq!(m.pool().num_cached(), 1);
    t.push(4);
    m.allocate_slots(1, &t, 1, None).unwrap();
    assert_eq!(m.pool().num_cached(), 2);
    assert_eq!(
        m.get_computed_blocks(&[1, 2, 3, 4, 5]).num_computed_tokens,
        4
    );
}

#[test]
fn chunked_prefill_hashes_only_filled_blocks() {
    let mut m = KvCacheManager::new(10, 4, true);
    let p = toks(0, 12);
    m.allocate_slots(1, &p, 6, None).unwrap(); // 1.5 blocks scheduled
    assert_eq!(m.pool().num_cached(), 1);
    assert_eq!(m.block_table(1).len(), 2);
    m.allocate_slots(1, &p, 6, None).unwrap();
    assert_eq!(m.pool().num_cached(), 3);
    assert_eq!(m.block_table(1).len(), 3);
}

#[test]
fn concurrent_duplicates_still_chain() {
    // Two requests compute the same prompt before either is cached; the second's blocks are
    // duplicates, yet its later (own) blocks must be findable after the shared prefix.
    let mut m = KvCacheManager::new(10, 2, true);
    let p = vec![1, 2, 3, 4, 5];
    m.allocate_slots(1, &p, 2, None).unwrap(); // caches [1, 2] only
    m.allocate_slots(2, &p, 5, None).unwrap(); // duplicate [1, 2], new [3, 4]
    assert_eq!(m.pool().num_cached(), 2);
    assert_eq!(
        m.get_computed_blocks(&[1, 2, 3, 4, 9]).num_computed_tokens,
        4
    );
}

#[test]
fn preempted_request_finds_its_own_blocks() {
    let mut m = KvCacheManager::new(6, 2, true);
    let mut t = vec![1, 2, 3];
    m.allocate_slots(1, &t, 3, None).unwrap();
    t.extend([4, 5]); // two decoded tokens: positions 3 and 4
    m.allocate_slots(1, &t, 1, None).unwrap();
    m.allocate_slots(1, &t, 1, None).unwrap();
    m.free(1);
    let c = m.get_computed_blocks(&t);
    assert_eq!(c.num_computed_tokens, 4);
    m.allocate_slots(1, &t, t.len() - 4, Some(&c)).unwrap();
    assert_eq!(&m.block_table(1)[..2], &c.blocks[..]);
}

#[test]
fn reset_prefix_cache_forgets_everything_when_idle() {
    let mut m = KvCacheManager::new(4, 2, true);
    admit(&mut m, 1, &[1, 2, 3]).unwrap();
    assert!(!m.reset_prefix_cache());
    m.free(1);
    assert!(m.reset_prefix_cache());
    assert_eq!(m.get_computed_blocks(&[1, 2, 3]).num_computed_tokens, 0);
}

#[test]
fn truncated_slots_are_reused_and_never_cached() {
    let mut m = KvCacheManager::new(10, 4, true);
    // 6 known tokens computed, the 7th (last sampled) and 5 draft slots reserved: 12 slots.
    let t = toks(0, 7);
    m.allocate_slots(1, &t[..6], 6, None).unwrap();
    m.allocate_slots(1, &t, 6, None).unwrap();
    assert_eq!((m.num_computed_slots(1), m.block_table(1).len()), (12, 3));
    // Only block 0 holds 4 known tokens; blocks 1 and 2 hold drafts and are not cached.
    let probe: Vec<TokenId> = toks(0, 13);
    assert_eq!(m.get_computed_blocks(&probe).num_computed_tokens, 4);
    // Two drafts accepted: 9 slots are real; the next allocation grows from there, in the
    // blocks already held.
    m.truncate_slots(1, 9);
    assert_eq!(m.num_computed_slots(1), 9);
    m.truncate_slots(1, 20); // more than reserved: ignored
    m.truncate_slots(7, 1); // unknown: ignored
    assert_eq!(m.num_computed_slots(1), 9);
    assert!(m
        .allocate_slots(1, &toks(0, 10), 3, None)
        .unwrap()
        .is_empty());
    assert_eq!((m.num_computed_slots(1), m.block_table(1).len()), (12, 3));
}
