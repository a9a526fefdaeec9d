//! One request's matcher: the allowed-token mask for the next step, the sampled token consumed,
//! rollback for speculative decoding; masks of a whole step computed in parallel.

use llguidance::api::StopReason;
use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;
use rayon::prelude::*;

use crate::{Error, Result};

/// Allowed tokens as a bitset over the vocabulary: bit `t % 32` of word `t / 32` is set when
/// token `t` may be sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    /// (ceil(vocab / 32),) bit words.
    words: Vec<u32>,
    vocab: usize,
}

impl TokenMask {
    /// A mask allowing nothing.
    pub fn new(vocab: usize) -> Self {
        TokenMask {
            words: vec![0; vocab.div_ceil(32)],
            vocab,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn is_allowed(&self, token: u32) -> bool {
        let t = token as usize;
        t < self.vocab && self.words[t / 32] >> (t % 32) & 1 == 1
    }

    /// The bit words: bit `t % 32` of word `t / 32` is set when token `t` is allowed; bits past
    /// the vocabulary are clear.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// Number of allowed tokens.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The allowed ids, ascending.
    pub fn allowed(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                out.push((i * 32) as u32 + w.trailing_zeros());
                w &= w - 1;
            }
        }
        out
    }

    /// Sets disallowed logits to -inf, before penalties, logit bias and sampling, so none of
    /// them can bring a disallowed token back. Entries past the vocabulary are disallowed.
    /// Cost: one pass over words; a fully allowed word of 32 logits is skipped.
    pub fn apply(&self, logits: &mut [f32]) {
        let (head, tail) = logits.split_at_mut(self.vocab.min(logits.len()));
        tail.fill(f32::NEG_INFINITY);
        for (chunk, &w) in head.chunks_mut(32).zip(&self.words) {
            match w {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                _ => {
                    for (i, l) in chunk.iter_mut().enumerate() {
                        if w >> i & 1 == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
    }

    fn copy_from(&mut self, v: &SimpleVob) {
        let src = v.as_slice();
        let n = self.words.len().min(src.len());
        self.words[..n].copy_from_slice(&src[..n]);
        self.words[n..].fill(0);
        // Bits past the vocabulary in the last word stay clear.
        if !self.vocab.is_multiple_of(32) {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u32 << (self.vocab % 32)) - 1;
            }
        }
    }
}

/// Why a matcher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Still generating.
    No,
    /// The grammar is complete (no byte can extend it) or EOS was consumed while accepting:
    /// the request finishes with `stop`.
    Complete,
    /// llguidance gave up (a step over its fuel, an internal error): the request ends with an
    /// error.
    Failed,
}

/// The constraint state of one request. Owned by the request; never shared.
pub struct RequestMatcher {
    inner: Matcher,
    /// (vocab,) mask for the next token, valid after [`RequestMatcher::compute_mask`].
    mask: TokenMask,
    /// Matchers of one group share a lexer cache behind a mutex (see `Compiled`).
    group: u64,
}

impl std::fmt::Debug for RequestMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMatcher")
            .field("stopped", &self.inner.is_stopped())
            .finish_non_exhaustive()
    }
}

impl RequestMatcher {
    pub(crate) fn new(inner: Matcher, vocab: usize, group: u64) -> Self {
        RequestMatcher {
            inner,
            mask: TokenMask::new(vocab),
            group,
        }
    }

    /// Computes the mask of tokens allowed next (only EOS once the grammar is complete) into
    /// the matcher's own buffer. The expensive call (tens to hundreds of µs): run it for all
    /// rows of a step at once with [`compute_masks`], overlapping the forward pass.
    pub fn compute_mask(&mut self) -> Result<&TokenMask> {
        let v = self.inner.compute_mask_or_eos().map_err(matcher_error)?;
        if v.is_zero() {
            return Err(Error::Matcher("no token can continue the output".into()));
        }
        self.mask.copy_from(&v);
        Ok(&self.mask)
    }

    /// The mask from the last [`RequestMatcher::compute_mask`].
    pub fn mask(&self) -> &TokenMask {
        &self.mask
    }

