//! The model runner: turns the scheduler's output into one forward pass over all scheduled tokens
//! of all requests, and hands back the logits rows the engine asked for, or, when the executor
//! samples on the device, each row's token and the logits of the rows the host still reads.

use std::collections::HashMap;
use std::ops::Range;

use tokenfab_models::{DeviceSampling, Executor, ForwardBatch, SeqSlice, TokenMasks};
use tokenfab_scheduler::SchedulerOutput;
use tokenfab_types::{RequestId, TokenId};

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
    /// (batch rows,) or empty: async scheduling's row map for the device ([`Self::feed`]).
    feed: Vec<i32>,
}

/// Where the token a request sampled in the step just waited for is, for the next step's row
/// that holds its placeholder (async scheduling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Still on the device: that step's logits row.
    Device(u32),
    /// Sampled on the host (the device handed the row back).
    Host(TokenId),
}

/// Logits of one step, borrowed from the executor until the next step: for scheduled sequence
/// `i`, rows `rows[i]` of the step's logits rows (each `vocab` wide), in position order. Empty
/// when the engine wanted none for it. After device sampling, a row sampled on the device has
/// its token in `device` and no logits here.
pub(crate) struct StepLogits<'a> {
    pub rows: &'a [Range<usize>],
    /// (rows on the host, vocab)
    pub logits: &'a mut [f32],
    pub vocab: usize,
    /// Device sampling: (rows,) where each row's logits sit in `logits` (`usize::MAX`: none);
    /// `None`: every row's, in order.
    pub host_at: Option<&'a [usize]>,
    /// Device sampling: (rows,) each row's token ([`HOST`]: the host samples it) and its
    /// log-probability.
    pub device: Option<(&'a [u32], &'a [f32])>,
}

pub(crate) use tokenfab_backend::cuda::sampling::HOST;

impl StepLogits<'_> {
    fn at(&self, r: usize) -> Option<usize> {
        match self.host_at {
            None => Some(r),
            Some(h) => h.get(r).copied().filter(|&a| a != usize::MAX),
        }
    }

    /// Row `r`'s logits; the row must be one the host reads.
    pub fn row(&self, r: usize) -> &[f32] {
        let a = self
            .at(r)
            .expect("a row sampled on the device has no logits on the host");
        &self.logits[a * self.vocab..(a + 1) * self.vocab]
    }

    /// Row `r`'s logits when they are on the host.
    pub fn row_mut(&mut self, r: usize) -> Option<&mut [f32]> {
        let (a, v) = (self.at(r)?, self.vocab);
        Some(&mut self.logits[a * v..(a + 1) * v])
    }

    /// The token the device sampled for row `r` and its log-probability, if it did.
    pub fn device_token(&self, r: usize) -> Option<(u32, f32)> {
        let (t, l) = self.device?;
        Some((t[r], l[r])).filter(|&(t, _)| t != HOST)
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
            feed: Vec::new(),
        }
    }

    /// Each scheduled sequence's logits rows, as last planned.
    pub fn rows(&self) -> &[Range<usize>] {
        &self.rows
    }

    /// Whether the executor samples on the device.
    pub fn samples_on_device(&mut self) -> bool {
        self.exec.device_sampler().is_some()
    }

    /// Lays out every scheduled token and the logits rows. `all_rows(i)` says whether sequence
    /// `i` wants the logits of every scheduled row (prompt log-probabilities); otherwise, when it
    /// samples, it gets its last row and one row per draft token before it (the rows that verify
    /// the draft), and nothing when it does not. Returns each sequence's logits rows.
    pub fn plan(
        &mut self,
        out: &SchedulerOutput,
        all_rows: impl Fn(usize) -> bool,
    ) -> &[Range<usize>] {
        self.tokens.clear();
        self.positions.clear();
        self.logits_rows.clear();
        self.rows.clear();
        for (i, s) in out.scheduled.iter().enumerate() {
            let first = self.tokens.len();
            self.tokens.extend_from_slice(&s.tokens);
            self.positions
                .extend((s.start..s.start + s.tokens.len()).map(|p| p as u32));
            let last = self.tokens.len();
            let lo = self.logits_rows.len();
            if all_rows(i) {
                self.logits_rows.extend(first..last);
            } else if s.sample {
                self.logits_rows.extend(last - 1 - s.num_draft..last);
            }
            self.rows.push(lo..self.logits_rows.len());
        }
        &self.rows
    }

    /// Async scheduling: resolves the placeholder rows of the planned batch from where each
    /// request's token is (`fed`): one still on the device goes in the row map (the row's
    /// uploaded token, 0, is replaced there), one the host sampled is uploaded. A request with no
    /// entry ended meanwhile: its row runs on token 0 and is discarded.
    pub fn feed(&mut self, out: &SchedulerOutput, fed: &HashMap<RequestId, Fed>) {
        self.feed.clear();
        let mut end = 0;
        for s in &out.scheduled {
            end += s.tokens.len();
            if !s.placeholder {
                continue;
            }
            let row = end - 1 - s.num_draft;
            self.feed.resize(self.tokens.len(), -1);
            self.tokens[row] = 0;
            match fed.get(&s.id) {
                Some(&Fed::Device(r)) => self.feed[row] = r as i32,
                Some(&Fed::Host(t)) => self.tokens[row] = t,
                None => {}
            }
        }
    }

    /// Plans and runs every scheduled token (see [`Self::plan`]), the host sampling from the
    /// logits. Laps `Batch` and `Forward` on `timer`, and hands the pass its forward hook.
    pub fn execute(
        &mut self,
        out: &SchedulerOutput,
        all_rows: impl Fn(usize) -> bool,
        timer: &mut StepTimer,
    ) -> Result<StepLogits<'_>> {
        self.plan(out, all_rows);
        let vocab = self.exec.config().vocab_size;
        let seqs = seqs_of(out);
        let batch = ForwardBatch {
            tokens: &self.tokens,
            positions: &self.positions,
            seqs: &seqs,
            logits_rows: &self.logits_rows,
        };
        timer.lap(EnginePhase::Batch);
        let logits = self.exec.forward_profiled(&batch, timer.forward_hook())?;
        timer.lap(EnginePhase::Forward);
        Ok(StepLogits {
            rows: &self.rows,
            logits,
            vocab,
            host_at: None,
            device: None,
        })
    }

    /// Queues the planned (and fed) batch with its sampling inputs on the device sampler, without
    /// waiting for it. Laps `Batch`.
    pub fn launch(
        &mut self,
        out: &SchedulerOutput,
        s: &DeviceSampling,
        timer: &mut StepTimer,
    ) -> Result<()> {
        let seqs = seqs_of(out);
        let batch = ForwardBatch {
            tokens: &self.tokens,
            positions: &self.positions,
            seqs: &seqs,
            logits_rows: &self.logits_rows,
        };
        let s = DeviceSampling {
            feed: &self.feed,
            ..*s
        };
        let d = self.exec.device_sampler().expect("checked by the caller");
        d.launch(&batch, &s)?;
        timer.lap(EnginePhase::Batch);
        Ok(())
    }

    /// Masks and samples the launched batch on the device and waits for it. Laps `Forward`.
    pub fn sample(&mut self, masks: &TokenMasks, timer: &mut StepTimer) -> Result<StepLogits<'_>> {
        let vocab = self.exec.config().vocab_size;
        let d = self.exec.device_sampler().expect("checked by the caller");
        let got = d.sample(masks)?;
        timer.lap(EnginePhase::Forward);
        Ok(StepLogits {
            rows: &self.rows,
            logits: got.logits,
            vocab,
            host_at: Some(got.host_at),
            device: Some((got.tokens, got.logprobs)),
        })
    }
}

