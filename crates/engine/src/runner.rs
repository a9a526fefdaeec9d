//! The model runner: turns the scheduler's output into one forward pass over all scheduled tokens
//! of all requests, and hands back the logits rows the engine asked for.

use std::ops::Range;

use tokenfab_models::{Executor, ForwardBatch, SeqSlice};
use tokenfab_scheduler::SchedulerOutput;

use crate::error::Result;
use crate::profile::{EnginePhase, StepTimer};

pub(crate) struct ModelRunner {
    pub exec: Box<dyn Executor>,
    // Flat batch buffers, reused across steps.
    tokens: Vec<u32>,
    positions: Vec<u32>,
    logits_rows: Vec<usize>,
    /// (scheduled sequences,) each one's rows of the step's logits.
    rows: Vec<Range<usize>>,
}

/// Logits of one step, borrowed from the executor until the next step: for scheduled sequence
/// `i`, rows `rows[i]` of `logits` (each `vocab` wide), in position order. Empty when the engine
/// wanted none for it.
pub(crate) struct StepLogits<'a> {
    pub rows: &'a [Range<usize>],
    /// (total rows, vocab)
    pub logits: &'a mut [f32],
    pub vocab: usize,
}

impl StepLogits<'_> {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.logits[r * self.vocab..(r + 1) * self.vocab]
    }
}

impl ModelRunner {
    pub fn new(exec: Box<dyn Executor>) -> Self {
        Self {
            exec,
            tokens: Vec::new(),
            positions: Vec::new(),
            logits_rows: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Runs every scheduled token. `all_rows(i)` says whether sequence `i` wants the logits of
    /// every scheduled row (prompt log-probabilities); otherwise, when it samples, it gets its
    /// last row and one row per draft token before it (the rows that verify the draft), and
    /// nothing when it does not. Laps `Batch` and `Forward` on `timer`, and hands the pass its
    /// forward hook.
    pub fn execute(
        &mut self,
        out: &SchedulerOutput,
        all_rows: impl Fn(usize) -> bool,
        timer: &mut StepTimer,
    ) -> Result<StepLogits<'_>> {
        self.tokens.clear();
        self.positions.clear();
        self.logits_rows.clear();
        self.rows.clear();
        let mut seqs = Vec::with_capacity(out.scheduled.len());
        for (i, s) in out.scheduled.iter().enumerate() {
            let first = self.tokens.len();
            self.tokens.extend_from_slice(&s.tokens);
            self.positions
                .extend((s.start..s.start + s.tokens.len()).map(|p| p as u32));
            let last = self.tokens.len();
            seqs.push(SeqSlice {
                rows: first..last,
                block_table: &s.block_table,
            });
            let lo = self.logits_rows.len();
            if all_rows(i) {
                self.logits_rows.extend(first..last);
            } else if s.sample {
                self.logits_rows.extend(last - 1 - s.num_draft..last);
            }
            self.rows.push(lo..self.logits_rows.len());
        }
        let batch = ForwardBatch {
            tokens: &self.tokens,
            positions: &self.positions,
            seqs: &seqs,
            logits_rows: &self.logits_rows,
        };
        let vocab = self.exec.config().vocab_size;
        timer.lap(EnginePhase::Batch);
        let logits = self.exec.forward_profiled(&batch, timer.forward_hook())?;
        timer.lap(EnginePhase::Forward);
        Ok(StepLogits {
            rows: &self.rows,
            logits,
            vocab,
        })
    }
}
