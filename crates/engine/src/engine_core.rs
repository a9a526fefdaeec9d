//! The engine loop: schedule, run, sample, update, emit. One thread owns all of it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokenfab_loader::Tokenizer;
use tokenfab_models::{Executor, Model};
use tokenfab_scheduler::{
    Finished, NewRequest, Request, Scheduler, SchedulerConfig, SchedulerOutput,
};
use tokenfab_types::{FinishReason, RequestId, TokenId};

use crate::constrained::{Constrained, Failed};
use crate::detok::IncrementalDecoder;
use crate::device_sampling::SampleStage;
use crate::drain::DrainClock;
use crate::error::Result;
use crate::handle::{Command, EngineConfig, Shared};
use crate::host::{sample_step, Active, PromptLogprobs, Times};
use crate::kv_events::KvEventPublisher;
use crate::outbox::Outbox;
use crate::profile::{CpuClocks, EnginePhase, StepTimer};
use crate::request::{EngineRequest, StreamEvent, Usage};
use crate::runner::ModelRunner;
use crate::sampler::{LogitBias, Sample, Sampler};
use crate::spec::{ngram_draft, CostModel, SpecState, SpeculativeConfig};
use crate::stop::StopChecker;

pub(crate) struct EngineCore {
    runner: ModelRunner,
    sched: Scheduler,
    tokenizer: Arc<Tokenizer>,
    /// The model's end-of-generation tokens: stop tokens of every request that does not ignore
    /// them.
    eog: Vec<TokenId>,
    active: HashMap<RequestId, Active>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    preemptions_seen: u64,
    prefix_seen: (u64, u64),
    /// Finished requests whose last events the consumer has not taken yet.
    lingering: Vec<Outbox>,
    /// A consumer that takes nothing for this long while events wait is dropped (aborted).
    stream_timeout: Duration,
    /// Publishes the KV manager's events after each step, when on.
    kv_events: Option<KvEventPublisher>,
    /// Where each step's time goes (metrics `engine_phase_*`).
    timer: StepTimer,
    /// n-gram speculative decoding, when configured.
    spec: Option<SpeculativeConfig>,
    /// Forward time against rows, for what a draft row costs (speculative decoding only).
    cost: CostModel,
    /// Matchers of the constrained requests (structured outputs, tool calls).
    constrained: Constrained,
    /// Grammar masks are computed beside the forward pass only when it leaves the CPU's cores
    /// free (a GPU's); on the CPU, before it (`constrained.rs`).
    overlap_masks: bool,
    /// Step and finish pace, for the Retry-After of refused requests.
    drain: DrainClock,
    /// The executor samples on the device: only token ids (and the logits of rows the host
    /// reads) come back (`device_sampling.rs`).
    device_sampling: bool,
    /// Device sampling's inputs, reused every step.
    stage: SampleStage,
    /// Device sampling: plan each step while the device runs the one before (`overlap.rs`).
    async_scheduling: bool,
    /// Device sampling: the step launched and not yet waited for.
    in_flight: Option<overlap::InFlight>,
}

#[path = "overlap.rs"]
mod overlap;

