//! The engine loop in virtual time: the real [`Scheduler`] (and so the real KV-cache manager)
//! plans every step, the [`CostModel`] says how long it takes, and the bench's loads replay
//! against it. Every request generates exactly its `max_tokens` (as `tokenfab bench
//! --ignore-eos`), since no model decides when to stop.

use std::collections::HashMap;

use tokenfab_bench::metrics::{ErrorKind, RequestRecord};
use tokenfab_bench::runner::{sort_and_span, Bound, Load};
use tokenfab_bench::workload::{next_gap_s, Prompt, Rng};
use tokenfab_scheduler::{Scheduler, SchedulerConfig, SchedulerError};
use tokenfab_types::{RequestId, TokenId};

use crate::cost::{CostModel, SeqWork, StepCost};
use crate::PlanError;

/// A request in flight, times in virtual seconds.
#[derive(Debug)]
struct Live {
    /// Closed loop: the user who sent it.
    user: Option<usize>,
    sent_at: f64,
    input_len: usize,
    generated: usize,
    first: Option<f64>,
    last: Option<f64>,
    itl_ms: Vec<f64>,
    /// Refused: the error the client sees.
    error: Option<ErrorKind>,
}

/// Totals over every step simulated.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineStats {
    pub steps: u64,
    /// Virtual seconds spent in steps, by part.
    pub busy: StepCost,
    /// Tokens computed (prompt and output, recomputation included).
    pub tokens: u64,
    pub preemptions: u64,
}

/// One engine (one server) in virtual time.
pub struct SimEngine {
    sched: Scheduler,
    cost: CostModel,
    /// Virtual seconds since the engine started.
    clock: f64,
    /// Seconds between a client sending and the engine seeing it, and between the engine
    /// emitting a token and the client reading it (one way of a local HTTP round trip).
    latency_s: f64,
    /// More waiting requests than this are refused (the server's 429).
    max_queued: usize,
    next_id: RequestId,
    live: HashMap<RequestId, Live>,
    vocab: u32,
    rng: Rng,
    pub stats: EngineStats,
}

/// A request the load still has to send: when (virtual seconds) and which prompt.
#[derive(Clone, Copy, Debug)]
struct Pending {
    at: f64,
    prompt: usize,
    user: Option<usize>,
}

impl SimEngine {
    pub fn new(
        cfg: SchedulerConfig,
        cost: CostModel,
        latency_s: f64,
        max_queued: usize,
        vocab: usize,
    ) -> Result<Self, PlanError> {
        Ok(SimEngine {
            sched: Scheduler::new(cfg).map_err(|e| PlanError::Invalid(e.to_string()))?,
            cost,
            clock: 0.0,
            latency_s,
            max_queued,
            next_id: 1,
            live: HashMap::new(),
            vocab: vocab.max(1) as u32,
            rng: Rng::new(0x51_u64),
            stats: EngineStats::default(),
        })
    }

    /// The scheduler's limits.
    pub fn config(&self) -> &SchedulerConfig {
        self.sched.config()
    }

    /// The cost of a step computing `seqs` (no state changes).
    pub fn cost(&self) -> &CostModel {
        &self.cost
    }

    /// Runs one load to its end as `tokenfab bench` would (`runner::run_load`), starting now;
    /// returns the records (times from the run's start) and the time from the first request
    /// sent to the last one finished, in seconds.
    pub fn run_load(
        &mut self,
        prompts: &[Prompt],
        load: Load,
        bound: Bound,
        offset: usize,
        seed: u64,
    ) -> Result<(Vec<RequestRecord>, f64), PlanError> {
        if prompts.is_empty() {
            return Err(PlanError::Invalid("no prompts to send".into()));
        }
        let start = self.clock;
        let duration = bound.duration.map(|d| d.as_secs_f64());
        if bound.num_prompts.is_none() && duration.is_none() {
            return Err(PlanError::Invalid(
                "give --num-prompts or --duration".into(),
            ));
        }
        let allows = |sent: usize, at: f64| {
            bound.num_prompts.is_none_or(|n| sent < n) && duration.is_none_or(|d| at - start < d)
        };
        let mut pending: Vec<Pending> = Vec::new();
        let mut sent = 0;
        match load {
            Load::Concurrency(users) => {
                for u in 0..users.max(1) {
                    if !allows(sent, start) {
                        break;
                    }
                    pending.push(Pending {
                        at: start,
                        prompt: offset + sent,
                        user: Some(u),
                    });
                    sent += 1;
                }
            }
            Load::Rate { rate, burstiness } => {
                if !rate.is_finite() && bound.num_prompts.is_none() {
                    return Err(PlanError::Invalid(
                        "an infinite --request-rate needs --num-prompts".into(),
                    ));
                }
                let mut rng = Rng::new(seed);
                let mut at = start;
                while allows(sent, at) {
                    pending.push(Pending {
                        at,
                        prompt: offset + sent,
                        user: None,
                    });
                    sent += 1;
                    at += next_gap_s(&mut rng, rate, burstiness);
                }
            }
        }
        // Soonest last, so the next one pops off the end.
        pending.reverse();
        let mut records = Vec::new();
        // Requests whose user sends again after the next step: finished ones, and refused ones
        // (which cannot be admitted before a step has freed the queue).
        let mut again: Vec<Live> = Vec::new();
        loop {
            while let Some(p) = pending.last().copied() {
                if p.at + self.latency_s > self.clock {
                    break;
                }
                pending.pop();
                let prompt = &prompts[p.prompt % prompts.len()];
                if let Some(r) = self.submit(prompt, p.at, p.user) {
                    again.push(r);
                }
            }
            if self.sched.has_unfinished() {
                again.extend(self.step()?);
            } else if again.is_empty() {
                match pending.last() {
                    Some(p) => {
                        self.clock = self.clock.max(p.at + self.latency_s);
                        continue;
                    }
                    None => break,
                }
            }
            for done in again.drain(..) {
                let (user, end) = (done.user, done.last.unwrap_or(self.clock));
                records.push(self.record(start, done));
                // The user reads the end of the stream, then sends its next request.
                if let Some(u) = user {
                    if allows(sent, end) {
                        let at = end;
                        let i = pending.partition_point(|p| p.at > at);
                        pending.insert(
                            i,
                            Pending {
                                at,
                                prompt: offset + sent,
                                user: Some(u),
                            },
                        );
                        sent += 1;
                    }
                }
            }
        }
        let secs = sort_and_span(&mut records);
        Ok((records, secs))
    }

