//! n-gram speculative decoding (prompt lookup), configured as vLLM's `--speculative-config
//! '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}'`.
//!
//! After each step, a decoding request whose last tokens (an n-gram of `prompt_lookup_min` to
//! `prompt_lookup_max` tokens) occurred earlier in its prompt or output proposes the tokens that
//! followed that occurrence as a draft ([`ngram_draft`], vLLM's `NgramProposer` rule: the longest
//! such n-gram, at its earliest occurrence). The scheduler puts the draft after the request's
//! last token; one forward pass computes all of them, and the sampler samples after each
//! position in turn, keeping draft tokens while they equal what it sampled (see
//! [`crate::sampler::Sampler::sample`]). Greedy output is the same as without speculation, since
//! logits do not depend on the batch; sampled output keeps the target distribution exactly.
//!
//! Drafting costs forward-pass rows, so each request decides for itself ([`SpecState`]): it
//! drafts as many tokens as its recent acceptance pays for at the current batch size, judged by
//! the pass times the engine has seen for each number of rows ([`CostModel`]), and backs off
//! (exponentially longer pauses) while its drafts keep failing.
//!
//! Structured outputs: constrained requests are not drafted (`EngineCore::propose` skips them):
//! their grammar masks come from `constrained.rs`, one matcher state per step, and a draft's
//! verification rows would each need the state after the draft tokens before them. A request's
//! own [`crate::LogitsProcessor`]s can still cut a draft ([`crate::Sampler::validate_draft`]) to
//! the prefix they allow.

use serde_json::Value;

use tokenfab_types::TokenId;

use crate::error::{Error, Result};

/// vLLM's `SpeculativeConfig` for `method: "ngram"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Most draft tokens per step.
    pub num_speculative_tokens: usize,
    /// Longest n-gram matched.
    pub prompt_lookup_max: usize,
    /// Shortest n-gram matched.
    pub prompt_lookup_min: usize,
}

impl SpeculativeConfig {
    /// Parses vLLM's JSON. `method` must be `ngram`; `num_speculative_tokens` is required; a
    /// missing lookup bound takes the other's value, both missing are 5 (vLLM's defaults). Any
    /// other key is refused by name.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |msg: String| Error::Invalid(format!("--speculative-config: {msg}"));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("must be a JSON object".into()))?;
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "method" | "num_speculative_tokens" | "prompt_lookup_max" | "prompt_lookup_min"
            ) {
                return Err(bad(format!(
                    "`{key}` is not supported (supported: method, num_speculative_tokens, \
                     prompt_lookup_max, prompt_lookup_min)"
                )));
            }
        }
        match obj.get("method").and_then(Value::as_str) {
            Some("ngram") => {}
            Some(m) => {
                return Err(bad(format!(
                    "`method` must be \"ngram\" (the only one supported). Given: {m:?}"
                )))
            }
            None => return Err(bad("`method` is required (\"ngram\")".into())),
        }
        let count = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => Ok(Some(n as usize)),
                    _ => Err(bad(format!("`{key}` must be an integer >= 1. Given: {v}"))),
                },
            }
        };
        let k = count("num_speculative_tokens")?
            .ok_or_else(|| bad("`num_speculative_tokens` is required".into()))?;
        let (max, min) = match (count("prompt_lookup_max")?, count("prompt_lookup_min")?) {
            (None, None) => (5, 5),
            (Some(max), None) => (max, max),
            (None, Some(min)) => (min, min),
            (Some(max), Some(min)) => (max, min),
        };
        if min > max {
            return Err(bad(format!(
                "`prompt_lookup_min` must be <= `prompt_lookup_max`. Given: {min} > {max}"
            )));
        }
        if k > 64 {
            return Err(bad(format!(
                "`num_speculative_tokens` must be <= 64. Given: {k}"
            )));
        }
        Ok(Self {
            num_speculative_tokens: k,
            prompt_lookup_max: max,
            prompt_lookup_min: min,
        })
    }
}

