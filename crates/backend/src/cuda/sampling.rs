//! Sampling on the device: the `sample_rows` kernel and its CPU twin [`sample_row`], the same
//! algorithm step for step, which the engine's tests hold against its own CPU sampler on the same
//! inputs (`crates/engine/src/device_sampling.rs`).
//!
//! Per row, from the step's logits (rows, vocab), only a token id (and the chosen token's
//! log-probability under the raw logits, when asked) comes back:
//! 1. the row's [`Edit`]s: logit bias, then the repetition penalty, then presence/frequency
//!    (the CPU sampler's order), one edit per affected token, composed on the host;
//! 2. greedy (temperature <= 0 or top_k == 1): the largest edited logit, lowest id on ties;
//! 3. otherwise weights `w = exp((l - max) / T)`; the [`POOL`] largest (ties by lower id) are
//!    gathered (a radix select on the device) and sorted by weight, highest first; then, as on
//!    the CPU: top-k, top-p (cumulative share of the total after top-k), min-p (weight >= the
//!    top weight times min_p), and the token where `u * total` of the kept weights falls, `u` being
//!    the request's own uniform draw, made on the host from its seeded stream.
//!
//! When the kept set may reach past the pool (no top-k or one above [`POOL`], and top-p/min-p do
//! not cut inside it) the row's token is [`HOST`]: the caller samples that row on the host.
//! The one difference from the CPU's arithmetic: with top-p and no top-k inside the pool, the
//! total is a sum over the whole vocabulary, which the device adds in another order (rounding).

use tokenfab_types::SamplingParams;

/// Candidates a row keeps in shared memory: one per thread of the kernel's block.
pub const POOL: usize = 1024;
/// The token of a row left to the host sampler.
pub const HOST: u32 = u32::MAX;

/// One row's sampling parameters, as the kernel reads them (one array for the step).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleParams {
    /// <= 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    /// The request's uniform draw in [0, 1) for this token.
    pub u: f32,
    /// The row's edits: `edits[edits_start..][..edits_len]`.
    pub edits_start: i32,
    pub edits_len: i32,
    /// 1: also the chosen token's log-probability under the raw logits.
    pub want_logprob: i32,
}

/// What happens to one token's logit: `l = rep(l + bias) - sub`, `rep(x) = x > 0 ? x / rep :
/// x * rep`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edit {
    pub token: u32,
    pub bias: f32,
    /// 1: none.
    pub rep: f32,
    pub sub: f32,
}

// SAFETY: plain `repr(C)` structs of 4-byte scalars, no padding, valid for any bits.
unsafe impl cudarc::driver::DeviceRepr for SampleParams {}
unsafe impl cudarc::driver::DeviceRepr for Edit {}
unsafe impl cudarc::driver::ValidAsZeroBits for SampleParams {}
unsafe impl cudarc::driver::ValidAsZeroBits for Edit {}

impl Edit {
    pub fn apply(&self, l: f32) -> f32 {
        let mut x = l + self.bias;
        if self.rep != 1.0 {
            x = if x > 0.0 { x / self.rep } else { x * self.rep };
        }
        x - self.sub
    }
}

/// One row's parameters and edits (appended to `edits`) for a request: its sampling parameters,
/// logit bias (summed per token, in order), prompt and output tokens (the penalties), and its
/// uniform draw `u` for this token.
pub fn row_inputs(
    p: &SamplingParams,
    bias: &[(u32, f32)],
    (prompt, output): (&[u32], &[u32]),
    u: f32,
    edits: &mut Vec<Edit>,
) -> SampleParams {
    let start = edits.len();
    let mut at = std::collections::HashMap::<u32, usize>::new();
    let mut edit = |t: u32, edits: &mut Vec<Edit>| -> usize {
        *at.entry(t).or_insert_with(|| {
            edits.push(Edit {
                token: t,
                bias: 0.0,
                rep: 1.0,
                sub: 0.0,
            });
            edits.len() - 1
        })
    };
    for &(t, b) in bias {
        let i = edit(t, edits);
        edits[i].bias += b;
    }
    if p.repetition_penalty != 1.0 {
        for &t in prompt.iter().chain(output) {
            let i = edit(t, edits);
            edits[i].rep = p.repetition_penalty;
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            let i = edit(t, edits);
            edits[i].sub = p.presence_penalty + p.frequency_penalty * c as f32;
        }
    }
    SampleParams {
        temperature: if p.is_greedy() { 0.0 } else { p.temperature },
        top_k: p.top_k.min(i32::MAX as usize) as i32,
        top_p: p.top_p,
        min_p: p.min_p,
        u,
        edits_start: start as i32,
        edits_len: (edits.len() - start) as i32,
        want_logprob: 0,
    }
}

