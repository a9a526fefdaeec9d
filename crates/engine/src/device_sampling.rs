//! The host's half of sampling on a device (`tokenfab_backend::cuda::sampling`): one step's rows
//! staged as one parameter array and one edit array, from each request's sampling parameters,
//! logit bias, tokens so far and its own uniform draw; the step's grammar masks as bit words; and
//! the step itself ([`DeviceStep`]): launch (with async scheduling, its placeholder rows fed on
//! the device from the previous step's tokens: `overlap.rs`), masks on the host while the device
//! runs, then sample. The tests hold the device's algorithm, through its CPU twin, against
//! [`crate::sampler::Sampler`] on the same inputs, row by row and through the whole engine.
//!
//! Rows the device sampler cannot serve are sampled on the host from their logits, which come
//! back for those rows only ([`HostReason`]); so are rows whose kept set may reach past the
//! device's candidate pool (`sampling::HOST`).

use std::collections::HashMap;
use std::ops::Range;

use tokenfab_backend::cuda::sampling::{check_row_inputs, row_inputs, Edit, SampleParams};
use tokenfab_models::{DeviceSampling, TokenMasks};
use tokenfab_scheduler::{Scheduler, SchedulerOutput};
use tokenfab_types::{RequestId, SamplingParams, TokenId};

use crate::constrained::{Constrained, DeviceMasks, Failed};
use crate::error::Result;
use crate::host::Active;
use crate::metrics::Metrics;
use crate::profile::StepTimer;
use crate::runner::{Fed, ModelRunner, StepLogits};

/// Why a row's logits come back to be sampled (or read) on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostReason {
    /// Prompt log-probabilities read every row of a prompt chunk.
    PromptLogprobs,
    /// Speculative decoding verifies drafts row by row (each row's penalties count the draft
    /// tokens accepted before it).
    Draft,
    /// `top_logprobs` alternatives (the device returns the chosen token's log-probability only).
    TopLogprobs,
}

/// Where a sequence's logits rows are sampled: `None` on the device.
pub fn host_reason(
    prompt_logprobs: bool,
    num_draft: usize,
    top_logprobs: Option<usize>,
) -> Option<HostReason> {
    if prompt_logprobs {
        Some(HostReason::PromptLogprobs)
    } else if num_draft > 0 {
        Some(HostReason::Draft)
    } else if top_logprobs.is_some_and(|n| n > 0) {
        Some(HostReason::TopLogprobs)
    } else {
        None
    }
}

/// One step's sampling inputs for the device, reused across steps.
#[derive(Default)]
pub struct SampleStage {
    /// (rows,) one per logits row, in row order.
    pub params: Vec<SampleParams>,
    /// Every row's edits, concatenated.
    pub edits: Vec<Edit>,
    /// (rows,) rows sampled on the host.
    pub host: Vec<bool>,
    /// The step's grammar masks.
    pub(crate) masks: DeviceMasks,
}

/// One row to stage: a request's parameters and state for the token being sampled.
pub struct RowRequest<'a> {
    pub params: &'a SamplingParams,
    pub logit_bias: &'a [(TokenId, f32)],
    pub prompt: &'a [TokenId],
    pub output: &'a [TokenId],
    /// The request's next uniform draw in [0, 1) (its seeded stream), as the host sampler
    /// would draw it.
    pub u: f32,
    pub want_logprob: bool,
}

impl SampleStage {
    pub fn clear(&mut self) {
        self.params.clear();
        self.edits.clear();
        self.host.clear();
    }

    /// Appends a row the host samples or reads.
    pub fn push_host(&mut self) {
        self.params.push(SampleParams::default());
        self.host.push(true);
    }

