//! What the engine keeps of each request beside what the scheduler owns, and the step's sampling:
//! prompt log-probabilities, tokens (verifying drafts), spread over the compute pool when the
//! step has enough of that work to pay for it.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use tokenfab_scheduler::{Request, ScheduledSeq, Scheduler, SchedulerOutput};
use tokenfab_types::RequestId;

use crate::detok::IncrementalDecoder;
use crate::metrics::SpecMetrics;
use crate::outbox::Outbox;
use crate::request::{StreamEvent, TokenLogprob};
use crate::runner::StepLogits;
use crate::sampler::{token_logprob, Sample, Sampler};
use crate::spec::SpecState;
use crate::stop::StopChecker;

/// Logits rows a step must read on the host before its work goes to the pool: below this,
/// fork-join costs more than it saves (a greedy row is ~10 µs; a sampled or log-probability row
/// several times that).
const PARALLEL_ROWS: usize = 16;

/// What the engine keeps of one request beside what the scheduler owns (its tokens, limits and
/// progress): how to sample it, how to turn its tokens into text, and where its events go.
pub(crate) struct Active {
    /// Sampling parameters, seeded stream, logits processors, logprobs wanted.
    pub sampler: Sampler,
    /// The request's `logit_bias` (also the sampler's processor), for a device sampler.
    pub logit_bias: Vec<(tokenfab_types::TokenId, f32)>,
    pub detok: IncrementalDecoder,
    pub stop: StopChecker,
    /// Events back to the consumer (bounded channel + backlog; never blocks the engine).
    pub out: Outbox,
    /// Prompt log-probabilities being gathered; `None` when not asked for or already sent.
    pub prompt_logprobs: Option<PromptLogprobs>,
    pub times: Times,
    /// Speculative decoding: recent acceptance and back-off.
    pub spec: SpecState,
}

pub(crate) struct PromptLogprobs {
    /// Alternatives per entry.
    pub top_n: usize,
    /// (prompt length,) filled as prompt chunks run; entry 0 stays `None`.
    pub entries: Vec<Option<TokenLogprob>>,
    /// Scratch: (vocab,) log-softmax of one row.
    pub lsm: Vec<f32>,
}

/// For the latency metrics.
pub(crate) struct Times {
    pub arrival: Instant,
    /// First scheduled (it left the queue).
    pub scheduled: bool,
    pub last_token: Option<Instant>,
}

/// The step's sampling for every scheduled request: prompt log-probabilities of prompt rows
/// (sent once the prompt is complete), then, where the scheduler asked for a token, the tokens
/// (accepted draft tokens, then the one after them), in scheduling order, a request's together.
pub(crate) fn sample_step(
    active: &mut HashMap<RequestId, Active>,
    sched: &Scheduler,
    out: &SchedulerOutput,
    logits: &StepLogits,
    spec: Option<&SpecMetrics>,
) -> Vec<(RequestId, Sample)> {
    let index: HashMap<RequestId, usize> = out
        .scheduled
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id, i))
        .collect();
    let mut work: Vec<(usize, &mut Active, &Request)> = active
        .iter_mut()
        .filter_map(|(id, a)| Some((*index.get(id)?, a, sched.request(*id)?)))
        .collect();
    work.sort_unstable_by_key(|w| w.0);
    let one = |(i, a, r): &mut (usize, &mut Active, &Request)| {
        let s = &out.scheduled[*i];
        let rows = logits.rows[*i].clone();
        record_prompt_logprobs(a, r, s, logits, rows.clone());
        let mut got = Vec::new();
        if s.sample {
            verify(a, r, s, logits, rows.end, &mut got, spec);
        }
        got
    };
    let rows: usize = logits.rows.iter().map(|r| r.len()).sum();
    let per_seq: Vec<Vec<Sample>> = if rows >= PARALLEL_ROWS && rayon::current_num_threads() > 1 {
        work.par_iter_mut().map(&one).collect()
    } else {
        work.iter_mut().map(&one).collect()
    };
    work.iter()
        .zip(per_seq)
        .flat_map(|((i, _, _), got)| {
            let id = out.scheduled[*i].id;
            got.into_iter().map(move |s| (id, s))
        })
        .collect()
}

/// Samples after the last known token and each draft token of `s` (the last `num_draft + 1`
/// of its logits rows, ending at `end`), and records the draft's outcome.
fn verify(
    a: &mut Active,
    r: &Request,
    s: &ScheduledSeq,
    logits: &StepLogits,
    end: usize,
    got: &mut Vec<Sample>,
    spec: Option<&SpecMetrics>,
) {
    let draft = &s.tokens[s.tokens.len() - s.num_draft..];
    let first = end - 1 - s.num_draft;
    if let Some((token, logprob)) = logits.device_token(first).filter(|_| s.num_draft == 0) {
        got.push(a.sampler.accept_device(token, logprob));
        return;
    }
    a.sampler.verify(
        |j| logits.row(first + j),
        r.prompt(),
        r.output(),
        draft,
        r.stop_token_ids(),
        got,
    );
    if s.num_draft > 0 {
        let accepted = got.len() - 1;
        a.spec.record(s.num_draft, accepted);
        if let Some(m) = spec {
            m.observe(s.num_draft, accepted);
        }
    }
}

/// Fills prompt log-probabilities from every row of a prompt chunk; sends them once complete.
fn record_prompt_logprobs(
    a: &mut Active,
    r: &Request,
    s: &ScheduledSeq,
    logits: &StepLogits,
    rows: std::ops::Range<usize>,
) {
    let Some(p) = a.prompt_logprobs.as_mut() else {
        return;
    };
    if rows.len() != s.tokens.len() {
        return;
    }
    let prompt = r.prompt();
    for (j, row) in rows.enumerate() {
        let next = s.start + j + 1;
        if next < prompt.len() {
            let lp = token_logprob(logits.row(row), prompt[next], p.top_n, &mut p.lsm);
            p.entries[next] = Some(lp);
        }
    }
    if s.start + s.tokens.len() >= prompt.len() {
        let entries = std::mem::take(&mut p.entries);
        a.prompt_logprobs = None;
        a.out
            .send(StreamEvent::PromptLogprobs(entries), Instant::now());
    }
}
