//! What one forward pass computes: flat token rows from any number of sequences.

use std::ops::Range;

use tokenfab_types::{BlockId, TokenId};

use crate::error::{Error, Result};

/// One sequence's part of a batch.
#[derive(Clone, Debug)]
pub struct SeqSlice<'a> {
    /// Rows of the batch (indices into `ForwardBatch::tokens`) that belong to this sequence, in
    /// position order.
    pub rows: Range<usize>,
    /// Physical KV block of each logical block of the sequence, covering every position up to the
    /// last one computed in this batch.
    pub block_table: &'a [BlockId],
}

/// The inputs of one forward pass. Token `t` sits at `positions[t]` of its sequence and attends to
/// every earlier position of the same sequence (already in the KV cache or earlier in this batch).
#[derive(Clone, Debug)]
pub struct ForwardBatch<'a> {
    /// (n_tokens,) token ids.
    pub tokens: &'a [TokenId],
    /// (n_tokens,) position of each token in its sequence.
    pub positions: &'a [u32],
    /// The sequences, their rows contiguous and in order.
    pub seqs: &'a [SeqSlice<'a>],
    /// Rows whose next-token logits are wanted, in output order.
    pub logits_rows: &'a [usize],
}

impl ForwardBatch<'_> {
    /// Every token is inside a vocabulary of `vocab` ids.
    pub(crate) fn check_tokens(&self, vocab: usize) -> Result<()> {
        match self.tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(tok) => Err(Error::Batch(format!(
                "token {tok} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// Checks shapes against a KV pool; writes, per row, its sequence index and its KV slot into
    /// caller-owned vectors (reused across steps: no allocation once they have grown).
    pub(crate) fn plan_into(
        &self,
        block_size: usize,
        num_blocks: usize,
        seq_of: &mut Vec<usize>,
        slots: &mut Vec<usize>,
    ) -> Result<()> {
        let n = self.tokens.len();
        if self.positions.len() != n {
            return Err(Error::Batch(format!(
                "{} positions for {n} tokens",
                self.positions.len()
            )));
        }
        seq_of.clear();
        seq_of.resize(n, usize::MAX);
        slots.clear();
        slots.resize(n, 0);
        let mut next = 0;
        for (s, seq) in self.seqs.iter().enumerate() {
            if seq.rows.start != next || seq.rows.end > n || seq.rows.is_empty() {
                return Err(Error::Batch(format!(
                    "sequence {s} rows {:?} are not contiguous after row {next}",
                    seq.rows
                )));
            }
            next = seq.rows.end;
            for t in seq.rows.clone() {
                let p = self.positions[t] as usize;
                if t > seq.rows.start && p != self.positions[t - 1] as usize + 1 {
                    return Err(Error::Batch(format!(
                        "row {t}: positions must be consecutive"
                    )));
                }
                let block = *seq.block_table.get(p / block_size).ok_or_else(|| {
                    Error::Batch(format!("sequence {s}: no KV block for position {p}"))
                })? as usize;
                if block >= num_blocks {
                    return Err(Error::Batch(format!(
                        "block {block} is outside the pool of {num_blocks}"
                    )));
                }
                seq_of[t] = s;
                slots[t] = block * block_size + p % block_size;
            }
            // Attention reads every earlier position too: their blocks must be in the pool.
            let last = self.positions[seq.rows.end - 1] as usize;
            if let Some(&b) = seq.block_table[..=last / block_size]
                .iter()
                .find(|&&b| b as usize >= num_blocks)
            {
                return Err(Error::Batch(format!(
                    "sequence {s}: block {b} is outside the pool of {num_blocks}"
                )));
            }
        }
        if next != n {
            return Err(Error::Batch(format!(
                "rows {next}..{n} belong to no sequence"
            )));
        }
        if let Some(&r) = self.logits_rows.iter().find(|&&r| r >= n) {
            return Err(Error::Batch(format!(
                "logits row {r} is outside the batch of {n}"
            )));
        }
        Ok(())
    }
}