    /// Adds a request sent at `at`; a refused one comes back finished with its error.
    fn submit(&mut self, p: &Prompt, at: f64, user: Option<usize>) -> Option<Live> {
        let id = self.next_id;
        self.next_id += 1;
        let live = Live {
            user,
            sent_at: at,
            input_len: p.input_len,
            generated: 0,
            first: None,
            last: None,
            itl_ms: Vec::new(),
            error: None,
        };
        if self.sched.num_waiting() >= self.max_queued {
            return Some(self.failed(live, ErrorKind::Http(429)));
        }
        let prompt: Vec<TokenId> = match &p.token_ids {
            Some(ids) => ids.clone(),
            None => (0..p.input_len)
                .map(|_| self.rng.below(self.vocab as usize) as TokenId)
                .collect(),
        };
        match self.sched.add_request(id, prompt, p.output_len) {
            Ok(()) => {
                self.live.insert(id, live);
                None
            }
            // The server's validation refuses these with 400 before the engine sees them.
            Err(SchedulerError::TooLong { .. } | SchedulerError::EmptyPrompt) => {
                Some(self.failed(live, ErrorKind::Http(400)))
            }
            Err(_) => Some(self.failed(live, ErrorKind::Server)),
        }
    }

    /// Refused at once: the client sees the error one round trip after sending.
    fn failed(&self, mut live: Live, e: ErrorKind) -> Live {
        live.last = Some(live.sent_at + 2.0 * self.latency_s);
        live.error = Some(e);
        live
    }

    /// One engine step; returns the requests it finished.
    fn step(&mut self) -> Result<Vec<Live>, PlanError> {
        let before = self.sched.num_preemptions();
        let out = self.sched.schedule();
        if out.scheduled.is_empty() {
            return Err(PlanError::Invalid(format!(
                "the scheduler planned an empty step with {} running and {} waiting",
                self.sched.num_running(),
                self.sched.num_waiting()
            )));
        }
        let work: Vec<SeqWork> = out
            .scheduled
            .iter()
            .map(|s| SeqWork {
                start: s.start,
                tokens: s.tokens.len(),
                sample: s.sample,
            })
            .collect();
        let c = self.cost.step(&work);
        self.clock += c.seconds;
        self.stats.steps += 1;
        self.stats.busy.add(&c);
        self.stats.tokens += out.num_batched_tokens as u64;
        self.stats.preemptions += self.sched.num_preemptions() - before;
        let vocab = self.vocab as usize;
        let sampled: Vec<(RequestId, TokenId)> = out
            .scheduled
            .iter()
            .filter(|s| s.sample)
            .map(|s| (s.id, self.rng.below(vocab) as TokenId))
            .collect();
        // The scheduler ends a request at its length cap (no stop tokens are planned).
        let finished = self.sched.update(&out, &sampled);
        let seen = self.clock + self.latency_s;
        for &(id, _) in &sampled {
            let Some(l) = self.live.get_mut(&id) else {
                continue;
            };
            l.generated += 1;
            if let Some(prev) = l.last {
                l.itl_ms.push((seen - prev) * 1000.0);
            } else {
                l.first = Some(seen);
            }
            l.last = Some(seen);
        }
        let mut done = Vec::new();
        for f in finished {
            done.extend(self.live.remove(&f.request.id()));
        }
        Ok(done)
    }

    /// The bench's record of a finished (or refused) request, times from `start` in ms.
    fn record(&self, start: f64, l: Live) -> RequestRecord {
        let ms = |s: f64| s * 1000.0;
        let end = l.last.unwrap_or(l.sent_at);
        RequestRecord {
            sent_at_ms: ms(l.sent_at - start),
            ttft_ms: l.first.map(|f| ms(f - l.sent_at)),
            e2e_ms: ms(end - l.sent_at),
            itl_ms: l.itl_ms,
            input_tokens: l.input_len,
            output_tokens: l.generated,
            error: l.error,
        }
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
