//! The engine loop: schedule, run, sample, emit. One thread owns all of it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokenfab_backend::cpu::log_softmax;
use tokenfab_loader::Tokenizer;
use tokenfab_models::Llama;
use tokenfab_scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use tokenfab_types::{FinishReason, RequestId, TokenId};

use crate::detok::IncrementalDecoder;
use crate::drain::DrainClock;
use crate::error::{Error, Result};
use crate::handle::{Command, EngineConfig, Shared};
use crate::outbox::Outbox;
use crate::request::{EngineRequest, StreamEvent, TokenLogprob, Usage};
use crate::runner::{ModelRunner, StepLogits};
use crate::sampler::Sampler;
use crate::stop::StopChecker;

/// One request as the engine tracks it (the scheduler tracks its tokens and blocks).
struct Active {
    req: EngineRequest,
    /// Events back to the consumer (bounded channel + backlog; never blocks the engine).
    out: Outbox,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stop: StopChecker,
    output: Vec<TokenId>,
    /// Per prompt position, filled as prompt chunks run (index 0 stays `None`).
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    prompt_logprobs_sent: bool,
    cached_tokens: usize,
    arrival: Instant,
    scheduled: bool,
    last_token: Option<Instant>,
    /// The log-probability of the token just sampled, when asked for.
    next_logprob: Option<TokenLogprob>,
}

pub(crate) struct EngineCore {
    runner: ModelRunner,
    sched: Scheduler,
    tokenizer: Arc<Tokenizer>,
    active: HashMap<RequestId, Active>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    preemptions_seen: u64,
    prefix_seen: (u64, u64),
    /// Finished requests whose last events the consumer has not taken yet.
    lingering: Vec<Outbox>,
    /// A consumer that takes nothing for this long while events wait is dropped (aborted).
    stream_timeout: Duration,
    /// Step and finish pace, for the Retry-After of refused requests.
    drain: DrainClock,
}

