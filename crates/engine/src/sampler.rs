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
    /// How many leading tokens of `draft`, proposed to follow the tokens accepted so far
    /// (speculative decoding), this processor could allow, leaving its state as it is. A grammar
    /// matcher answers with the longest prefix its grammar accepts (llguidance
    /// `Matcher::validate_tokens`), so that no forward-pass row is spent on a draft token its
    /// mask would rule out; a processor that forbids no token allows the whole draft. Verification
    /// itself needs nothing more: it calls `apply` and `accept` for each position in order, and
    /// only with tokens that are kept, so no processor ever has to roll back.
    fn validate_draft(&mut self, draft: &[TokenId]) -> usize {
        draft.len()
    }
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

    /// Alternatives asked for with each token's log-probability (`None`: no log-probabilities).
    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    /// The uniform draw the next sampled (non-greedy) token will use, leaving the stream as it
    /// is: a device samples with it, and a row the device hands back draws it again here.
    pub fn peek_uniform(&self) -> f32 {
        self.rng.clone().next_f64() as f32
    }

    /// Takes a token sampled elsewhere (on the device, with [`Self::peek_uniform`]'s draw) as if
    /// this sampler had picked it: the stream advances as [`Self::sample`]'s would, processors
    /// see the token, and the log-probability (under the logits the device read) is returned
    /// when asked, without alternatives.
    pub fn accept_device(&mut self, token: TokenId, logprob: f32) -> Sample {
        if !self.params.is_greedy() {
            self.rng.next_f64();
        }
        for p in &mut self.processors {
            p.accept(token);
        }
        Sample {
            token,
            logprob: self.logprobs.map(|_| TokenLogprob {
                token,
                logprob,
                top: Vec::new(),
            }),
        }
    }

    /// Picks the next token after raw `logits` (vocab,), which are left unchanged.
    pub fn sample(&mut self, logits: &[f32], prompt: &[TokenId], output: &[TokenId]) -> Sample {
        self.sample_after(logits, prompt, output, &[])
    }

    /// Samples after the request's last known token and after each of its `draft` tokens in
    /// turn (`row(0)`: the logits after the last known token; `row(j)`: after draft token
    /// `j - 1`), keeping draft tokens while each equals the token sampled at its position. Pushes
    /// to `out` the accepted draft tokens, then the token sampled after them (the first that
    /// differs from the draft, or the one after a wholly accepted draft); stops early after a
    /// token of `stop`, which ends the request.
    ///
    /// Each position is sampled exactly as plain decoding samples it (the same processors,
    /// penalties over every token before it, one draw of the request's random stream), so the
    /// tokens are those plain decoding produces: the same under greedy sampling or a seed, and
    /// distributed as the model says. vLLM's rule for drafts without probabilities (n-gram):
    /// accept with probability p(draft), else sample from p without the draft token, gives the
    /// same distribution; drawing from p and comparing also keeps a seeded request's tokens
    /// independent of speculation.
    pub fn verify<'l>(
        &mut self,
        row: impl Fn(usize) -> &'l [f32],
        prompt: &[TokenId],
        output: &[TokenId],
        draft: &[TokenId],
        stop: &[TokenId],
        out: &mut Vec<Sample>,
    ) {
        for j in 0..=draft.len() {
            let s = self.sample_after(row(j), prompt, output, &draft[..j]);
            let t = s.token;
            out.push(s);
            if draft.get(j) != Some(&t) || stop.contains(&t) {
                return;
            }
        }
    }

    /// Leading tokens of `draft` that every processor allows (see
    /// [`LogitsProcessor::validate_draft`]).
    pub fn validate_draft(&mut self, draft: &[TokenId]) -> usize {
        self.processors
            .iter_mut()
            .fold(draft.len(), |n, p| p.validate_draft(&draft[..n]))
    }

    /// [`Self::sample`] with `accepted` (tokens kept earlier in this step) after `output`.
    fn sample_after(
        &mut self,
        logits: &[f32],
        prompt: &[TokenId],
        output: &[TokenId],
        accepted: &[TokenId],
    ) -> Sample {
        let mut row = std::mem::take(&mut self.row);
        row.clear();
        row.extend_from_slice(logits);
        for p in &mut self.processors {
            p.apply(&mut row);
        }
        let token = self.pick(&mut row, prompt, output, accepted);
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
        self.penalize(logits, prompt, output, &[]);
    }

    /// [`Self::apply_penalties`] with `accepted` counted as output after `output`.
    fn penalize(
        &self,
        logits: &mut [f32],
        prompt: &[TokenId],
        output: &[TokenId],
        accepted: &[TokenId],
    ) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(output).chain(accepted) {
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
            for &t in output.iter().chain(accepted) {
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
    fn pick(
        &mut self,
        logits: &mut [f32],
        prompt: &[TokenId],
        output: &[TokenId],
        accepted: &[TokenId],
    ) -> TokenId {
        self.penalize(logits, prompt, output, accepted);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let cand = &mut self.cand;
        cand.clear();
        // Tokens masked to -inf (a grammar's, a logit bias of -inf) have weight 0: they change
        // no sum and can never be drawn, so only the others are candidates (a JSON row often
        // allows a few dozen of 49k).
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| (i as u32, ((l - max) / p.temperature).exp())),
        );
        if cand.is_empty() {
            // Nothing can be drawn; the draw is still taken, so the request's stream stays
            // one draw per sampled token (what the device path assumes of it).
            self.rng.next_f64();
            return argmax(logits);
        }
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_prob);
            cand.truncate(p.top_k);
        }
        // Only the head is sorted up front: a draw or a cut past it is rare, so the rest of the
        // vocabulary is ordered only when one reaches it (then the order is the full sort's).
        let mut head = Head::new(cand);
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let cut = |c: &[(u32, f32)]| {
                let mut acc = 0.0;
                c.iter().position(|c| {
                    acc += c.1 / total;
                    acc >= p.top_p
                })
            };
            keep = match cut(&cand[..head.sorted]) {
                Some(i) => i + 1,
                None => {
                    head.sort_all(cand);
                    cut(cand).map_or(cand.len(), |i| i + 1)
                }
            };
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            let above = |c: &[(u32, f32)]| c.iter().take_while(|c| c.1 >= floor).count();
            let mut n = above(&cand[..head.sorted.min(keep)]);
            if n == head.sorted && n < keep {
                head.sort_all(cand);
                n = above(&cand[..keep]);
            }
            keep = n.max(1);
        }
        let kept = &mut cand[..keep];
        let total: f32 = kept.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f64() as f32 * total;
        for i in 0..keep {
            if i == head.sorted {
                head.sort_all(kept);
            }
            let (t, w) = kept[i];
            if r < w {
                return t;
            }
            r -= w;
        }
        kept.last().map_or(0, |c| c.0)
    }
}