/// Each scheduled sequence's rows of the planned batch and its block table.
fn seqs_of(out: &SchedulerOutput) -> Vec<SeqSlice<'_>> {
    let mut first = 0;
    out.scheduled
        .iter()
        .map(|s| {
            first += s.tokens.len();
            SeqSlice {
                rows: first - s.tokens.len()..first,
                block_table: &s.block_table,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tokenfab_loader::Gguf;
    use tokenfab_models::testing::tiny_llama;
    use tokenfab_models::{CpuExecutor, KvDtype, Model};
    use tokenfab_scheduler::{ScheduledSeq, PLACEHOLDER};

    use super::*;

    fn seq(id: RequestId, tokens: Vec<u32>, placeholder: bool) -> ScheduledSeq {
        ScheduledSeq {
            id,
            start: 4,
            tokens,
            num_draft: 0,
            block_table: vec![0, 1],
            sample: true,
            num_cached_tokens: 0,
            placeholder,
        }
    }

    /// Placeholder rows are fed from the device's row, or take the host's token; a request with
    /// no entry (it ended) runs on token 0; other rows keep their tokens and feed nothing; a
    /// step with no placeholder has no map at all.
    #[test]
    fn placeholder_rows_are_fed_or_uploaded() {
        let g = Gguf::from_bytes(tiny_llama("llama", 50).to_bytes()).unwrap();
        let exec = CpuExecutor::new(Model::from_gguf(&g).unwrap(), KvDtype::F32, 4, 8).unwrap();
        let mut r = ModelRunner::new(Box::new(exec));
        let out = SchedulerOutput {
            scheduled: vec![
                seq(1, vec![PLACEHOLDER], true),
                seq(2, vec![7, 8, 9], false),
                seq(3, vec![PLACEHOLDER], true),
                seq(4, vec![PLACEHOLDER], true),
            ],
            ..Default::default()
        };
        r.plan(&out, |_| false);
        let fed = HashMap::from([(1, Fed::Device(5)), (3, Fed::Host(42))]);
        r.feed(&out, &fed);
        assert_eq!(r.tokens, [0, 7, 8, 9, 42, 0]);
        assert_eq!(r.feed, [5, -1, -1, -1, -1, -1]);
        let sync = SchedulerOutput {
            scheduled: vec![seq(2, vec![7, 8, 9], false)],
            ..Default::default()
        };
        r.plan(&sync, |_| false);
        r.feed(&sync, &fed);
        assert!(r.feed.is_empty());
        assert_eq!(r.tokens, [7, 8, 9]);
    }
}
