//! The constrained rows of a step (structured outputs and tool calls): each constrained request's
//! own matcher, the masks of all rows that sample this step computed (on the rayon pool while a
//! GPU's forward pass runs; before the pass on the CPU), applied to those rows' logits before the
//! sampler sees them (so before
//! penalties, `logit_bias` and sampling, and the logprobs are the masked distribution's, as
//! vLLM's), and each sampled token consumed.
//!
//! Why the masks can overlap the forward: a matcher's state after step N's token is known when
//! step N ends, and nothing in step N+1's forward changes it. Why they do not on the CPU: the
//! forward pass uses every pool thread and the memory bandwidth, so masks computed beside it take
//! a core from it and run ~6x slower per row (`scripts/bench-structured.sh 64 20 2`, 2 cores:
//! json/free output tok/s 0.76 overlapped, 0.84 before the pass; masks ~340 against ~58 µs per
//! row). Why a row never depends on its
//! neighbours: a mask reads only its own matcher, and free rows are never touched.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use tokenfab_scheduler::SchedulerOutput;
use tokenfab_structured::{compute_masks, RequestMatcher};
use tokenfab_types::RequestId;

use crate::metrics::Metrics;
use crate::runner::StepLogits;
use crate::sampler::Sample;

/// A step's grammar masks as the device takes them ([`tokenfab_models::TokenMasks`]).
#[derive(Default)]
pub(crate) struct DeviceMasks {
    /// The model's vocabulary (logits row width).
    pub vocab: usize,
    /// (masked rows,) logits row of each.
    pub rows: Vec<u32>,
    /// (masked rows, ceil(vocab / 32)) allowed-token bits.
    pub words: Vec<u32>,
}

/// A request whose matcher failed (a mask or a step over llguidance's limits), with the message
/// its stream ends with.
pub(crate) type Failed = Vec<(RequestId, String)>;

#[derive(Default)]
pub(crate) struct Constrained {
    matchers: HashMap<RequestId, RequestMatcher>,
    /// Scratch: (constrained rows sampling this step,) indices into `out.scheduled`.
    rows: Vec<usize>,
}

impl Constrained {
    pub fn add(&mut self, id: RequestId, m: RequestMatcher) {
        self.matchers.insert(id, m);
    }

    pub fn remove(&mut self, id: RequestId) {
        self.matchers.remove(&id);
    }

    pub fn has(&self, id: RequestId) -> bool {
        self.matchers.contains_key(&id)
    }

    /// Drops the matchers that failed this step, so that their rows are left unmasked (they do
    /// not sample).
    pub fn forget(&mut self, failed: &Failed) {
        for (id, _) in failed {
            self.matchers.remove(id);
        }
    }

    /// Computes the next-token masks of every constrained row that samples this step and runs
    /// `forward` on this thread: with `overlap`, the masks on the pool while the forward runs;
    /// without, the masks first. Returns the forward's result and the rows whose mask failed
    /// (they must not sample). Without constrained rows, just the forward.
    pub fn masks_during<T>(
        &mut self,
        out: &SchedulerOutput,
        metrics: &Metrics,
        overlap: bool,
        forward: impl FnOnce() -> T,
    ) -> (T, Failed) {
        self.rows.clear();
        self.rows.extend(
            out.scheduled
                .iter()
                .enumerate()
                .filter(|(_, s)| s.sample && self.matchers.contains_key(&s.id))
                .map(|(i, _)| i),
        );
        if self.rows.is_empty() {
            return (forward(), Vec::new());
        }
        let ids: Vec<RequestId> = self.rows.iter().map(|&i| out.scheduled[i].id).collect();
        let mut rows: Vec<(RequestId, &mut RequestMatcher)> = self
            .matchers
            .iter_mut()
            .filter(|(id, _)| ids.contains(id))
            .map(|(&id, m)| (id, m))
            .collect();
        let mut results = Vec::new();
        let mut mask_time = Duration::ZERO;
        let mut compute = || {
            let t = Instant::now();
            let mut ms: Vec<&mut RequestMatcher> = rows.iter_mut().map(|(_, m)| &mut **m).collect();
            results = compute_masks(&mut ms);
            mask_time = t.elapsed();
        };
        let (value, wait) = if overlap {
            let mut forward_end = None;
            let v = rayon::in_place_scope(|s| {
                s.spawn(|_| compute());
                let v = forward();
                forward_end = Some(Instant::now());
                v
            });
            // The step waited this long for the masks once the forward was done.
            (v, forward_end.map_or(Duration::ZERO, |f| f.elapsed()))
        } else {
            compute();
            (forward(), mask_time)
        };
        metrics.structured_mask_rows.add(rows.len() as u64);
        metrics
            .structured_mask_seconds
            .observe(mask_time.as_secs_f64());
        metrics
            .structured_mask_wait_seconds
            .observe(wait.as_secs_f64());
        let failed = rows
            .iter()
            .zip(results)
            .filter_map(|((id, _), r)| r.err().map(|e| (*id, e.to_string())))
            .collect();
        (value, failed)
    }

