//! Hashes of full KV blocks, chained so that equal hashes stand for equal whole prefixes.
//!
//! `hash(block i) = H(hash(block i-1), tokens of block i)`. The hash is only an index: a
//! 64-bit non-cryptographic hash can collide (or be made to collide on purpose), so the block
//! pool verifies every hit against the block's stored tokens and the identity of its parent block
//! (see `BlockPool::lookup`). A collision therefore costs a cache miss, never wrong KV data.

use tokenfab_types::TokenId;

/// Hash of a full block together with its whole prefix.
pub type BlockHash = u64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of one block given its parent's hash (`None` for the first block of a sequence).
///
/// Stable across runs and platforms (FNV-1a over little-endian bytes, then a splitmix finalizer).
/// A tag byte separates "no parent" from every parent value, and the token count is hashed too.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[TokenId]) -> BlockHash {
    let mut h = FNV_OFFSET;
    h = match parent {
        None => fnv_bytes(h, &[0]),
        Some(p) => fnv_bytes(fnv_bytes(h, &[1]), &p.to_le_bytes()),
    };
    h = fnv_bytes(h, &(tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h = fnv_bytes(h, &t.to_le_bytes());
    }
    mix(h)
}

/// Chained hashes of the first `max_blocks` full blocks of `tokens` (fewer if `tokens` is shorter).
/// Element `i` covers `tokens[..(i + 1) * block_size]`.
pub fn hash_full_blocks(
    tokens: &[TokenId],
    block_size: usize,
    max_blocks: usize,
) -> Vec<BlockHash> {
    let n = (tokens.len() / block_size).min(max_blocks);
    let mut out = Vec::with_capacity(n);
    let mut parent = None;
    for chunk in tokens.chunks_exact(block_size).take(n) {
        let h = hash_block(parent, chunk);
        out.push(h);
        parent = Some(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_deterministic() {
        assert_eq!(hash_block(None, &[1, 2, 3]), hash_block(None, &[1, 2, 3]));
        // Pinned value (computed independently in Python): the hash must not change between builds.
        assert_eq!(hash_block(None, &[1, 2, 3]), 0x41e3_b620_bcd7_4b00);
        assert_ne!(hash_block(None, &[1, 2, 3]), hash_block(None, &[3, 2, 1]));
    }

    #[test]
    fn parent_changes_the_hash() {
        let a = hash_block(None, &[7, 7]);
        let b = hash_block(None, &[8, 8]);
        assert_ne!(hash_block(Some(a), &[1, 2]), hash_block(Some(b), &[1, 2]));
        assert_ne!(hash_block(None, &[1, 2]), hash_block(Some(0), &[1, 2]));
    }

    #[test]
    fn token_count_is_part_of_the_hash() {
        assert_ne!(hash_block(None, &[0]), hash_block(None, &[0, 0]));
    }

    #[test]
    fn chain_covers_only_full_blocks() {
        let toks: Vec<TokenId> = (0..10).collect();
        let hs = hash_full_blocks(&toks, 4, usize::MAX);
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0], hash_block(None, &[0, 1, 2, 3]));
        assert_eq!(hs[1], hash_block(Some(hs[0]), &[4, 5, 6, 7]));
        assert_eq!(hash_full_blocks(&toks, 4, 1), hs[..1]);
        assert!(hash_full_blocks(&toks[..3], 4, usize::MAX).is_empty());
    }
}