/// A row's result: its token ([`HOST`]: sample it on the host) and, when asked, the token's
/// log-probability under the raw logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSample {
    pub token: u32,
    pub logprob: f32,
}

/// The CPU twin of the `sample_rows` kernel for one row of raw `logits`; `edits` are the row's.
pub fn sample_row(logits: &[f32], p: &SampleParams, edits: &[Edit]) -> RowSample {
    let mut l = logits.to_vec();
    for e in edits {
        if let Some(x) = l.get_mut(e.token as usize) {
            *x = e.apply(*x);
        }
    }
    let logprob = if p.want_logprob != 0 {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = logits.iter().map(|&x| (x - m).exp()).sum();
        Some((m, s.ln()))
    } else {
        None
    };
    let token = pick(&l, p);
    let logprob = match (logprob, token) {
        (Some((m, lse)), t) if t != HOST => logits[t as usize] - m - lse,
        _ => 0.0,
    };
    RowSample { token, logprob }
}

fn pick(l: &[f32], p: &SampleParams) -> u32 {
    if p.temperature <= 0.0 || p.top_k == 1 {
        let mut best = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let vocab = l.len();
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f32> = l
        .iter()
        .map(|&x| ((x - max) / p.temperature).exp())
        .collect();
    // The pool: the POOL largest weights, ties by lower id, sorted highest first.
    let mut pool: Vec<(u32, f32)> = w.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if pool.len() > POOL {
        pool.select_nth_unstable_by(POOL - 1, by);
        pool.truncate(POOL);
    }
    pool.sort_unstable_by(by);
    let whole = pool.len() == vocab;
    let k = p.top_k.max(0) as usize;
    let mut n = pool.len();
    // Whether the kept set is known to lie inside the pool.
    let mut inside = whole;
    if k > 0 && k < vocab && k <= n {
        n = k;
        inside = true;
    }
    let topk_inside = inside;
    if p.top_p < 1.0 {
        if !topk_inside && k > 0 && k < vocab {
            return HOST; // a top-k past the pool: its total is unknown here
        }
        let total: f32 = if topk_inside {
            pool[..n].iter().map(|c| c.1).sum()
        } else {
            let mut all = w.clone();
            all.sort_unstable_by(|a, b| b.total_cmp(a));
            all.iter().sum()
        };
        let mut acc = 0.0;
        match pool[..n].iter().position(|c| {
            acc += c.1 / total;
            acc >= p.top_p
        }) {
            Some(i) => {
                n = i + 1;
                inside = true;
            }
            None if !inside => return HOST,
            None => {}
        }
    }
    if p.min_p > 0.0 {
        let floor = pool[0].1 * p.min_p;
        let keep = pool[..n].iter().take_while(|c| c.1 >= floor).count().max(1);
        if keep < n || pool[n - 1].1 < floor {
            inside = true;
        }
        n = keep;
    }
    if !inside {
        return HOST;
    }
    let total: f32 = pool[..n].iter().map(|c| c.1).sum();
    let mut r = p.u * total;
    for &(t, w) in &pool[..n] {
        if r < w {
            return t;
        }
        r -= w;
    }
    pool[n - 1].0
}

/// Checks what the kernel trusts: each row's edits lie inside `edits` and name tokens below
/// `vocab`, each token at most once per row.
pub fn check_row_inputs(
    params: &[SampleParams],
    edits: &[Edit],
    vocab: usize,
) -> Result<(), String> {
    for (r, p) in params.iter().enumerate() {
        let (s, n) = (p.edits_start, p.edits_len);
        let range = usize::try_from(s)
            .ok()
            .zip(usize::try_from(n).ok())
            .and_then(|(s, n)| edits.get(s..s.checked_add(n)?))
            .ok_or(format!(
                "row {r}: edits {s}..+{n} outside the {} edits",
                edits.len()
            ))?;
        let mut seen = std::collections::HashSet::new();
        for e in range {
            if e.token as usize >= vocab || !seen.insert(e.token) {
                return Err(format!(
                    "row {r}: edit of token {} (vocab {vocab}, once per row)",
                    e.token
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: i32, top_p: f32, min_p: f32, u: f32) -> SampleParams {
        SampleParams {
            temperature,
            top_k,
            top_p,
            min_p,
            u,
            ..Default::default()
        }
    }

    #[test]
    fn edits_compose_bias_repetition_and_penalties_in_the_cpu_order() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut edits = Vec::new();
        let sp = row_inputs(
            &p,
            &[(7, 1.0), (7, 0.5), (9, -3.0)],
            (&[7, 1], &[1, 1, 2]),
            0.3,
            &mut edits,
        );
        assert_eq!((sp.edits_start, sp.edits_len), (0, 4));
        let e = |t: u32| *edits.iter().find(|e| e.token == t).unwrap();
        // 7: bias 1.5, in the prompt: (2 + 1.5) / 2.
        assert_eq!(e(7).apply(2.0), 1.75);
        // 9: bias only.
        assert_eq!(e(9).apply(1.0), -2.0);
        // 1: prompt and output twice: -1 * 2 - (0.5 + 0.25 * 2).
        assert_eq!(e(1).apply(-1.0), -3.0);
        // 2: output once: 4 / 2 - 0.75.
        assert_eq!(e(2).apply(4.0), 1.25);
    }

    #[test]
    fn row_inputs_are_checked() {
        let mut edits = Vec::new();
        let p = SamplingParams {
            repetition_penalty: 1.1,
            ..Default::default()
        };
        let a = row_inputs(&p, &[(3, 1.0)], (&[3, 4], &[]), 0.1, &mut edits);
        let b = row_inputs(&p, &[], (&[5], &[5]), 0.2, &mut edits);
        check_row_inputs(&[a, b], &edits, 6).unwrap();
        assert!(check_row_inputs(&[a, b], &edits, 5).is_err());
        assert!(check_row_inputs(&[a, b], &edits[..2], 6).is_err());
        let twice = [edits[0], edits[0]];
        let c = SampleParams { edits_len: 2, ..a };
        assert!(check_row_inputs(&[c], &twice, 6).is_err());
    }

    #[test]
    fn greedy_takes_the_lowest_id_of_the_largest() {
        let l = [0.5, 3.0, -1.0, 3.0];
        assert_eq!(sample_row(&l, &params(0.0, 0, 1.0, 0.0, 0.5), &[]).token, 1);
        assert_eq!(sample_row(&l, &params(0.7, 1, 1.0, 0.0, 0.5), &[]).token, 1);
        let bias = [Edit {
            token: 3,
            bias: 0.1,
            rep: 1.0,
            sub: 0.0,
        }];
        let mut p = params(0.0, 0, 1.0, 0.0, 0.5);
        p.want_logprob = 1;
        let s = sample_row(&l, &p, &bias);
        assert_eq!(s.token, 3);
        // The log-probability is under the raw logits, before the bias.
        let lse = l.iter().map(|x: &f32| x.exp()).sum::<f32>().ln();
        assert!((s.logprob - (3.0 - lse)).abs() < 1e-6, "{}", s.logprob);
    }

    #[test]
    fn u_walks_the_sorted_weights() {
        // Weights e^0, e^-1, e^-2 for ids 2, 0, 1.
        let l = [1.0, 0.0, 2.0];
        let w = [1.0f32, (-1.0f32).exp(), (-2.0f32).exp()];
        let total: f32 = w.iter().sum();
        let at = |u: f32| sample_row(&l, &params(1.0, 0, 1.0, 0.0, u), &[]).token;
        assert_eq!(at(0.0), 2);
        assert_eq!(at(0.99 * w[0] / total), 2);
        assert_eq!(at(1.01 * w[0] / total), 0);
        assert_eq!(at(0.999), 1);
        // top-k 2 drops id 1; min-p 0.5 keeps only id 2.
        assert_eq!(
            sample_row(&l, &params(1.0, 2, 1.0, 0.0, 0.999), &[]).token,
            0
        );
        assert_eq!(
            sample_row(&l, &params(1.0, 0, 1.0, 0.5, 0.999), &[]).token,
            2
        );
    }

    /// A vocabulary past the pool: the row is the host's when the kept set may leave the pool,
    /// and the device's when top-k, top-p or min-p keeps it inside.
    #[test]
    fn rows_whose_kept_set_may_leave_the_pool_go_to_the_host() {
        let vocab = 3000;
        let flat = vec![0.0f32; vocab];
        let mut peaked = flat.clone();
        peaked[1234] = 30.0;
        // No cut; a top-k past the pool; top-p over a flat row; min-p keeping every equal
        // weight: each kept set reaches past the pool.
        for p in [
            params(1.0, 0, 1.0, 0.0, 0.5),
            params(1.0, 2000, 1.0, 0.0, 0.5),
            params(1.0, 0, 0.9, 0.0, 0.5),
            params(1.0, 0, 1.0, 0.5, 0.5),
        ] {
            assert_eq!(sample_row(&flat, &p, &[]).token, HOST, "{p:?}");
        }
        // Ties: the pool holds the lowest ids, so top-k 10 of a flat row walks ids 0..10.
        assert_eq!(
            sample_row(&flat, &params(1.0, 10, 1.0, 0.0, 0.55), &[]).token,
            5
        );
        for p in [params(1.0, 0, 0.9, 0.0, 0.5), params(1.0, 0, 1.0, 0.1, 0.5)] {
            assert_eq!(sample_row(&peaked, &p, &[]).token, 1234, "{p:?}");
        }
    }
}