/// The draft prompt lookup proposes after `tokens`: the up to `k` tokens that followed the
/// earliest occurrence of the longest n-gram (`min_n..=max_n` tokens) ending `tokens` that also
/// occurs earlier (overlapping the end is allowed). Empty when there is none.
pub fn ngram_draft(tokens: &[TokenId], min_n: usize, max_n: usize, k: usize) -> &[TokenId] {
    let len = tokens.len();
    if min_n == 0 || len < min_n + 1 || k == 0 {
        return &[];
    }
    // best: (n-gram length, index of its last token) of the earliest longest match.
    let mut best = (0, 0);
    for end in 0..len - 1 {
        let mut n = 0;
        while n < max_n && n <= end && tokens[end - n] == tokens[len - 1 - n] {
            n += 1;
        }
        if n >= min_n && n > best.0 {
            best = (n, end);
            if n == max_n {
                break;
            }
        }
    }
    if best.0 == 0 {
        return &[];
    }
    let from = best.1 + 1;
    &tokens[from..(from + k).min(len)]
}

/// What a forward pass of decode steps costs by its number of rows: for each row count seen, a
/// floor of the times observed (it drops to any faster pass at once and rises 1% a pass while
/// passes stay slower), so that other processes slowing some passes, or a cold first pass, do
/// not make drafts look dear; between row counts seen it interpolates.
#[derive(Clone, Debug, Default)]
pub struct CostModel {
    /// `floor[rows]`: seconds, 0 when not seen.
    floor: Vec<f64>,
}

impl CostModel {
    /// A decode pass (no prompt rows) of `rows` rows took `secs`.
    pub fn observe(&mut self, rows: usize, secs: f64) {
        if rows == 0 || secs.is_nan() || secs <= 0.0 {
            return;
        }
        if self.floor.len() <= rows {
            self.floor.resize(rows + 1, 0.0);
        }
        let f = &mut self.floor[rows];
        *f = if *f == 0.0 { secs } else { secs.min(*f * 1.01) };
    }

    /// The time of a pass of `rows` rows, from the nearest row counts seen on either side (the
    /// nearest one alone when it is within a quarter of `rows`); `None` when unknown. A count
    /// whose floor is above that of some larger count is left out (a slow pass at a count not
    /// seen since), so that it can make extra rows look neither free nor dear.
    pub fn time(&self, rows: usize) -> Option<f64> {
        // valid[r]: seen, and no larger count was seen faster.
        let mut valid = vec![false; self.floor.len()];
        let mut least = f64::INFINITY;
        for (r, &t) in self.floor.iter().enumerate().rev() {
            if t > 0.0 && t <= least {
                valid[r] = true;
                least = t;
            }
        }
        let below = (1..=rows.min(self.floor.len().saturating_sub(1)))
            .rev()
            .find(|&r| valid[r]);
        let above = (rows..self.floor.len()).find(|&r| valid[r]);
        let near = |r: usize| r.abs_diff(rows) * 4 <= rows;
        match (below, above) {
            (Some(b), Some(a)) if a == b => Some(self.floor[a]),
            (Some(b), Some(a)) => {
                let (tb, ta) = (self.floor[b], self.floor[a]);
                Some(tb + (ta - tb) * (rows - b) as f64 / (a - b) as f64)
            }
            (Some(r), None) | (None, Some(r)) if near(r) => Some(self.floor[r]),
            _ => None,
        }
    }

    /// The acceptance rate a draft token needs to pay for its row when `rows` decode rows run
    /// with about `drafts` draft rows beside them: a token costs `time(rows) / rows`, a draft
    /// row the slope from `time(rows)` to `time(rows + drafts)`, and an accepted draft saves one
    /// token's share. 0 (draft, and so measure) while either time is unknown.
    pub fn breakeven(&self, rows: usize, drafts: usize) -> f64 {
        let rows = rows.max(1);
        let drafts = drafts.max(1);
        match (self.time(rows), self.time(rows + drafts)) {
            (Some(t0), Some(t1)) => {
                let per_row = ((t1 - t0) / drafts as f64).max(0.0);
                (per_row * rows as f64 / t0).min(1.0)
            }
            _ => 0.0,
        }
    }
}

