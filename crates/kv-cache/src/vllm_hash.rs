//! vLLM's block hashes (`vllm/v1/core/kv_cache_utils.py` `hash_block_tokens`), computed beside
//! tokenfab's own 64-bit chain so that KV-cache events name blocks the way vLLM does and an
//! indexer written for vLLM finds the same keys for the same tokens.
//!
//! `hash(block) = H(serialize((parent_hash, tuple(token_ids), extra_keys)))`, with the first
//! block's parent replaced by `NONE_HASH = H(serialize(PYTHONHASHSEED))` (random when the seed is
//! unset, as in vLLM). `H` and `serialize` are set by `--prefix-caching-hash-algo`:
//! `sha256` (pickle protocol 5), `sha256_cbor` (canonical CBOR), `sha256_msgpack` (msgspec's
//! MessagePack) and the `xxhash*` variants (XXH3-128 instead of SHA-256). tokenfab has no LoRA,
//! multimodal input or cache salt, so `extra_keys` is always `None`. Events carry the low 64 bits
//! of a hash (its last 8 bytes, big-endian), as vLLM does by default
//! (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`).
//!
//! These hashes only name blocks to the outside; cache hits are still decided by the verified
//! chain of `block_pool.rs`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use tokenfab_types::TokenId;

/// The serialization and hash of `--prefix-caching-hash-algo`, with vLLM's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgo {
    /// SHA-256 of Python's pickle (protocol 5): vLLM's default.
    Sha256,
    /// SHA-256 of canonical CBOR: the one any language reproduces from token ids alone.
    Sha256Cbor,
    /// SHA-256 of msgspec's MessagePack.
    Sha256Msgpack,
    /// XXH3-128 of pickle.
    Xxhash,
    /// XXH3-128 of canonical CBOR.
    XxhashCbor,
    /// XXH3-128 of msgspec's MessagePack.
    XxhashMsgpack,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 6] = [
        HashAlgo::Sha256,
        HashAlgo::Sha256Cbor,
        HashAlgo::Sha256Msgpack,
        HashAlgo::Xxhash,
        HashAlgo::XxhashCbor,
        HashAlgo::XxhashMsgpack,
    ];

    /// vLLM's name for it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha256Cbor => "sha256_cbor",
            HashAlgo::Sha256Msgpack => "sha256_msgpack",
            HashAlgo::Xxhash => "xxhash",
            HashAlgo::XxhashCbor => "xxhash_cbor",
            HashAlgo::XxhashMsgpack => "xxhash_msgpack",
        }
    }

    fn format(self) -> Format {
        match self {
            HashAlgo::Sha256 | HashAlgo::Xxhash => Format::Pickle,
            HashAlgo::Sha256Cbor | HashAlgo::XxhashCbor => Format::Cbor,
            HashAlgo::Sha256Msgpack | HashAlgo::XxhashMsgpack => Format::Msgpack,
        }
    }

    fn digest(self, bytes: &[u8]) -> FullHash {
        match self {
            HashAlgo::Sha256 | HashAlgo::Sha256Cbor | HashAlgo::Sha256Msgpack => {
                FullHash::new(&Sha256::digest(bytes))
            }
            // Python's `xxh3_128_digest` is the 128-bit value in big-endian order.
            _ => FullHash::new(&xxhash_rust::xxh3::xxh3_128(bytes).to_be_bytes()),
        }
    }
}

impl FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = HashAlgo::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "`--prefix-caching-hash-algo` must be one of {}. Given: {s}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy)]
enum Format {
    Pickle,
    Cbor,
    Msgpack,
}

/// A whole vLLM block hash: 32 bytes (SHA-256, or a random `NONE_HASH`) or 16 (XXH3-128).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FullHash {
    bytes: [u8; 32],
    len: u8,
}