    /// Advances past the sampled token. An end-of-generation token once the grammar is
    /// complete is accepted and changes nothing; a token the grammar does not allow is an error.
    pub fn consume(&mut self, token: u32) -> Result<()> {
        if self.inner.is_stopped() && self.is_eos(token) {
            return Ok(());
        }
        self.inner.consume_token(token).map_err(matcher_error)
    }

    /// Consumes tokens while the grammar allows them; returns how many it took (speculative
    /// decoding's check of draft tokens).
    pub fn try_consume(&mut self, tokens: &[u32]) -> Result<usize> {
        self.inner.try_consume_tokens(tokens).map_err(matcher_error)
    }

    /// Undoes the last `n` consumed tokens (rejected draft tokens).
    pub fn rollback(&mut self, n: usize) -> Result<()> {
        self.inner.rollback(n).map_err(matcher_error)
    }

    /// Whether the output so far is complete (EOS would be allowed now).
    pub fn is_accepting(&mut self) -> bool {
        self.inner.is_accepting().unwrap_or(false)
    }

    pub fn stop(&self) -> Stop {
        match self.inner.stop_reason() {
            StopReason::NotStopped => Stop::No,
            r if r.is_ok() => Stop::Complete,
            _ => Stop::Failed,
        }
    }

    /// The error that stopped the matcher, if one did.
    pub fn error(&self) -> Option<String> {
        self.inner.get_error()
    }

    fn is_eos(&self, token: u32) -> bool {
        self.inner
            .tok_env()
            .is_ok_and(|env| env.tok_trie().eos_tokens().contains(&token))
    }
}

fn matcher_error(e: impl std::fmt::Display) -> Error {
    Error::Matcher(e.to_string())
}

/// Computes the next mask of every row (rayon): one result per row, in order. Each row reads
/// only its own matcher, so a row's mask never depends on its neighbours. Rows sharing a lexer
/// cache run one after another, the groups in parallel, so no worker waits on a lock.
pub fn compute_masks(rows: &mut [&mut RequestMatcher]) -> Vec<Result<()>> {
    let mut tagged: Vec<(usize, &mut RequestMatcher)> =
        rows.iter_mut().map(|m| &mut **m).enumerate().collect();
    tagged.sort_by_key(|(_, m)| m.group);
    let mut groups: Vec<&mut [(usize, &mut RequestMatcher)]> =
        tagged.chunk_by_mut(|a, b| a.1.group == b.1.group).collect();
    let done: Vec<(usize, Result<()>)> = groups
        .par_iter_mut()
        .flat_map_iter(|g| {
            g.iter_mut()
                .map(|(i, m)| (*i, m.compute_mask().map(|_| ())))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out: Vec<Option<Result<()>>> = (0..rows.len()).map(|_| None).collect();
    for (i, r) in done {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every row computed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(vocab: usize, allowed: &[u32]) -> TokenMask {
        let mut v = SimpleVob::alloc(vocab);
        for &t in allowed {
            v.allow_token(t);
        }
        let mut m = TokenMask::new(vocab);
        m.copy_from(&v);
        m
    }

    #[test]
    fn apply_keeps_exactly_the_allowed_logits() {
        let allowed = [0, 5, 31, 32, 63, 64, 69];
        let m = mask_of(70, &allowed);
        assert_eq!(m.allowed(), allowed);
        assert_eq!(m.count(), allowed.len());
        // 70 tokens: three words, bits 0, 5, 31 | 0, 31 | 0, 5.
        assert_eq!(m.words(), [1 | 1 << 5 | 1 << 31, 1 | 1 << 31, 1 | 1 << 5]);
        // A row wider than the vocabulary (padded embeddings): the extra entries are masked.
        let mut logits: Vec<f32> = (0..75).map(|i| i as f32).collect();
        m.apply(&mut logits);
        for (i, &l) in logits.iter().enumerate() {
            if allowed.contains(&(i as u32)) {
                assert_eq!(l, i as f32);
            } else {
                assert_eq!(l, f32::NEG_INFINITY, "logit {i}");
            }
        }
    }

    #[test]
    fn full_words_are_left_alone() {
        let all: Vec<u32> = (0..64).collect();
        let m = mask_of(64, &all);
        let mut logits = vec![1.5f32; 64];
        m.apply(&mut logits);
        assert!(logits.iter().all(|&l| l == 1.5));
        assert!(m.is_allowed(63) && !m.is_allowed(64));
    }
}