/// One request's speculation: its recent acceptance and its back-off.
#[derive(Clone, Debug)]
pub struct SpecState {
    /// Decayed counts of accepted draft tokens and of rejections (at most one per draft): the
    /// chance that a draft token is accepted given the ones before it were is about
    /// `accepted / (accepted + rejected)`.
    accepted: f64,
    rejected: f64,
    /// Steps left without drafting.
    pause: u32,
    /// The next pause, doubled at each pause in a row.
    backoff: u32,
}

impl Default for SpecState {
    fn default() -> Self {
        // Optimistic start: one accepted token, so the first match is tried.
        Self {
            accepted: 1.0,
            rejected: 0.0,
            pause: 0,
            backoff: 1,
        }
    }
}

impl SpecState {
    /// Weight of the past at each verification.
    const KEEP: f64 = 0.7;
    /// Longest pause, in steps.
    const MAX_PAUSE: u32 = 64;

    /// Chance that the next draft token is accepted, the ones before it having been.
    pub fn acceptance(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Draft tokens to ask for this step, at most `k`: the longest draft whose last token is
    /// still likely enough to be reached and accepted to pay for its row (`breakeven`). 0 while
    /// paused; when even one token does not pay, a pause starts (twice as long as the last one
    /// in a row), and at its end one token is tried again.
    pub fn draft_len(&mut self, k: usize, breakeven: f64) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return if self.pause == 0 { 1.min(k) } else { 0 };
        }
        let p = self.acceptance();
        let (mut n, mut reach) = (0, 1.0);
        while n < k {
            reach *= p;
            if reach <= breakeven {
                break;
            }
            n += 1;
        }
        if n == 0 {
            self.pause = self.backoff;
            self.backoff = (self.backoff * 2).min(Self::MAX_PAUSE);
        }
        n
    }

    /// A verified draft of `drafted` tokens, the first `accepted` of them accepted.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        self.accepted = self.accepted * Self::KEEP + accepted as f64;
        self.rejected = self.rejected * Self::KEEP + f64::from(u8::from(accepted < drafted));
        if accepted > 0 {
            self.backoff = 1;
            self.pause = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_parses_as_vllm_does_and_names_what_is_wrong() {
        let c = SpeculativeConfig::from_json(
            r#"{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}"#,
        )
        .unwrap();
        assert_eq!(
            (
                c.num_speculative_tokens,
                c.prompt_lookup_max,
                c.prompt_lookup_min
            ),
            (5, 4, 2)
        );
        let c = SpeculativeConfig::from_json(r#"{"method":"ngram","num_speculative_tokens":3}"#)
            .unwrap();
        assert_eq!((c.prompt_lookup_max, c.prompt_lookup_min), (5, 5));
        let c = SpeculativeConfig::from_json(
            r#"{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_min":2}"#,
        )
        .unwrap();
        assert_eq!((c.prompt_lookup_max, c.prompt_lookup_min), (2, 2));
        for (json, says) in [
            (r#"{"num_speculative_tokens":3}"#, "`method` is required"),
            (
                r#"{"method":"eagle","num_speculative_tokens":3}"#,
                "\"eagle\"",
            ),
            (
                r#"{"method":"ngram"}"#,
                "`num_speculative_tokens` is required",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":0}"#,
                "`num_speculative_tokens` must be an integer >= 1. Given: 0",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":3,"prompt_lookup_max":2}"#,
                "Given: 3 > 2",
            ),
            (
                r#"{"method":"ngram","num_speculative_tokens":2,"model":"x"}"#,
                "`model` is not supported",
            ),
            ("[1]", "must be a JSON object"),
            ("{", "not JSON"),
        ] {
            let e = SpeculativeConfig::from_json(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }

    #[test]
    fn the_longest_ngram_at_its_earliest_occurrence_proposes_what_followed() {
        // vLLM's example: [1,2,3,4,2,3], min 2, max 3, k 4 -> [4,2,3].
        assert_eq!(ngram_draft(&[1, 2, 3, 4, 2, 3], 2, 3, 4), &[4, 2, 3]);
        // The 3-gram [7,8,9] beats the later 2-gram [8,9].
        let t = [7, 8, 9, 1, 2, 0, 8, 9, 5, 7, 8, 9];
        assert_eq!(ngram_draft(&t, 2, 3, 2), &[1, 2]);
        // Earliest of equally long matches.
        let t = [5, 6, 1, 5, 6, 2, 5, 6];
        assert_eq!(ngram_draft(&t, 2, 2, 3), &[1, 5, 6]);
        // Capped at max_n: a longer match counts as max_n, so the earliest max_n match wins.
        let t = [1, 2, 3, 9, 0, 1, 2, 3, 8, 0, 1, 2, 3];
        assert_eq!(ngram_draft(&t, 1, 2, 1), &[9]);
        // Nothing long enough, or too short a context.
        assert!(ngram_draft(&[1, 2, 3, 4], 2, 3, 4).is_empty());
        assert!(ngram_draft(&[1, 1], 2, 2, 4).is_empty());
        // A repeated token proposes itself, overlapping the end.
        assert_eq!(ngram_draft(&[4, 4, 4], 2, 2, 5), &[4]);
    }

    #[test]
    fn pass_times_keep_their_floor_and_price_draft_rows_by_batch_size() {
        let mut m = CostModel::default();
        assert_eq!(
            (m.time(1), m.breakeven(1, 5)),
            (None, 0.0),
            "unknown: try drafts"
        );
        // A cold first pass and a slow (contended) one do not stick.
        m.observe(1, 0.25);
        m.observe(1, 0.012);
        m.observe(1, 0.0065);
        assert_eq!(m.time(1), Some(0.0065));
        m.observe(1, 0.012);
        assert!(
            (m.time(1).unwrap() - 0.006565).abs() < 1e-12,
            "rises 1% a slow pass"
        );
        m.observe(1, 0.0065);
        for rows in [6, 64, 128, 448] {
            m.observe(rows, 0.006 + 0.0005 * rows as f64);
        }
        // A slow pass at a count not seen again does not make more rows look cheaper.
        m.observe(8, 0.5);
        assert!(
            (m.time(8).unwrap() - 0.0100).abs() < 1e-9,
            "from 6 and 64 rows"
        );
        // Between row counts seen, a straight line; far from any, unknown.
        assert!((m.time(96).unwrap() - 0.054).abs() < 1e-9);
        assert!(m.time(2000).is_none() && m.time(500).is_some());
        // One stream: a draft row costs 0.5 ms against ~6 ms a token: break-even ~8%.
        let one = m.breakeven(1, 5);
        assert!(one > 0.07 && one < 0.09, "{one}");
        // 64 streams with 64 drafts: a row costs 0.5 ms against 0.59 ms a token: ~84%.
        let many = m.breakeven(64, 64);
        assert!(many > 0.8 && many < 0.9, "{many}");
    }

    #[test]
    fn drafts_grow_with_acceptance_and_back_off_exponentially_when_they_fail() {
        let mut s = SpecState::default();
        // Optimistic start: full drafts while they are accepted.
        assert_eq!(s.draft_len(5, 0.1), 5);
        s.record(5, 5);
        assert_eq!(s.draft_len(5, 0.1), 5);
        // Failures bring the length down, then pauses of 1, 2, 4, ... steps with a 1-token probe
        // at the end of each.
        for _ in 0..10 {
            s.record(5, 0);
        }
        assert!(s.acceptance() < 0.1);
        let mut pattern = Vec::new();
        for _ in 0..12 {
            let n = s.draft_len(5, 0.1);
            if n > 0 {
                s.record(n, 0);
            }
            pattern.push(n);
        }
        assert_eq!(pattern, [0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
        // Success resets the back-off and the length recovers.
        s.record(1, 1);
        for _ in 0..4 {
            s.record(5, 5);
        }
        assert_eq!(s.draft_len(5, 0.1), 5);
        // A high break-even (a large batch) asks for a high acceptance.
        let mut s = SpecState::default();
        s.record(5, 3);
        assert!(s.acceptance() < 0.85 && s.draft_len(5, 0.85) == 0);
    }
}