/// Highest probability first; ties by token id so the order is total and reproducible.
fn by_prob(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Candidates sorted up front by [`by_prob`]: a sort of the whole vocabulary (49k entries for
/// SmolLM2) cost ~1.5 ms per sampled token, more than the token's share of the forward pass at
/// 64 streams.
const HEAD: usize = 1024;

/// `cand[..sorted]` holds the most likely candidates in [`by_prob`] order; the rest are less
/// likely, in no order.
struct Head {
    sorted: usize,
}

impl Head {
    fn new(cand: &mut [(u32, f32)]) -> Self {
        let sorted = cand.len().min(HEAD);
        if sorted < cand.len() {
            cand.select_nth_unstable_by(sorted - 1, by_prob);
        }
        cand[..sorted].sort_unstable_by(by_prob);
        Self { sorted }
    }

    /// Orders the rest of `cand` (a prefix of what [`Head::new`] saw, holding the head).
    fn sort_all(&mut self, cand: &mut [(u32, f32)]) {
        if self.sorted < cand.len() {
            cand[self.sorted..].sort_unstable_by(by_prob);
        }
        self.sorted = usize::MAX;
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

    /// The draw of [`Sampler::pick`] with the whole vocabulary sorted first (the rule the head
    /// must keep): top-k, top-p, min-p, then the token where `u * total` falls.
    fn full_sort_pick(logits: &[f32], p: &SamplingParams, u: f32) -> TokenId {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / p.temperature).exp()))
            .collect();
        c.sort_unstable_by(by_prob);
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let total: f32 = c.iter().map(|c| c.1).sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = c.iter().position(|c| {
                acc += c.1 / total;
                acc >= p.top_p
            });
            c.truncate(keep.map_or(c.len(), |i| i + 1));
        }
        if p.min_p > 0.0 {
            let floor = c[0].1 * p.min_p;
            c.truncate(c.iter().take_while(|c| c.1 >= floor).count().max(1));
        }
        let mut r = u * c.iter().map(|c| c.1).sum::<f32>();
        for &(t, w) in &c {
            if r < w {
                return t;
            }
            r -= w;
        }
        c.last().unwrap().0
    }

    #[test]
    fn the_sorted_head_draws_what_a_full_sort_draws() {
        // 8,000 tokens, most of the mass past the 1,024-token head when flat (draws and cuts
        // reach the unsorted rest), little of it when peaked; equal logits test the tie order.
        let mut rng = Rng::new(3);
        let mut same = 0;
        let mut n = 0;
        for case in 0..48 {
            let spread = [0.05f32, 1.0, 6.0][case % 3];
            let logits: Vec<f32> = (0..8000)
                .map(|i| {
                    if i % 97 == 0 {
                        1.0
                    } else {
                        (rng.next_f64() as f32 - 0.5) * spread
                    }
                })
                .collect();
            let p = params(|p| {
                p.temperature = [1.0, 0.7][case % 2];
                p.top_k = [0, 0, 3000, 500][case % 4];
                p.top_p = [1.0, 0.95, 1.0, 0.5, 1.0, 0.999][case % 6];
                p.min_p = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.97][case % 8];
                p.seed = Some(case as u64);
            });
            let mut s = Sampler::new(p.clone());
            let mut draws = Rng::new(case as u64);
            for _ in 0..20 {
                let u = draws.next_f64() as f32;
                n += 1;
                same +=
                    (s.sample(&logits, &[], &[]).token == full_sort_pick(&logits, &p, u)) as usize;
            }
        }
        // The totals are added in another order once the rest is unsorted, so a draw landing
        // within rounding of a boundary may differ; a wrong order would differ nearly always.
        assert!(same * 1000 >= n * 995, "{same} of {n} draws agree");
    }

    #[test]
    fn masked_tokens_are_never_drawn_and_the_rest_follow_softmax() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.top_k = 3;
        }));
        let ninf = f32::NEG_INFINITY;
        let row = [ninf, 0.0, ninf, 1.0, ninf, ninf];
        let mut counts = [0u32; 6];
        let n = 20000;
        for _ in 0..n {
            counts[s.sample(&row, &[], &[]).token as usize] += 1;
        }
        assert_eq!(counts[1] + counts[3], n, "{counts:?}");
        let want = 1.0f64.exp() / (1.0 + 1.0f64.exp());
        let got = counts[3] as f64 / n as f64;
        assert!((got - want).abs() < 0.02, "{got} vs {want}");
        // Nothing allowed: no candidate, no panic, and the draw is still taken (one per token).
        assert_eq!(s.sample(&[ninf; 4], &[], &[]).token, 0);
        let mut stream = Rng::new(7);
        for _ in 0..=n {
            stream.next_f64();
        }
        assert_eq!(s.peek_uniform(), stream.next_f64() as f32);
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

    /// Logits whose argmax is `t` (vocab 8).
    fn peaked(t: u32) -> Vec<f32> {
        (0..8).map(|i| if i == t { 5.0 } else { 0.0 }).collect()
    }

    #[test]
    fn greedy_verification_keeps_the_matching_prefix_and_the_token_after_it() {
        let rows = [peaked(3), peaked(4), peaked(5), peaked(6)];
        let run = |draft: &[u32], stop: &[u32]| {
            let mut s = Sampler::new(params(|_| {}));
            let mut out = Vec::new();
            s.verify(|j| &rows[j][..], &[], &[], draft, stop, &mut out);
            out.iter().map(|x| x.token).collect::<Vec<_>>()
        };
        assert_eq!(
            run(&[3, 4, 5], &[]),
            [3, 4, 5, 6],
            "all accepted, then the bonus"
        );
        assert_eq!(
            run(&[3, 9, 5], &[]),
            [3, 4],
            "the first mismatch is replaced"
        );
        assert_eq!(run(&[1, 4, 5], &[]), [3]);
        assert_eq!(run(&[], &[]), [3]);
        assert_eq!(run(&[3, 4, 5], &[4]), [3, 4], "a stop token ends the run");
    }

    #[test]
    fn verification_counts_accepted_tokens_in_the_penalties() {
        // Row 1 prefers 2 slightly over 5; a strong repetition penalty on the accepted 2 flips it.
        let rows = [peaked(2), vec![0.0, 0.0, 2.0, 0.0, 0.0, 1.9, 0.0, 0.0]];
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 4.0));
        let mut out = Vec::new();
        s.verify(|j| &rows[j][..], &[], &[], &[2], &[], &mut out);
        assert_eq!(out.iter().map(|x| x.token).collect::<Vec<_>>(), [2, 5]);
    }

    #[test]
    fn seeded_verification_draws_the_tokens_plain_sampling_draws() {
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|r| (0..8).map(|i| ((i * 7 + r * 3) % 5) as f32 * 0.4).collect())
            .collect();
        let p = params(|p| {
            p.temperature = 1.0;
            p.seed = Some(99);
        });
        for trial in 0..50u32 {
            let mut plain = Sampler::new(p.clone());
            let mut spec = Sampler::new(p.clone());
            let mut want = Vec::new();
            for row in &rows {
                want.push(plain.sample(row, &[], &want).token);
            }
            // Drafts: the plain tokens with one changed (or none), at varying places.
            let mut draft = want[..5].to_vec();
            if trial % 6 < 5 {
                draft[(trial % 6) as usize] = (want[(trial % 6) as usize] + 1) % 8;
            }
            let mut got = Vec::new();
            let mut out = Vec::new();
            while got.len() < rows.len() {
                out.clear();
                let d = &draft[got.len().min(draft.len())..];
                let d = &d[..d.len().min(rows.len() - got.len() - 1)];
                let at = got.len();
                spec.verify(|j| &rows[at + j][..], &[], &got, d, &[], &mut out);
                got.extend(out.iter().map(|x| x.token));
            }
            assert_eq!(got, want, "trial {trial}");
        }
    }

    #[test]
    fn verification_keeps_the_target_distribution() {
        // p = softmax(logits); draft token 1. Over many requests, the first token must follow p,
        // and the draft must be accepted with probability p(1) (vLLM's rule for n-gram drafts).
        let logits = [0.3f32, 1.2, -0.5, 0.9];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let p: Vec<f64> = logits.iter().map(|&l| (l as f64).exp() / z).collect();
        let rows = [logits.to_vec(), logits.to_vec()];
        let n = 40_000;
        let mut counts = [0u32; 4];
        let mut accepted = 0;
        let mut out = Vec::new();
        for seed in 0..n {
            let mut s = Sampler::new(params(|q| {
                q.temperature = 1.0;
                q.seed = Some(seed as u64);
            }));
            out.clear();
            s.verify(|j| &rows[j][..], &[], &[], &[1], &[], &mut out);
            counts[out[0].token as usize] += 1;
            accepted += u32::from(out.len() == 2);
        }
        // Chi-square with 3 degrees of freedom: 16.27 is the 0.1% critical value.
        let chi2: f64 = counts
            .iter()
            .zip(&p)
            .map(|(&c, &q)| {
                let e = q * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.27, "chi2 {chi2}: {counts:?} vs {p:?}");
        let rate = accepted as f64 / n as f64;
        assert!((rate - p[1]).abs() < 0.01, "{rate} vs {}", p[1]);
    }

    struct Allow(usize);
    impl LogitsProcessor for Allow {
        fn apply(&mut self, _: &mut [f32]) {}
        fn validate_draft(&mut self, draft: &[TokenId]) -> usize {
            draft.len().min(self.0)
        }
    }

    #[test]
    fn a_draft_is_cut_to_what_every_processor_allows() {
        let mut s = Sampler::new(params(|_| {}))
            .with_processor(Box::new(LogitBias(vec![])))
            .with_processor(Box::new(Allow(3)))
            .with_processor(Box::new(Allow(2)));
        assert_eq!(s.validate_draft(&[1, 2, 3, 4]), 2);
        let mut plain = Sampler::new(params(|_| {}));
        assert_eq!(plain.validate_draft(&[1, 2, 3, 4]), 4);
    }
}