    pub fn inputs(&self) -> DeviceSampling<'_> {
        DeviceSampling {
            params: &self.params,
            edits: &self.edits,
            host: &self.host,
            // The runner's (`ModelRunner::feed`).
            feed: &[],
        }
    }

    /// Stages every logits row of a step: `rows[i]` are sequence i's, `all_rows[i]` whether it
    /// reads them all (prompt log-probabilities).
    pub(crate) fn build(
        &mut self,
        out: &SchedulerOutput,
        rows: &[Range<usize>],
        all_rows: &[bool],
        active: &HashMap<RequestId, Active>,
        sched: &Scheduler,
    ) {
        self.clear();
        for (i, s) in out.scheduled.iter().enumerate() {
            let a = active.get(&s.id).zip(sched.request(s.id));
            let reason = host_reason(
                all_rows[i],
                s.num_draft,
                a.and_then(|(a, _)| a.sampler.logprobs()),
            );
            match (a, reason) {
                (Some((a, r)), None) => {
                    for _ in rows[i].clone() {
                        self.push(&RowRequest {
                            params: a.sampler.params(),
                            logit_bias: &a.logit_bias,
                            prompt: r.prompt(),
                            output: r.output(),
                            u: a.sampler.peek_uniform(),
                            want_logprob: a.sampler.logprobs().is_some(),
                        });
                    }
                }
                (Some(_), Some(_)) => rows[i].clone().for_each(|_| self.push_host()),
                // It ended while this step was planned ahead (async scheduling): the row runs
                // and its token is discarded.
                (None, _) => rows[i].clone().for_each(|_| self.push_discarded()),
            }
        }
    }

    /// Appends a row whose token nobody reads: greedy on the device.
    pub fn push_discarded(&mut self) {
        self.params.push(SampleParams::default());
        self.host.push(false);
    }

    /// Appends one row.
    pub fn push(&mut self, r: &RowRequest<'_>) {
        let mut p = row_inputs(
            r.params,
            r.logit_bias,
            (r.prompt, r.output),
            r.u,
            &mut self.edits,
        );
        p.want_logprob = i32::from(r.want_logprob);
        self.params.push(p);
        self.host.push(false);
    }

    /// What the kernel trusts, checked before the upload.
    pub fn check(&self, vocab: usize) -> Result<(), String> {
        check_row_inputs(&self.params, &self.edits, vocab)
    }
}

/// One step on a device sampler: what it borrows of the engine (the step's results borrow only
/// the runner).
pub(crate) struct DeviceStep<'r, 'a> {
    pub runner: &'r mut ModelRunner,
    pub stage: &'a mut SampleStage,
    pub timer: &'a mut StepTimer,
}

impl<'r> DeviceStep<'r, '_> {
    /// Plans and stages the step (its placeholder rows fed from `fed`) and launches it without
    /// waiting: `all_rows[i]`, whether sequence i reads every row (prompt log-probabilities).
    pub fn launch(
        &mut self,
        out: &SchedulerOutput,
        all_rows: &[bool],
        (active, sched): (&HashMap<RequestId, Active>, &Scheduler),
        fed: &HashMap<RequestId, Fed>,
    ) -> Result<()> {
        let rows = self.runner.plan(out, |i| all_rows[i]);
        self.stage.build(out, rows, all_rows, active, sched);
        self.runner.feed(out, fed);
        self.runner.launch(out, &self.stage.inputs(), self.timer)
    }

    /// Computes the launched step's grammar masks while the device runs it, then masks and
    /// samples on the device and waits. Returns the step's tokens and host rows, and the rows
    /// whose mask failed (they must not sample).
    pub fn collect(
        self,
        out: &SchedulerOutput,
        constrained: &mut Constrained,
        metrics: &Metrics,
    ) -> (Result<StepLogits<'r>>, Failed) {
        let DeviceStep {
            runner,
            stage,
            timer,
        } = self;
        let ((), failed) = constrained.masks_during(out, metrics, false, || ());
        constrained.forget(&failed);
        stage.masks.vocab = runner.exec.config().vocab_size;
        constrained.device_masks(out, runner.rows(), &mut stage.masks);
        let masks = TokenMasks {
            rows: &stage.masks.rows,
            words: &stage.masks.words,
        };
        (runner.sample(&masks, timer), failed)
    }
}

