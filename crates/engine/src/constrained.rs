//! The constrained rows of a step (structured outputs and tool calls): each constrained request's
//! own matcher, the masks of all rows that sample this step computed on the rayon pool while the
//! forward pass runs, applied to those rows' logits before the sampler sees them (so before
//! penalties, `logit_bias` and sampling, and the logprobs are the masked distribution's, as
//! vLLM's), and each sampled token consumed.
//!
//! Why the masks can overlap the forward: a matcher's state after step N's token is known when
//! step N ends, and nothing in step N+1's forward changes it. Why a row never depends on its
//! neighbours: a mask reads only its own matcher, and free rows are never touched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokenfab_scheduler::SchedulerOutput;
use tokenfab_structured::{compute_masks, RequestMatcher};
use tokenfab_types::RequestId;

use crate::metrics::Metrics;
use crate::runner::StepLogits;
use crate::sampler::Sample;

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

    /// Runs `forward` on this thread while the next-token masks of every constrained row that
    /// samples this step are computed on the pool. Returns the forward's result and the rows
    /// whose mask failed (they must not sample). Without constrained rows, just the forward.
    pub fn masks_during<T>(
        &mut self,
        out: &SchedulerOutput,
        metrics: &Metrics,
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
        let mut forward_end = None;
        let value = rayon::in_place_scope(|s| {
            s.spawn(|_| {
                let t = Instant::now();
                let mut ms: Vec<&mut RequestMatcher> =
                    rows.iter_mut().map(|(_, m)| &mut **m).collect();
                results = compute_masks(&mut ms);
                mask_time = t.elapsed();
            });
            let v = forward();
            forward_end = Some(Instant::now());
            v
        });
        // The step waited this long for the masks once the forward was done.
        let wait = forward_end.map_or(Duration::ZERO, |f| f.elapsed());
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
            if let Some(last) = logits.rows[i].clone().last() {
                let v = logits.vocab;
                m.mask().apply(&mut logits.logits[last * v..(last + 1) * v]);
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