    /// Sets every disallowed logit of this step's constrained sampled rows to -inf. Rows whose
    /// mask failed were removed (`remove`) and are skipped.
    pub fn apply(&self, out: &SchedulerOutput, logits: &mut StepLogits) {
        for &i in &self.rows {
            let Some(m) = self.matchers.get(&out.scheduled[i].id) else {
                continue;
            };
            let last = logits.rows[i].clone().last();
            // A row sampled on the device was masked there.
            if let Some(row) = last.and_then(|r| logits.row_mut(r)) {
                m.mask().apply(row);
            }
        }
    }

    /// The masks of this step's constrained sampled rows for the device: each one's logits row
    /// (`rows[i]`: sequence i's logits rows) and its allowed tokens as bit words.
    pub fn device_masks(&self, out: &SchedulerOutput, rows: &[Range<usize>], d: &mut DeviceMasks) {
        d.rows.clear();
        d.words.clear();
        for &i in &self.rows {
            let (Some(m), Some(last)) = (
                self.matchers.get(&out.scheduled[i].id),
                rows[i].clone().last(),
            ) else {
                continue;
            };
            let mask = m.mask();
            d.rows.push(last as u32);
            // The device's row is `d.vocab` wide: a mask over more tokens is cut (its bits past
            // `d.vocab` cleared), one over fewer disallows the rest.
            let n = d.vocab.div_ceil(32);
            let src = mask.words();
            let start = d.words.len();
            d.words.extend_from_slice(&src[..src.len().min(n)]);
            d.words.resize(start + n, 0);
            if !d.vocab.is_multiple_of(32) && src.len() >= n {
                d.words[start + n - 1] &= (1u32 << (d.vocab % 32)) - 1;
            }
        }
    }

    /// Advances each constrained request past its sampled token. A token its mask did not
    /// allow (which cannot happen once the mask is applied) fails that request.
    pub fn accept(&mut self, sampled: &[(RequestId, Sample)]) -> Failed {
        let mut failed = Vec::new();
        for (id, s) in sampled {
            if let Some(m) = self.matchers.get_mut(id) {
                if let Err(e) = m.consume(s.token) {
                    failed.push((*id, e.to_string()));
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokenfab_scheduler::ScheduledSeq;
    use tokenfab_structured::{Constraint, Grammars, Limits};

    use super::*;

    /// The masks are the same whether they overlap the forward pass (GPU) or come before it
    /// (CPU), and the forward's value comes back either way.
    #[test]
    fn masks_before_or_beside_the_forward_are_the_same() {
        let dir = std::env::temp_dir().join(format!("tokenfab-constrained-{}", std::process::id()));
        let m = crate::LoadedModel::load(&crate::testing::write_tiny_model(&dir)).unwrap();
        let tok = Arc::new(m.tokenizer);
        let n = tok.vocab_size();
        let g = Grammars::new(tok, n, Limits::default()).unwrap();
        let compiled = g
            .compile(&Constraint::Regex("[a-c]{2}[0-9]".into()))
            .unwrap();
        let seq = |id| ScheduledSeq {
            id,
            start: 0,
            tokens: vec![1, 2],
            num_draft: 0,
            block_table: vec![0],
            sample: true,
            num_cached_tokens: 0,
            placeholder: false,
        };
        let out = SchedulerOutput {
            scheduled: vec![seq(1), seq(2)],
            ..Default::default()
        };
        let metrics = Metrics::default();
        let mut masks = Vec::new();
        for overlap in [false, true] {
            let mut c = Constrained::default();
            c.add(1, compiled.matcher());
            c.add(2, compiled.matcher());
            let (v, failed) = c.masks_during(&out, &metrics, overlap, || 7);
            assert_eq!((v, failed.len()), (7, 0));
            let allowed: Vec<bool> = (0..n as u32)
                .map(|t| c.matchers[&1].mask().is_allowed(t))
                .collect();
            assert!(allowed.iter().any(|&a| a) && !allowed.iter().all(|&a| a));
            masks.push(allowed);
        }
        assert_eq!(masks[0], masks[1]);
        assert_eq!(metrics.structured_mask_rows.get(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }
}