#[cfg(test)]
mod tests {
    use tokenfab_backend::cuda::sampling::{sample_row, HOST, POOL};

    use super::*;
    use crate::rng::Rng;
    use crate::sampler::{LogitBias, Sampler};

    fn logits(vocab: usize, rng: &mut Rng, spread: f64) -> Vec<f32> {
        (0..vocab)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
            .collect()
    }

    /// Random rows and parameters: the device's algorithm (its CPU twin) picks the host
    /// sampler's token, with the same seed, wherever it does not hand the row back to the host;
    /// the chosen token's log-probability agrees. The one sum the device adds in another order
    /// (the whole vocabulary's, for top-p without a top-k inside the pool) may move a token at a
    /// boundary: those rows may differ, rarely.
    #[test]
    fn the_twin_picks_the_host_samplers_token() {
        let mut rng = Rng::new(42);
        let (mut same, mut host, mut reordered_sum, mut differ) = (0, 0, 0, 0);
        for case in 0..600u64 {
            let vocab = [50, 700, 3000, 20_000][case as usize % 4];
            let spread = [1.0, 4.0, 12.0][(case / 4) as usize % 3];
            let row = logits(vocab, &mut rng, spread);
            fn pick(rng: &mut Rng, xs: &[f32]) -> f32 {
                xs[(rng.next_u64() % xs.len() as u64) as usize]
            }
            let params = SamplingParams {
                temperature: pick(&mut rng, &[0.0, 0.3, 0.8, 1.0, 1.7]),
                top_k: [0, 0, 1, 5, 50, 1500][(rng.next_u64() % 6) as usize],
                top_p: pick(&mut rng, &[1.0, 1.0, 0.95, 0.7, 0.3]),
                min_p: pick(&mut rng, &[0.0, 0.0, 0.02, 0.2]),
                repetition_penalty: pick(&mut rng, &[1.0, 1.0, 1.2]),
                presence_penalty: pick(&mut rng, &[0.0, 0.5]),
                frequency_penalty: pick(&mut rng, &[0.0, 0.3]),
                seed: Some(case),
            };
            let prompt: Vec<TokenId> = (0..20)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect();
            let output: Vec<TokenId> = (0..12)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect();
            let bias = vec![
                (prompt[0], 2.5),
                ((rng.next_u64() % vocab as u64) as u32, -1.0),
            ];

            let mut sampler = Sampler::new(params.clone())
                .with_processor(Box::new(LogitBias(bias.clone())))
                .with_logprobs(Some(0));
            let want = sampler.sample(&row, &prompt, &output);

            let u = Rng::new(case).next_f64() as f32;
            let mut stage = SampleStage::default();
            stage.push(&RowRequest {
                params: &params,
                logit_bias: &bias,
                prompt: &prompt,
                output: &output,
                u,
                want_logprob: true,
            });
            stage.check(vocab).unwrap();
            let got = sample_row(&row, &stage.params[0], &stage.edits);
            if got.token == HOST {
                host += 1;
                continue;
            }
            let lp = want.logprob.as_ref().unwrap().logprob;
            let whole_vocab_sum = !params.is_greedy()
                && params.top_p < 1.0
                && vocab > POOL
                && !(params.top_k > 0 && params.top_k <= POOL);
            if got.token == want.token {
                same += 1;
                assert!(
                    (got.logprob - lp).abs() < 1e-4,
                    "case {case}: {} vs {lp}",
                    got.logprob
                );
            } else if whole_vocab_sum {
                reordered_sum += 1;
            } else {
                differ += 1;
                eprintln!(
                    "case {case}: {params:?} vocab {vocab}: {} vs {}",
                    got.token, want.token
                );
            }
        }
        eprintln!("same {same}, host {host}, whole-vocabulary sums differing {reordered_sum}, differ {differ}");
        assert_eq!(differ, 0);
        assert!(reordered_sum * 100 <= same, "{reordered_sum} of {same}");
        assert!(same >= 400 && host > 0, "same {same}, host {host}");
    }
}