impl FullHash {
    /// Panics on more than 32 bytes.
    pub fn new(b: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..b.len()].copy_from_slice(b);
        Self {
            bytes,
            len: b.len() as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The value events carry: the last 8 bytes, big-endian (vLLM `maybe_convert_block_hash`).
    pub fn external(&self) -> u64 {
        let b = self.as_bytes();
        let mut last = [0u8; 8];
        let n = b.len().min(8);
        last[8 - n..].copy_from_slice(&b[b.len() - n..]);
        u64::from_be_bytes(last)
    }
}

impl fmt::Debug for FullHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Computes vLLM block hashes for one algorithm and seed.
#[derive(Clone, Debug)]
pub struct VllmHasher {
    algo: HashAlgo,
    /// Parent of every sequence's first block.
    none_hash: FullHash,
    /// Serialization of the block being hashed; reused.
    buf: Vec<u8>,
}

impl VllmHasher {
    /// `NONE_HASH = H(serialize(seed))`: vLLM's value when `PYTHONHASHSEED=seed`.
    pub fn with_seed(algo: HashAlgo, seed: &str) -> Self {
        let mut buf = Vec::new();
        match algo.format() {
            Format::Pickle => pickle_str(&mut buf, seed),
            Format::Cbor => cbor_head(&mut buf, 3, seed.len() as u64),
            Format::Msgpack => msgpack_str_head(&mut buf, seed.len()),
        }
        if !matches!(algo.format(), Format::Pickle) {
            buf.extend_from_slice(seed.as_bytes());
        }
        let none_hash = algo.digest(&buf);
        Self {
            algo,
            none_hash,
            buf,
        }
    }