impl EngineCore {
    pub fn new(
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        cfg: &EngineConfig,
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let exec = crate::device::build_executor(
            model,
            &crate::device::ExecutorOptions {
                device: cfg.device,
                block_size: cfg.block_size,
                kv_cache_bytes: cfg.kv_cache_bytes,
                kv_dtype: cfg.kv_cache_dtype,
                gpu_memory_utilization: cfg.gpu_memory_utilization,
                max_batch_tokens: cfg.max_num_batched_tokens,
                max_graph_batch: cfg.max_num_seqs,
                max_blocks: None,
            },
        )?;
        let num_blocks = exec.num_blocks();
        let sched = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            block_size: cfg.block_size,
            num_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
            max_model_len: exec.config().context_len,
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Self {
            runner: ModelRunner::new(exec),
            sched,
            tokenizer,
            active: HashMap::new(),
            rx,
            shared,
            preemptions_seen: 0,
            prefix_seen: (0, 0),
            lingering: Vec::new(),
            stream_timeout: cfg.stream_timeout,
            drain: DrainClock::default(),
        })
    }

    pub fn context_len(&self) -> usize {
        self.runner.exec.config().context_len
    }
    pub fn vocab_size(&self) -> usize {
        self.runner.exec.config().vocab_size
    }
    pub fn kv_cache_tokens(&self) -> usize {
        self.runner.exec.num_blocks() * self.runner.exec.block_size()
    }
    pub fn weight_bytes(&self) -> usize {
        self.runner.exec.weight_bytes()
    }

    /// The loop: take commands, then one step while anything is unfinished.
    pub fn run(mut self) {
        loop {
            self.shared.beat();
            if self.shared.stopped.load(Ordering::SeqCst) {
                self.fail_all("the server shut down before the request finished");
                return;
            }
            let idle = !self.sched.has_unfinished();
            if !self.take_commands(idle) {
                self.fail_all("the engine stopped");
                return;
            }
            self.reap_disconnected();
            if self.sched.has_unfinished() {
                let t = Instant::now();
                if let Err(e) = self.step() {
                    tracing::error!(error = %e, "engine step failed");
                    self.fail_all("internal error");
                }
                self.drain.step(t.elapsed());
            }
            self.update_gauges();
        }
    }

    /// One engine step: the whole of continuous batching is these lines.
    fn step(&mut self) -> Result<()> {
        let out = self.sched.schedule();
        self.note_scheduled(&out);
        if out.scheduled.is_empty() {
            return Ok(());
        }
        let all_rows = self.wants_prompt_logprobs(&out);
        let logits = self.runner.execute(&out, |i| all_rows[i])?;
        self.record_prompt_logprobs(&out, &logits);
        let sampled = self.sample(&out, &logits);
        self.runner.recycle(logits);
        self.sched.update(&out, &sampled);
        self.emit(&sampled);
        Ok(())
    }

    /// Applies waiting commands; blocks briefly for one when idle. False when every handle is gone.
    fn take_commands(&mut self, idle: bool) -> bool {
        if idle {
            // Finished streams still handing over their last events are checked often.
            let wait = if self.lingering.is_empty() { 200 } else { 5 };
            match self.rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(c) => self.apply(c),
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.apply(c),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return !self.active.is_empty(),
            }
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Add {
                id,
                req,
                arrival,
                tx,
            } => {
                let max_tokens = req.max_tokens;
                let skip_cache = req.prompt_logprobs.is_some();
                if let Err(e) = self.sched.add_request_with(
                    id,
                    req.prompt_tokens.clone(),
                    max_tokens,
                    skip_cache,
                ) {
                    let _ = tx.try_send(StreamEvent::Error(e.to_string()));
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.shared.unfinished.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                if let Some(g) = req.group {
                    self.sched.set_group(id, g);
                }
                let prompt_len = req.prompt_tokens.len();
                self.active.insert(
                    id,
                    Active {
                        sampler: Sampler::new(req.sampling.clone()),
                        detok: IncrementalDecoder::new(),
                        stop: StopChecker::new(req.stop.clone()),
                        output: Vec::new(),
                        prompt_logprobs: vec![
                            None;
                            if req.prompt_logprobs.is_some() {
                                prompt_len
                            } else {
                                0
                            }
                        ],
                        prompt_logprobs_sent: false,
                        cached_tokens: 0,
                        arrival,
                        scheduled: false,
                        last_token: None,
                        next_logprob: None,
                        req: *req,
                        out: Outbox::new(tx),
                    },
                );
            }
            Command::Abort(id) => self.finish(id, FinishReason::Abort),
        }
    }

    /// Clients that went away, or took nothing for `stream_timeout` while events waited, are
    /// aborted before the step, freeing their blocks; backlogs move on as far as they fit.
    fn reap_disconnected(&mut self) {
        let now = Instant::now();
        let limit = self.stream_timeout;
        let mut gone = Vec::new();
        for (&id, a) in self.active.iter_mut() {
            if a.out.is_closed() {
                gone.push(id);
            } else if !a.out.flush(now) && a.out.timed_out(now, limit) {
                tracing::warn!(
                    request = id,
                    held = a.out.backlog_len(),
                    timeout_s = limit.as_secs_f64(),
                    "the client stopped reading its stream; aborting the request"
                );
                a.out.time_out(limit);
                gone.push(id);
            }
        }
        for id in gone {
            self.finish(id, FinishReason::Abort);
        }
        self.lingering.retain_mut(|o| {
            if o.is_closed() || o.flush(now) {
                return false;
            }
            if o.timed_out(now, limit) {
                o.time_out(limit);
                return false;
            }
            true
        });
    }

    fn note_scheduled(&mut self, out: &SchedulerOutput) {
        for s in &out.scheduled {
            if let Some(a) = self.active.get_mut(&s.id) {
                if !a.scheduled {
                    a.scheduled = true;
                    a.cached_tokens = s.num_cached_tokens;
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.shared
                        .metrics
                        .request_queue_time_seconds
                        .observe(a.arrival.elapsed().as_secs_f64());
                }
            }
        }
        let m = &self.shared.metrics;
        m.prompt_tokens.add(
            out.scheduled
                .iter()
                .filter_map(|s| {
                    self.active.get(&s.id).map(|a| {
                        s.tokens
                            .len()
                            .min(a.req.prompt_tokens.len().saturating_sub(s.start))
                    })
                })
                .sum::<usize>() as u64,
        );
    }

    /// Per scheduled sequence: does it need the logits of every row (prompt log-probabilities)?
    fn wants_prompt_logprobs(&self, out: &SchedulerOutput) -> Vec<bool> {
        out.scheduled
            .iter()
            .map(|s| {
                self.active.get(&s.id).is_some_and(|a| {
                    a.req.prompt_logprobs.is_some()
                        && !a.prompt_logprobs_sent
                        && s.start < a.req.prompt_tokens.len()
                })
            })
            .collect()
    }

    /// Fills prompt log-probabilities from every row of prompt chunks; sends them once complete.
    fn record_prompt_logprobs(&mut self, out: &SchedulerOutput, logits: &StepLogits) {
        for (i, s) in out.scheduled.iter().enumerate() {
            let Some(a) = self.active.get_mut(&s.id) else {
                continue;
            };
            let (Some(top_n), false) = (a.req.prompt_logprobs, a.prompt_logprobs_sent) else {
                continue;
            };
            let rows = logits.rows[i].clone();
            if rows.len() != s.tokens.len() {
                continue;
            }
            let prompt = &a.req.prompt_tokens;
            for (j, r) in rows.enumerate() {
                let next = s.start + j + 1;
                if next < prompt.len() {
                    a.prompt_logprobs[next] =
                        Some(token_logprob(logits.row(r), prompt[next], top_n));
                }
            }
            if s.start + s.tokens.len() >= prompt.len() {
                a.prompt_logprobs_sent = true;
                a.out.send(
                    StreamEvent::PromptLogprobs(std::mem::take(&mut a.prompt_logprobs)),
                    Instant::now(),
                );
            }
        }
    }

    /// Samples a token for every sequence whose known tokens are all computed.
    fn sample(&mut self, out: &SchedulerOutput, logits: &StepLogits) -> Vec<(RequestId, TokenId)> {
        let mut sampled = Vec::new();
        let mut row = Vec::new();
        for (i, s) in out.scheduled.iter().enumerate() {
            let Some(a) = self.active.get_mut(&s.id) else {
                continue;
            };
            let Some(last) = logits.rows[i].clone().last().filter(|_| s.sample) else {
                continue;
            };
            row.clear();
            row.extend_from_slice(logits.row(last));
            let lp = a.req.logprobs.map(|n| (n, row.clone()));
            for &(t, b) in &a.req.logit_bias {
                if let Some(l) = row.get_mut(t as usize) {
                    *l += b;
                }
            }
            let tok = a.sampler.sample(&mut row, &a.req.prompt_tokens, &a.output);
            a.next_logprob = lp.map(|(n, raw)| token_logprob(&raw, tok, n));
            sampled.push((s.id, tok));
        }
        sampled
    }

    /// Streams each sampled token and finishes requests that stop.
    fn emit(&mut self, sampled: &[(RequestId, TokenId)]) {
        let now = Instant::now();
        for &(id, tok) in sampled {
            let capped = self.sched.is_length_capped(id);
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            let m = &self.shared.metrics;
            m.generation_tokens.add(1);
            match a.last_token {
                None => m
                    .time_to_first_token_seconds
                    .observe((now - a.arrival).as_secs_f64()),
                Some(t) => m
                    .inter_token_latency_seconds
                    .observe((now - t).as_secs_f64()),
            }
            a.last_token = Some(now);
            a.output.push(tok);
            let logprob = a.next_logprob.take();
            let eog = (!a.req.ignore_eos && self.tokenizer.is_eog(tok))
                || a.req.stop_token_ids.contains(&tok);
            let mut reason = None;
            if eog {
                reason = Some(FinishReason::Stop);
            } else {
                let text = a.detok.push(&self.tokenizer.token_bytes(tok));
                let (released, hit) = a.stop.push(&text);
                a.out.send(
                    StreamEvent::Token {
                        token: tok,
                        text: released,
                        logprob,
                    },
                    now,
                );
                if hit {
                    reason = Some(FinishReason::Stop);
                }
            }
            if reason.is_none() && (a.output.len() >= a.req.max_tokens || capped) {
                reason = Some(FinishReason::Length);
            }
            if let Some(r) = reason {
                self.finish(id, r);
            }
        }
    }

    /// Ends a request: frees its blocks, sends its last text and `End` (unless aborted).
    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        self.sched.finish(id);
        let Some(mut a) = self.active.remove(&id) else {
            return;
        };
        if !a.scheduled {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.shared.unfinished.fetch_sub(1, Ordering::SeqCst);
        let m = &self.shared.metrics;
        m.e2e_request_latency_seconds
            .observe(a.arrival.elapsed().as_secs_f64());
        match reason {
            FinishReason::Stop => m.request_success_stop.add(1),
            FinishReason::Length => m.request_success_length.add(1),
            FinishReason::Abort => m.request_success_abort.add(1),
        }
        if reason == FinishReason::Abort {
            // An error event (fail_all) may still wait for its consumer.
            if a.out.backlog_len() > 0 {
                self.lingering.push(a.out);
            }
            return;
        }
        let now = Instant::now();
        let mut tail = a.detok.finish();
        tail = a.stop.push(&tail).0 + &a.stop.finish();
        if !tail.is_empty() {
            a.out.send(StreamEvent::Text(tail), now);
        }
        let usage = Usage {
            prompt_tokens: a.req.prompt_tokens.len(),
            completion_tokens: a.output.len(),
            cached_tokens: a.cached_tokens,
        };
        a.out.send(StreamEvent::End { reason, usage }, now);
        if a.out.backlog_len() > 0 {
            self.lingering.push(a.out);
        }
    }

    fn fail_all(&mut self, msg: &str) {
        let ids: Vec<RequestId> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(a) = self.active.get_mut(&id) {
                a.out
                    .send(StreamEvent::Error(msg.to_string()), Instant::now());
            }
            self.finish(id, FinishReason::Abort);
        }
    }

    fn update_gauges(&mut self) {
        let m = &self.shared.metrics;
        m.num_requests_running.set(self.sched.num_running() as f64);
        m.num_requests_waiting.set(self.sched.num_waiting() as f64);
        m.kv_cache_usage_perc.set(self.sched.kv_usage() as f64);
        let p = self.sched.num_preemptions();
        m.num_preemptions.add(p - self.preemptions_seen);
        self.preemptions_seen = p;
        let (q, h) = self.sched.prefix_cache_stats();
        m.prefix_cache_queries.add(q - self.prefix_seen.0);
        m.prefix_cache_hits.add(h - self.prefix_seen.1);
        self.prefix_seen = (q, h);
        let nearest = self
            .active
            .values()
            .filter(|a| a.scheduled)
            .map(|a| a.req.max_tokens.saturating_sub(a.output.len()))
            .min();
        let est = self.drain.tick(
            Instant::now(),
            m.e2e_request_latency_seconds.count(),
            self.sched.has_unfinished(),
            nearest,
        );
        self.shared.retry_after_ms.store(est, Ordering::Relaxed);
    }
}

/// The log-probability of `token` under raw `logits`, with the `top_n` most likely tokens.
pub(crate) fn token_logprob(logits: &[f32], token: TokenId, top_n: usize) -> TokenLogprob {
    let mut lsm = vec![0f32; logits.len()];
    log_softmax(logits, &mut lsm);
    let mut top: Vec<(TokenId, f32)> = Vec::with_capacity(top_n);
    if top_n > 0 {
        let mut idx: Vec<u32> = (0..lsm.len() as u32).collect();
        let k = top_n.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            lsm[b as usize].total_cmp(&lsm[a as usize]).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| lsm[b as usize].total_cmp(&lsm[a as usize]).then(a.cmp(&b)));
        top.extend(idx.into_iter().map(|i| (i, lsm[i as usize])));
    }
    TokenLogprob {
        token,
        logprob: lsm[token as usize],
        top,
    }
}
