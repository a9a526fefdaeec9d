//! Turns one row of logits into a token: the request's logits processors (logit bias; grammar
//! masks plug in the same way), penalties, then greedy or temperature / top-k / top-p / min-p
//! sampling from a per-request seeded stream, and the chosen token's log-probability when asked.

use tokenfab_backend::cpu::log_softmax;
use tokenfab_types::{SamplingParams, TokenId};

use crate::request::TokenLogprob;
use crate::rng::Rng;

/// Edits one request's row of logits before sampling. Stateful processors (a grammar's mask)
/// advance on [`LogitsProcessor::accept`]; a request's processors run in the order added.
pub trait LogitsProcessor: Send {
    /// Edits `logits` (vocab,) in place.
    fn apply(&mut self, logits: &mut [f32]);
    /// The token sampled after `apply`.
    fn accept(&mut self, _token: TokenId) {}
}

/// OpenAI's `logit_bias`: a value added to the logit of each listed token.
pub struct LogitBias(pub Vec<(TokenId, f32)>);

impl LogitsProcessor for LogitBias {
    fn apply(&mut self, logits: &mut [f32]) {
        for &(t, b) in &self.0 {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
    }
}

/// One sampled token and, when asked, its log-probability under the raw logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub token: TokenId,
    pub logprob: Option<TokenLogprob>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    processors: Vec<Box<dyn LogitsProcessor>>,
    /// Alternatives returned with each token's log-probability; `None`: no log-probabilities.
    logprobs: Option<usize>,
    /// Scratch: (vocab,) the row being edited, then its log-softmax; reused across calls.
    row: Vec<f32>,
    /// Scratch: (token, probability) candidates, reused across calls.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(Rng::entropy_seed);
        Self {
            params,
            rng: Rng::new(seed),
            processors: Vec::new(),
            logprobs: None,
            row: Vec::new(),
            cand: Vec::new(),
        }
    }

    /// Adds a logits processor, run after those added before.
    pub fn with_processor(mut self, p: Box<dyn LogitsProcessor>) -> Self {
        self.processors.push(p);
        self
    }

    /// Return each token's log-probability with `top_n` alternatives.
    pub fn with_logprobs(mut self, top_n: Option<usize>) -> Self {
        self.logprobs = top_n;
        self
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token after raw `logits` (vocab,), which are left unchanged.
    pub fn sample(&mut self, logits: &[f32], prompt: &[TokenId], output: &[TokenId]) -> Sample {
        let mut row = std::mem::take(&mut self.row);
        row.clear();
        row.extend_from_slice(logits);
        for p in &mut self.processors {
            p.apply(&mut row);
        }
        let token = self.pick(&mut row, prompt, output);
        for p in &mut self.processors {
            p.accept(token);
        }
        let logprob = self
            .logprobs
            .map(|n| token_logprob(logits, token, n, &mut row));
        self.row = row;
        Sample { token, logprob }
    }

    /// Applies the penalties in place: repetition over prompt and output (as vLLM and HF do),
    /// presence and frequency over the output only (as OpenAI defines them).
    pub fn apply_penalties(&self, logits: &mut [f32], prompt: &[TokenId], output: &[TokenId]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(output) {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, &s)| s) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in output {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
    }

    /// Penalties, then greedy or random choice over `logits` (modified).
    fn pick(&mut self, logits: &mut [f32], prompt: &[TokenId], output: &[TokenId]) -> TokenId {
        self.apply_penalties(logits, prompt, output);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, ((l - max) / p.temperature).exp())),
        );
        // Highest first; ties by token id so the order is total and reproducible.
        let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_prob);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_prob);
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = self
                .cand
                .iter()
                .position(|c| {
                    acc += c.1 / total;
                    acc >= p.top_p
                })
                .map_or(self.cand.len(), |i| i + 1);
            self.cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f64() as f32 * total;
        for &(t, w) in &self.cand {
            if r < w {
                return t;
            }
            r -= w;
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// The log-probability of `token` under raw `logits`, with the `top_n` most likely tokens
/// (highest first, ties by lower id). `lsm` is scratch for the log-softmax.
pub(crate) fn token_logprob(
    logits: &[f32],
    token: TokenId,
    top_n: usize,
    lsm: &mut Vec<f32>,
) -> TokenLogprob {
    lsm.resize(logits.len(), 0.0);
    log_softmax(logits, lsm);
    let k = top_n.min(lsm.len());
    let better = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut top: Vec<(TokenId, f32)> = Vec::with_capacity(k);
    if k > 32 {
        top.extend(lsm.iter().enumerate().map(|(i, &l)| (i as TokenId, l)));
        top.sort_unstable_by(better);
        top.truncate(k);
    } else if k > 0 {
        // A few alternatives: one pass keeping them sorted, no vocab-sized buffer.
        for (i, &l) in lsm.iter().enumerate() {
            let c = (i as TokenId, l);
            if top.len() == k && better(&c, &top[k - 1]).is_ge() {
                continue;
            }
            let at = top.partition_point(|t| better(t, &c).is_lt());
            top.insert(at, c);
            top.truncate(k);
        }
    }
    TokenLogprob {
        token,
        logprob: lsm[token as usize],
        top,
    }
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(x: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as TokenId
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let mut s = Sampler::new(params(|_| {}));
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], &[], &[]).token, 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for p in [
            params(|p| {
                p.temperature = 1.0;
                p.top_k = 1;
            }),
            params(|p| {
                p.temperature = 1.0;
                p.top_p = 1e-6;
            }),
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..20 {
                assert_eq!(s.sample(&[0.0, 2.0, 1.9, -1.0], &[], &[]).token, 1);
            }
        }
    }

    #[test]
    fn top_k_restricts_and_frequencies_follow_softmax() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.top_k = 2;
        }));
        let mut counts = [0u32; 4];
        let n = 20000;
        for _ in 0..n {
            counts[s.sample(&[0.0, 1.0, 0.5, -5.0], &[], &[]).token as usize] += 1;
        }
        assert_eq!(counts[0] + counts[3], 0, "{counts:?}");
        // p(1) / p(2) = e^0.5
        let want = 0.5f64.exp() / (1.0 + 0.5f64.exp());
        let got = counts[1] as f64 / n as f64;
        assert!((got - want).abs() < 0.02, "{got} vs {want}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.min_p = 0.5;
        }));
        for _ in 0..200 {
            // p(2)/p(0) = e^-1 < 0.5: only 0 and 1 (equal) survive.
            let t = s.sample(&[1.0, 1.0, 0.0], &[], &[]).token;
            assert!(t < 2);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = params(|p| {
            p.temperature = 0.9;
            p.seed = Some(123);
        });
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(p.clone());
            (0..30)
                .map(|_| s.sample(&logits, &[], &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn penalties() {
        let s = Sampler::new(params(|p| {
            p.repetition_penalty = 2.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.25;
        }));
        let mut l = [2.0, -2.0, 2.0, 1.0];
        s.apply_penalties(&mut l, &[0, 1], &[2, 2]);
        assert_eq!(l[0], 1.0); // repetition: positive divided
        assert_eq!(l[1], -4.0); // negative multiplied
        assert_eq!(l[2], 1.0 - 0.5 - 0.5); // repetition, presence, 2 x frequency
        assert_eq!(l[3], 1.0);
    }

    #[test]
    fn logit_bias_steers_greedy_choice_but_not_the_reported_logprob() {
        let mut s = Sampler::new(params(|_| {}))
            .with_processor(Box::new(LogitBias(vec![(2, 10.0)])))
            .with_logprobs(Some(1));
        let logits = [0.0, 3.0, 1.0];
        let got = s.sample(&logits, &[], &[]);
        assert_eq!(got.token, 2);
        let lp = got.logprob.unwrap();
        assert_eq!(lp.token, 2);
        // Under the raw logits token 1 is the most likely.
        assert_eq!(lp.top[0].0, 1);
        assert!(lp.logprob < lp.top[0].1);
        assert_eq!(logits, [0.0, 3.0, 1.0], "the caller's row is not touched");
    }

    #[test]
    fn top_alternatives_are_the_same_by_scan_and_by_sort() {
        let logits: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 * 0.1).sin())
            .collect();
        let mut scratch = Vec::new();
        let small = token_logprob(&logits, 5, 20, &mut scratch);
        let all = token_logprob(&logits, 5, 200, &mut scratch);
        assert_eq!(small.top[..], all.top[..20]);
        assert!(all
            .top
            .windows(2)
            .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
        let total: f64 = all.top.iter().map(|&(_, l)| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert_eq!(small.logprob, all.top.iter().find(|t| t.0 == 5).unwrap().1);
        assert!(token_logprob(&logits, 5, 0, &mut scratch).top.is_empty());
    }
}