impl EngineCore {
    pub fn new(
        model: Model,
        tokenizer: Arc<Tokenizer>,
        cfg: &EngineConfig,
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        wrap: impl FnOnce(Box<dyn Executor>) -> Box<dyn Executor>,
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
                max_blocks: cfg.max_kv_blocks,
            },
        )?;
        let exec = wrap(exec);
        let num_blocks = exec.num_blocks();
        let mut sched = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            block_size: cfg.block_size,
            num_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
            max_model_len: exec.config().context_len,
        })?;
        let kv_events = match &cfg.kv_events {
            Some(s) if s.config.publishes() => Some(crate::kv_events::attach(
                &mut sched,
                s,
                &exec.device(),
                &shared.metrics,
            )?),
            _ => None,
        };
        let _ = shared
            .metrics
            .cache_config
            .set(cache_config_info(cfg, num_blocks));
        let overlap_masks = exec.device() != "cpu";
        let mut runner = ModelRunner::new(exec);
        Ok(Self {
            device_sampling: runner.samples_on_device(),
            stage: SampleStage::default(),
            async_scheduling: cfg.async_scheduling,
            in_flight: None,
            runner,
            sched,
            eog: tokenizer.eog_ids(),
            tokenizer,
            active: HashMap::new(),
            rx,
            shared,
            preemptions_seen: 0,
            prefix_seen: (0, 0),
            lingering: Vec::new(),
            stream_timeout: cfg.stream_timeout,
            kv_events,
            timer: StepTimer::new(CpuClocks::of_global_pool(), cfg.profile_forward),
            spec: cfg.speculative.clone(),
            cost: CostModel::default(),
            constrained: Constrained::default(),
            overlap_masks,
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
    pub fn device(&self) -> String {
        self.runner.exec.device()
    }
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        self.sched.config()
    }

    /// The loop: take commands, then one step while anything is unfinished.
    pub fn run(mut self) {
        loop {
            self.shared.beat();
            if self.shared.stopped.load(Ordering::SeqCst) {
                self.fail_all("the server shut down before the request finished");
                return;
            }
            if !self.sched.has_unfinished() && !self.wait_command() {
                self.fail_all("the engine stopped");
                return;
            }
            self.timer.begin();
            if !self.take_commands() {
                self.fail_all("the engine stopped");
                return;
            }
            self.reap_disconnected();
            self.timer.lap(EnginePhase::Commands);
            let stepped = self.sched.has_unfinished();
            if stepped {
                let t = Instant::now();
                if let Err(e) = self.step() {
                    tracing::error!(error = %e, "engine step failed");
                    self.fail_all("internal error");
                }
                self.drain.step(t.elapsed());
            }
            self.publish_kv_events();
            self.update_gauges();
            self.timer.lap(EnginePhase::Commands);
            if stepped {
                self.timer.end(&self.shared.metrics.phases);
            }
        }
    }

    /// Hands the KV events of the last step to the publisher (never blocks).
    fn publish_kv_events(&mut self) {
        let Some(p) = &self.kv_events else { return };
        let mut events = Vec::new();
        self.sched.drain_kv_events(&mut events);
        if !events.is_empty() {
            p.publish(events);
        }
    }

    /// One engine step: the whole of continuous batching is these lines; each phase's time goes
    /// to the step timer. An executor that samples on the device steps in `overlap.rs`.
    fn step(&mut self) -> Result<()> {
        if self.device_sampling {
            return self.device_step();
        }
        let out = self.sched.schedule();
        self.note_scheduled(&out);
        self.timer.lap(EnginePhase::Schedule);
        if out.scheduled.is_empty() {
            return Ok(());
        }
        let all_rows = self.wants_prompt_logprobs(&out);
        let overlap = self.overlap_masks;
        let (runner, timer, metrics) = (&mut self.runner, &mut self.timer, &self.shared.metrics);
        let (logits, failed) = self.constrained.masks_during(&out, metrics, overlap, || {
            runner.execute(&out, |i| all_rows[i], timer)
        });
        let mut logits = logits?;
        self.constrained.forget(&failed);
        self.constrained.apply(&out, &mut logits);
        let spec_metrics = self.shared.metrics.spec.as_ref();
        let sampled = sample_step(&mut self.active, &self.sched, &out, &logits, spec_metrics);
        let (sampled, finished) = self.settle(&out, sampled, failed);
        self.emit(sampled, finished);
        self.propose(&out);
        self.timer.lap(EnginePhase::Propose);
        Ok(())
    }

    /// Ends the requests whose grammar failed (their rows' tokens dropped), advances the
    /// grammars past the step's tokens and applies them to the scheduler, which ends requests on
    /// stop tokens and length. Laps `Sample` and `Update`.
    fn settle(
        &mut self,
        out: &SchedulerOutput,
        mut sampled: Vec<(RequestId, Sample)>,
        failed: Failed,
    ) -> (Vec<(RequestId, Sample)>, Vec<Finished>) {
        // Rows whose mask failed end with their error instead of a token.
        sampled.retain(|(id, _)| failed.iter().all(|(f, _)| f != id));
        self.fail(failed);
        let failed = self.constrained.accept(&sampled);
        sampled.retain(|(id, _)| failed.iter().all(|(f, _)| f != id));
        self.fail(failed);
        self.timer.lap(EnginePhase::Sample);
        let tokens: Vec<(RequestId, TokenId)> =
            sampled.iter().map(|(id, s)| (*id, s.token)).collect();
        let finished = self.sched.update(out, &tokens);
        self.timer.lap(EnginePhase::Update);
        (sampled, finished)
    }

    /// Blocks briefly for a command while idle. False when every handle is gone.
    fn wait_command(&mut self) -> bool {
        // Finished streams still handing over their last events are checked often.
        let wait = if self.lingering.is_empty() { 200 } else { 5 };
        match self.rx.recv_timeout(Duration::from_millis(wait)) {
            Ok(c) => self.apply(c),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return !self.active.is_empty(),
        }
        true
    }

    /// Applies waiting commands. False when every handle is gone and nothing is left to finish.
    fn take_commands(&mut self) -> bool {
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
            } => self.add(id, *req, arrival, tx),
            Command::Abort(id) => self.abort(id),
        }
    }

    /// Hands the request's tokens and limits to the scheduler and keeps the rest.
    fn add(
        &mut self,
        id: RequestId,
        req: EngineRequest,
        arrival: Instant,
        tx: tokio::sync::mpsc::Sender<StreamEvent>,
    ) {
        let mut stop_token_ids = req.stop_token_ids;
        // A constrained request ends where its grammar does: on end-of-generation.
        if !req.ignore_eos || req.grammar.is_some() {
            stop_token_ids.extend_from_slice(&self.eog);
        }
        let prompt_len = req.prompt_tokens.len();
        let new = NewRequest {
            id,
            prompt: req.prompt_tokens,
            max_tokens: req.max_tokens,
            stop_token_ids,
            skip_prefix_cache: req.prompt_logprobs.is_some(),
        };
        if let Err(e) = self.sched.add(new) {
            // `submit` checked the request against the same rules: this is a bug, not a refusal.
            tracing::error!(request = id, error = %e, "the scheduler refused a checked request");
            let _ = tx.try_send(StreamEvent::Error("internal error".into()));
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.shared.unfinished.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(g) = &req.grammar {
            self.constrained.add(id, g.matcher());
        }
        if let Some(g) = req.group {
            self.sched.set_group(id, g);
        }
        let mut sampler = Sampler::new(req.sampling).with_logprobs(req.logprobs);
        if !req.logit_bias.is_empty() {
            sampler = sampler.with_processor(Box::new(LogitBias(req.logit_bias.clone())));
        }
        let active = Active {
            sampler,
            logit_bias: req.logit_bias,
            detok: IncrementalDecoder::new(),
            stop: StopChecker::new(req.stop),
            out: Outbox::new(tx),
            prompt_logprobs: req.prompt_logprobs.map(|top_n| PromptLogprobs {
                top_n,
                entries: vec![None; prompt_len],
                lsm: Vec::new(),
            }),
            times: Times {
                arrival,
                scheduled: false,
                last_token: None,
            },
            spec: SpecState::default(),
        };
        self.active.insert(id, active);
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
            self.abort(id);
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
        let m = &self.shared.metrics;
        let mut prompt_tokens = 0;
        for s in &out.scheduled {
            let Some(r) = self.sched.request(s.id) else {
                continue;
            };
            prompt_tokens += s.tokens.len().min(r.prompt().len().saturating_sub(s.start));
            if let Some(a) = self.active.get_mut(&s.id).filter(|a| !a.times.scheduled) {
                a.times.scheduled = true;
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                m.request_queue_time_seconds
                    .observe(a.times.arrival.elapsed().as_secs_f64());
            }
        }
        m.prompt_tokens.add(prompt_tokens as u64);
    }

    /// Per scheduled sequence: does it need the logits of every row (prompt log-probabilities)?
    fn wants_prompt_logprobs(&self, out: &SchedulerOutput) -> Vec<bool> {
        out.scheduled
            .iter()
            .map(|s| {
                let asked = self
                    .active
                    .get(&s.id)
                    .is_some_and(|a| a.prompt_logprobs.is_some());
                asked
                    && self
                        .sched
                        .request(s.id)
                        .is_some_and(|r| s.start < r.prompt().len())
            })
            .collect()
    }

    /// Streams each sampled token, then ends the requests that finished: those the scheduler
    /// ended (stop token, length cap, prefill-only) and those whose text reached a stop string.
    /// Three passes, each its own phase: token bytes to text, stop strings, events.
    fn emit(&mut self, sampled: Vec<(RequestId, Sample)>, finished: Vec<Finished>) {
        let mut ended: HashMap<RequestId, Finished> =
            finished.into_iter().map(|f| (f.request.id(), f)).collect();
        // A stop or end-of-generation token ends the text: its log-probability is streamed, its
        // text is not (as vLLM and llama-server do). It is always the last of its request's run.
        let mut texts: Vec<String> = Vec::with_capacity(sampled.len());
        for (i, (id, s)) in sampled.iter().enumerate() {
            let last = sampled.get(i + 1).is_none_or(|next| next.0 != *id);
            let stop_token = last
                && ended
                    .get(id)
                    .is_some_and(|f| f.reason == FinishReason::Stop);
            texts.push(match self.active.get_mut(id) {
                Some(a) if !stop_token => a.detok.push(&self.tokenizer.token_bytes(s.token)),
                _ => String::new(),
            });
        }
        self.timer.lap(EnginePhase::Detokenize);
        // id -> index in `sampled` of the token whose text reached a stop string.
        let mut cut: HashMap<RequestId, usize> = HashMap::new();
        for (i, (id, _)) in sampled.iter().enumerate() {
            if cut.contains_key(id) {
                continue;
            }
            if let Some(a) = self.active.get_mut(id) {
                let (text, hit) = a.stop.push(&texts[i]);
                texts[i] = text;
                if hit {
                    cut.insert(*id, i);
                }
            }
        }
        self.timer.lap(EnginePhase::StopStrings);
        let now = Instant::now();
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let mut dropped: HashMap<RequestId, usize> = HashMap::new();
        for (i, ((id, s), text)) in sampled.into_iter().zip(texts).enumerate() {
            if cut.get(&id).is_some_and(|&at| i > at) {
                *dropped.entry(id).or_default() += 1;
                continue;
            }
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            m.generation_tokens.add(1);
            // Latencies per step, as vLLM counts them: tokens of one step arrive together.
            if a.times.last_token != Some(now) {
                let since = now - a.times.last_token.unwrap_or(a.times.arrival);
                match a.times.last_token {
                    None => m.time_to_first_token_seconds.observe(since.as_secs_f64()),
                    Some(_) => m.inter_token_latency_seconds.observe(since.as_secs_f64()),
                }
                a.times.last_token = Some(now);
            }
            let ev = StreamEvent::Token {
                token: s.token,
                text,
                logprob: s.logprob,
            };
            a.out.send(ev, now);
        }
        for id in cut.into_keys() {
            let f = ended.remove(&id).map(|f| f.request);
            if let Some(mut r) = f.or_else(|| self.sched.finish(id)) {
                // Tokens sampled after the stop string in this step are not the request's.
                let n = dropped.get(&id).copied().unwrap_or(0);
                r.truncate_output(r.output().len() - n);
                self.end(id, FinishReason::Stop, &r);
            }
        }
        for (id, f) in ended {
            self.end(id, f.reason, &f.request);
        }
        self.timer.lap(EnginePhase::Events);
    }

    /// Drafts for the next step (speculative decoding): each request that sampled and still
    /// runs asks prompt lookup for as many tokens as its recent acceptance pays for at this
    /// batch size, cut to what its logits processors allow.
    fn propose(&mut self, out: &SchedulerOutput) {
        let Some(cfg) = &self.spec else {
            return;
        };
        let drafted: usize = out.scheduled.iter().map(|s| s.num_draft).sum();
        // Only passes of decode rows tell what draft rows cost beside decode rows. CPU time, not
        // wall time: it does not grow when other processes take the cores.
        if out
            .scheduled
            .iter()
            .all(|s| s.tokens.len() == s.num_draft + 1)
        {
            let forward = self.timer.cpu(EnginePhase::Forward).as_secs_f64();
            self.cost.observe(out.num_batched_tokens, forward);
        }
        let decodes = self.sched.num_running();
        let breakeven = self.cost.breakeven(decodes, drafted.max(decodes));
        for s in out.scheduled.iter().filter(|s| s.sample) {
            // A constrained row's draft would need its matcher's state at every draft position
            // to mask the verifying rows; such rows decode one token a step.
            if self.constrained.has(s.id) {
                continue;
            }
            let (Some(a), Some(r)) = (self.active.get_mut(&s.id), self.sched.request(s.id)) else {
                continue;
            };
            let k = a.spec.draft_len(cfg.num_speculative_tokens, breakeven);
            if k == 0 {
                continue;
            }
            let d = ngram_draft(
                r.all_tokens(),
                cfg.prompt_lookup_min,
                cfg.prompt_lookup_max,
                k,
            );
            let d = d[..a.sampler.validate_draft(d)].to_vec();
            if !d.is_empty() {
                self.sched.set_draft(s.id, d);
            }
        }
    }

    /// Ends a request the scheduler no longer holds: sends its held-back text and `End`.
    fn end(&mut self, id: RequestId, reason: FinishReason, r: &Request) {
        self.constrained.remove(id);
        let Some(mut a) = self.active.remove(&id) else {
            return;
        };
        self.count_finished(&a, reason);
        let now = Instant::now();
        let tail = a.detok.finish();
        let tail = a.stop.push(&tail).0 + &a.stop.finish();
        if !tail.is_empty() {
            a.out.send(StreamEvent::Text(tail), now);
        }
        let usage = Usage {
            prompt_tokens: r.prompt().len(),
            completion_tokens: r.output().len(),
            cached_tokens: r.num_cached_tokens(),
        };
        a.out.send(StreamEvent::End { reason, usage }, now);
        if a.out.backlog_len() > 0 {
            self.lingering.push(a.out);
        }
    }

    /// Drops a request with no `End` (its client went away, or the engine is failing it) and
    /// frees its blocks.
    fn abort(&mut self, id: RequestId) {
        self.sched.finish(id);
        self.constrained.remove(id);
        let Some(a) = self.active.remove(&id) else {
            return;
        };
        self.count_finished(&a, FinishReason::Abort);
        // An error event (fail_all) may still wait for its consumer.
        if a.out.backlog_len() > 0 {
            self.lingering.push(a.out);
        }
    }

    fn count_finished(&self, a: &Active, reason: FinishReason) {
        if !a.times.scheduled {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.shared.unfinished.fetch_sub(1, Ordering::SeqCst);
        let m = &self.shared.metrics;
        m.e2e_request_latency_seconds
            .observe(a.times.arrival.elapsed().as_secs_f64());
        match reason {
            FinishReason::Stop => m.request_success_stop.add(1),
            FinishReason::Length => m.request_success_length.add(1),
            FinishReason::Abort => m.request_success_abort.add(1),
        }
    }

    /// Ends requests whose constrained decoding failed with an error, before they sample.
    fn fail(&mut self, failed: Failed) {
        for (id, msg) in failed {
            tracing::warn!(request = id, error = %msg, "constrained decoding failed");
            if let Some(a) = self.active.get_mut(&id) {
                a.out.send(StreamEvent::Error(msg), Instant::now());
            }
            self.abort(id);
        }
    }

    fn fail_all(&mut self, msg: &str) {
        let ids: Vec<RequestId> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(a) = self.active.get_mut(&id) {
                a.out
                    .send(StreamEvent::Error(msg.to_string()), Instant::now());
            }
            self.abort(id);
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
            .iter()
            .filter(|(_, a)| a.times.scheduled)
            .filter_map(|(id, _)| self.sched.request(*id))
            .map(|r| r.max_tokens().saturating_sub(r.output().len()))
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

/// vLLM's `cache_config_info` labels; the endpoint picker reads `block_size` and
/// `num_gpu_blocks` (the KV pool's blocks, on whatever device).
fn cache_config_info(cfg: &EngineConfig, num_blocks: usize) -> Vec<(&'static str, String)> {
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_string();
    let mut labels = vec![
        ("block_size", cfg.block_size.to_string()),
        ("cache_dtype", cfg.kv_cache_dtype.to_string()),
        ("enable_prefix_caching", py_bool(cfg.enable_prefix_caching)),
        ("num_gpu_blocks", num_blocks.to_string()),
    ];
    // Only with events are blocks named by one of vLLM's hashes.
    if let Some(s) = cfg.kv_events.as_ref().filter(|s| s.config.publishes()) {
        labels.push(("prefix_caching_hash_algo", s.hash_algo.to_string()));
    }
    labels
}