    /// With a given `NONE_HASH` (vLLM draws 32 random bytes when `PYTHONHASHSEED` is unset).
    pub fn with_none_hash(algo: HashAlgo, none_hash: FullHash) -> Self {
        Self {
            algo,
            none_hash,
            buf: Vec::new(),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn none_hash(&self) -> FullHash {
        self.none_hash
    }

    /// The hash of a full block of `tokens` after `parent` (`None`: the sequence's first block).
    pub fn hash_block(&mut self, parent: Option<&FullHash>, tokens: &[TokenId]) -> FullHash {
        let parent = parent.unwrap_or(&self.none_hash).as_bytes();
        self.buf.clear();
        match self.algo.format() {
            Format::Pickle => pickle_block(&mut self.buf, parent, tokens),
            Format::Cbor => cbor_block(&mut self.buf, parent, tokens),
            Format::Msgpack => msgpack_block(&mut self.buf, parent, tokens),
        }
        self.algo.digest(&self.buf)
    }
}

/// Canonical CBOR of `(parent, tuple(tokens), None)`: a 3-array of a byte string, an array of
/// unsigned ints (shortest form) and null, as `cbor2.dumps(.., canonical=True)` writes it.
fn cbor_block(out: &mut Vec<u8>, parent: &[u8], tokens: &[TokenId]) {
    out.push(0x83);
    cbor_head(out, 2, parent.len() as u64);
    out.extend_from_slice(parent);
    cbor_head(out, 4, tokens.len() as u64);
    for &t in tokens {
        cbor_head(out, 0, u64::from(t));
    }
    out.push(0xf6);
}

/// A CBOR item head: major type and argument, shortest encoding.
fn cbor_head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// msgspec's MessagePack of `(parent, tokens, None)`: fixarray 3, bin, array of the shortest
/// unsigned ints, nil.
fn msgpack_block(out: &mut Vec<u8>, parent: &[u8], tokens: &[TokenId]) {
    out.push(0x93);
    msgpack_bin(out, parent);
    crate::msgpack::array_head(out, tokens.len());
    for &t in tokens {
        crate::msgpack::uint(out, u64::from(t));
    }
    out.push(0xc0);
}

fn msgpack_bin(out: &mut Vec<u8>, b: &[u8]) {
    match b.len() {
        n if n <= 0xff => out.extend_from_slice(&[0xc4, n as u8]),
        n if n <= 0xffff => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

fn msgpack_str_head(out: &mut Vec<u8>, n: usize) {
    crate::msgpack::str_head(out, n);
}

// Pickle opcodes (Python's `pickle.py`), protocol 5 as `pickle.HIGHEST_PROTOCOL` writes it.
const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MEMOIZE: u8 = 0x94;
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const TUPLE1: u8 = 0x85;
const TUPLE3: u8 = 0x87;
const NONE: u8 = b'N';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';

/// CPython's C pickler starts a new frame past 64 KiB; one block stays far below it (a token is
/// at most 7 bytes, so a frame splits only past ~9,000 tokens a block, refused by the engine).
pub const PICKLE_MAX_BLOCK_TOKENS: usize = 8192;

/// `pickle.dumps((parent, tuple(tokens), None), protocol=5)`.
fn pickle_block(out: &mut Vec<u8>, parent: &[u8], tokens: &[TokenId]) {
    pickle_framed(out, |body| {
        if parent.len() < 256 {
            body.extend_from_slice(&[SHORT_BINBYTES, parent.len() as u8]);
        } else {
            body.push(BINBYTES);
            body.extend_from_slice(&(parent.len() as u32).to_le_bytes());
        }
        body.extend_from_slice(parent);
        body.push(MEMOIZE);
        match tokens.len() {
            0 => body.push(EMPTY_TUPLE),
            n @ 1..=3 => {
                tokens.iter().for_each(|&t| pickle_int(body, t));
                body.extend_from_slice(&[TUPLE1 + (n as u8 - 1), MEMOIZE]);
            }
            _ => {
                body.push(MARK);
                tokens.iter().for_each(|&t| pickle_int(body, t));
                body.extend_from_slice(&[TUPLE, MEMOIZE]);
            }
        }
        body.extend_from_slice(&[NONE, TUPLE3, MEMOIZE]);
    });
}

/// `pickle.dumps(s, protocol=5)` for a str.
fn pickle_str(out: &mut Vec<u8>, s: &str) {
    pickle_framed(out, |body| {
        if s.len() < 256 {
            body.extend_from_slice(&[SHORT_BINUNICODE, s.len() as u8]);
        } else {
            body.push(BINUNICODE);
            body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        body.extend_from_slice(s.as_bytes());
        body.push(MEMOIZE);
    });
}

/// PROTO 5, one FRAME holding `body` and STOP (the frame header is written only for a frame of
/// 4 bytes or more, always the case here).
fn pickle_framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&[PROTO, 5, FRAME]);
    let len_at = out.len();
    out.extend_from_slice(&[0; 8]);
    body(out);
    out.push(STOP);
    let len = (out.len() - len_at - 8) as u64;
    out[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
}

/// A non-negative Python int as pickle writes it: the shortest of BININT1, BININT2, BININT
/// (signed 32-bit), else LONG1 with minimal two's-complement little-endian bytes.
fn pickle_int(out: &mut Vec<u8>, v: u32) {
    if v <= 0xff {
        out.extend_from_slice(&[BININT1, v as u8]);
    } else if v <= 0xffff {
        out.push(BININT2);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= i32::MAX as u32 {
        out.push(BININT);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        // 2^31..2^32: four value bytes plus a zero byte keeping the sign positive.
        out.extend_from_slice(&[LONG1, 5]);
        out.extend_from_slice(&v.to_le_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Byte strings from Python 3.11: `pickle.dumps(.., protocol=pickle.HIGHEST_PROTOCOL)`,
    /// `cbor2.dumps(.., canonical=True)` (cbor2 6.3) and `msgspec.msgpack.encode` (0.23).
    #[test]
    fn serializations_match_python() {
        let p = [1u8; 32];
        let toks = [1, 2, 300, 70000, 705032704];
        let mut b = Vec::new();
        cbor_block(&mut b, &p, &toks);
        assert_eq!(
            hex(&b),
            "835820".to_string() + &"01".repeat(32) + "85010219012c1a000111701a2a05f200f6"
        );
        b.clear();
        pickle_block(&mut b, &p, &toks);
        assert_eq!(
            hex(&b),
            "8005953b000000000000004320".to_string()
                + &"01".repeat(32)
                + "94284b014b024d2c014a701101004a00f2052a74944e87942e"
        );
        let two = "20".to_string() + &"02".repeat(32) + "94";
        for (toks, want) in [
            (
                &[5u32][..],
                concat!("952b00000000000000", "4b0585944e87942e"),
            ),
            (&[][..], concat!("952800000000000000", "294e87942e")),
            (
                &[1, 2, 3][..],
                concat!("952f00000000000000", "4b014b024b0387944e87942e"),
            ),
            // 2^31 - 1 is the last BININT; 2^31 needs LONG1 with a sign byte.
            (
                &[i32::MAX as u32, 1 << 31][..],
                concat!("953500000000000000", "4affffff7f8a05000000800086944e87942e"),
            ),
        ] {
            b.clear();
            pickle_block(&mut b, &[2u8; 32], toks);
            let (frame, body) = want.split_at(18);
            assert_eq!(hex(&b), format!("8005{frame}43{two}{body}"), "{toks:?}");
        }
        b.clear();
        pickle_str(&mut b, &"x".repeat(300));
        assert!(hex(&b).starts_with("8005953301000000000000582c01000078"));
        b.clear();
        pickle_str(&mut b, "0");
        assert_eq!(hex(&b), "80059505000000000000008c0130942e");
        b.clear();
        msgpack_block(&mut b, &[1, 1], &[1, 200, 70000]);
        assert_eq!(hex(&b), "93c40201019301ccc8ce00011170c0");
    }

    /// `xxhash.xxh3_128_digest(b"abc")`.
    #[test]
    fn xxh3_digest_is_big_endian() {
        let h = HashAlgo::XxhashCbor.digest(b"abc");
        assert_eq!(hex(h.as_bytes()), "06b05ab6733a618578af5f94892f3950");
        assert_eq!(h.external(), 0x78af5f94892f3950);
    }

    /// Block hashes of tokens 0..16 and then 16..32 with `PYTHONHASHSEED=0`, from a Python
    /// implementation of vLLM's `hash_block_tokens` (pickle, cbor2, msgspec, hashlib, xxhash).
    #[test]
    fn chains_match_python() {
        let first: Vec<TokenId> = (0..16).collect();
        let second: Vec<TokenId> = (16..32).collect();
        for (algo, want) in [
            (HashAlgo::Sha256, [0x6ec84ae048faaaa6, 0xafe70601eeca92c8]),
            (
                HashAlgo::Sha256Cbor,
                [0xb0147556276afc9c, 0x192dd62904fcccac],
            ),
            (
                HashAlgo::Sha256Msgpack,
                [0x3177107c069d2ae4, 0xe2ed585731e727f0],
            ),
            (HashAlgo::Xxhash, [0xacbb3639ed2bff4d, 0xd5efd012fb00201a]),
            (
                HashAlgo::XxhashCbor,
                [0x39d823615ede61ce, 0x89df867a21beb72b],
            ),
            (
                HashAlgo::XxhashMsgpack,
                [0xe4ad8de4c81aa855, 0x7e008eebb0e85aa6],
            ),
        ] {
            let mut h = VllmHasher::with_seed(algo, "0");
            let a = h.hash_block(None, &first);
            let b = h.hash_block(Some(&a), &second);
            assert_eq!([a.external(), b.external()], want, "{algo}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for a in HashAlgo::ALL {
            assert_eq!(a.name().parse::<HashAlgo>(), Ok(a));
        }
        let e = "md5".parse::<HashAlgo>().unwrap_err();
        assert!(e.contains("sha256_cbor") && e.contains("md5"), "{e}");
    }

    #[test]
    fn chain_depends_on_parent_and_seed() {
        let mut h = VllmHasher::with_seed(HashAlgo::Sha256Cbor, "0");
        let a = h.hash_block(None, &[1, 2]);
        let b = h.hash_block(Some(&a), &[1, 2]);
        assert_ne!(a, b);
        assert_eq!(h.hash_block(None, &[1, 2]), a);
        let mut other = VllmHasher::with_seed(HashAlgo::Sha256Cbor, "1");
        assert_ne!(other.hash_block(None, &[1, 2]), a);
        assert_eq!(a.as_bytes().len(), 32);
        let mut x = VllmHasher::with_seed(HashAlgo::XxhashCbor, "0");
        assert_eq!(x.hash_block(None, &[1, 2]).as_bytes().len(), 16);
    }
}
