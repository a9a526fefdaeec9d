//! The host's half of sampling on a CUDA device (`tokenfab_backend::cuda::sampling`): one step's
//! rows staged as one parameter array and one edit array (a single upload each step), from each
//! request's sampling parameters, logit bias, tokens so far and its own uniform draw. The engine
//! does not call it yet (its step copies logits back and samples on the host); the tests here
//! hold the device's algorithm, through its CPU twin, against [`crate::sampler::Sampler`] on the
//! same inputs.

use tokenfab_backend::cuda::sampling::{check_row_inputs, row_inputs, Edit, SampleParams};
use tokenfab_types::{SamplingParams, TokenId};

/// One step's sampling inputs for the device, reused across steps.
#[derive(Default)]
pub struct SampleStage {
    /// (rows,) one per logits row, in row order.
    pub params: Vec<SampleParams>,
    /// Every row's edits, concatenated.
    pub edits: Vec<Edit>,
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
    }

    /// What the kernel trusts, checked before the upload.
    pub fn check(&self, vocab: usize) -> Result<(), String> {
        check_row_inputs(&self.params, &self.edits, vocab)
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
