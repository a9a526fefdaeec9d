//! The scheduler: one token budget per step over running then waiting requests.

use std::collections::{HashMap, VecDeque};

use tokenfab_kv_cache::{ComputedBlocks, KvCacheManager};
use tokenfab_types::{BlockId, FinishReason, RequestId, TokenId};

use crate::config::{SchedulerConfig, SchedulerError};
use crate::request::{Finished, NewRequest, Request};

/// One request's share of a step.
///
/// Whole token lists and block tables are passed each step (not vLLM's diffs) on purpose: the
/// runner lives in the same process, so a copy is cheap and keeps the runner stateless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The request.
    pub id: RequestId,
    /// Position of `tokens[0]` in the sequence = its `num_computed_tokens` before this step.
    pub start: usize,
    /// Token ids to compute this step, at positions `start..start + tokens.len()`; never empty.
    pub tokens: Vec<TokenId>,
    /// The request's whole block table: block `i` holds positions `i * block_size ..`.
    pub block_table: Vec<BlockId>,
    /// True when after this step every known token is computed and the request may grow: the
    /// runner must sample the next token from the logits of the last position. False for a
    /// non-final prefill chunk, and for a prefill-only request's last one.
    pub sample: bool,
    /// Prefix-cache hit tokens when the request was first scheduled, for usage reporting.
    pub num_cached_tokens: usize,
}

/// What one step computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Requests to run this step, in scheduling order (running ones first, then newly admitted).
    pub scheduled: Vec<ScheduledSeq>,
    /// Requests preempted during this step (blocks freed, back at the front of the waiting queue);
    /// the runner drops any per-request state it keeps for them.
    pub preempted: Vec<RequestId>,
    /// Sum of `tokens.len()` over `scheduled`; <= `max_num_batched_tokens`.
    pub num_batched_tokens: usize,
}

/// Continuous-batching scheduler that owns the KV-cache manager.
#[derive(Debug)]
pub struct Scheduler {
    /// The limits.
    cfg: SchedulerConfig,
    /// Block tables and the prefix cache.
    kv: KvCacheManager,
    /// Every live request (waiting or running), by id.
    requests: HashMap<RequestId, Request>,
    /// Requests not holding KV blocks, FIFO; preempted ones are pushed to the front.
    waiting: VecDeque<RequestId>,
    /// Requests holding KV blocks, in admission order (the last one is preempted first).
    running: Vec<RequestId>,
    /// Preemptions since creation.
    num_preemptions: u64,
}

impl Scheduler {
    /// A scheduler with an empty KV pool of `cfg.num_blocks` blocks.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, SchedulerError> {
        cfg.validate()?;
        let kv = KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching);
        Ok(Self {
            cfg,
            kv,
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        })
    }

    /// The limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a request (FIFO); shorthand for [`Self::add`] with no stop tokens.
    pub fn add_request(
        &mut self,
        id: RequestId,
        prompt: Vec<TokenId>,
        max_tokens: usize,
    ) -> Result<(), SchedulerError> {
        self.add(NewRequest::new(id, prompt, max_tokens))
    }

    /// Queues a request (FIFO). Refuses one that could never run
    /// ([`SchedulerConfig::check_request`]: empty, longer than `max_model_len`, or needing more
    /// blocks than the whole pool even alone) and a duplicate id.
    pub fn add(&mut self, r: NewRequest) -> Result<(), SchedulerError> {
        if self.requests.contains_key(&r.id) {
            return Err(SchedulerError::DuplicateId(r.id));
        }
        self.cfg.check_request(r.prompt.len(), r.max_tokens)?;
        let req = Request {
            id: r.id,
            num_prompt_tokens: r.prompt.len(),
            tokens: r.prompt,
            max_tokens: r.max_tokens,
            stop_token_ids: r.stop_token_ids,
            num_computed_tokens: 0,
            skip_prefix_cache: r.skip_prefix_cache,
            num_cached_tokens: None,
            num_preemptions: 0,
        };
        self.requests.insert(r.id, req);
        self.waiting.push_back(r.id);
        Ok(())
    }

    /// Plans one step; see the crate docs. Must be followed by [`Self::update`] with its output
    /// before the next call (the KV manager already counts the scheduled tokens as computed).
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.cfg.max_num_batched_tokens;
        // (id, start, number of tokens), in scheduling order.
        let mut plan: Vec<(RequestId, usize, usize)> = Vec::new();
        let mut preempted = Vec::new();

        // Running requests, oldest first.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let req = &self.requests[&id];
            let n = self.num_to_schedule(req).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            debug_assert_eq!(self.kv.num_computed_slots(id), req.num_computed_tokens);
            while self
                .kv
                .allocate_slots(id, &self.requests[&id].tokens, n, None)
                .is_none()
            {
                let victim = self.running.pop().expect("the request itself is running");
                self.preempt(victim);
                preempted.push(victim);
                if victim == id {
                    break 'running;
                }
            }
            let req = &self.requests[&id];
            plan.push((id, req.num_computed_tokens, n));
            budget -= n;
            i += 1;
        }

        // Waiting requests, FIFO, only when nothing had to be preempted (memory is tight).
        if preempted.is_empty() {
            while let Some(&id) = self.waiting.front() {
                if budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                    break;
                }
                let req = &self.requests[&id];
                let computed = if req.skip_prefix_cache {
                    ComputedBlocks::default()
                } else {
                    self.kv.get_computed_blocks(&req.tokens)
                };
                let n = (req.num_tokens() - computed.num_computed_tokens).min(budget);
                if self
                    .kv
                    .allocate_slots(id, &req.tokens, n, Some(&computed))
                    .is_none()
                {
                    break;
                }
                self.waiting.pop_front();
                self.running.push(id);
                let req = self.requests.get_mut(&id).expect("waiting ids are live");
                req.num_computed_tokens = computed.num_computed_tokens;
                req.num_cached_tokens
                    .get_or_insert(computed.num_computed_tokens);
                plan.push((id, computed.num_computed_tokens, n));
                budget -= n;
            }
        }

        let scheduled: Vec<ScheduledSeq> = plan
            .into_iter()
            .map(|(id, start, n)| {
                let req = &self.requests[&id];
                ScheduledSeq {
                    id,
                    start,
                    tokens: req.tokens[start..start + n].to_vec(),
                    block_table: self.kv.block_table(id).to_vec(),
                    sample: start + n == req.num_tokens() && !self.capped(req),
                    num_cached_tokens: req.num_cached_tokens(),
                }
            })
            .collect();
        let num_batched_tokens = scheduled.iter().map(|s| s.tokens.len()).sum();
        SchedulerOutput {
            scheduled,
            preempted,
            num_batched_tokens,
        }
    }

    /// Tokens `req` still has to compute. A live request always has some: one whose tokens are
    /// all computed has either sampled its next token or finished in [`Self::update`].
    fn num_to_schedule(&self, req: &Request) -> usize {
        req.num_tokens() - req.num_computed_tokens
    }

    /// Frees `id`'s blocks and puts it at the front of the waiting queue to be recomputed.
    fn preempt(&mut self, id: RequestId) {
        self.kv.free(id);
        let req = self.requests.get_mut(&id).expect("running ids are live");
        req.num_computed_tokens = 0;
        req.num_preemptions += 1;
        self.waiting.push_front(id);
        self.num_preemptions += 1;
    }

    /// Applies a step's results: each scheduled request advances by its scheduled tokens, and
    /// each `(id, token)` in `sampled` is appended to that request's output. Then the scheduler
    /// decides who is done, the one place that does: a sampled stop token ends a request with
    /// `Stop`; `max_tokens` outputs, or `max_model_len` tokens, with `Length` (a prefill-only
    /// request once its prompt is computed). Those are removed, their blocks freed, and returned
    /// in scheduling order. Requests finished (or aborted) since `schedule` are skipped. Stop
    /// strings are the caller's: it ends such a request with [`Self::finish`].
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(RequestId, TokenId)],
    ) -> Vec<Finished> {
        let sampled: HashMap<RequestId, TokenId> = sampled.iter().copied().collect();
        let mut finished = Vec::new();
        for s in &out.scheduled {
            let Some(req) = self.requests.get_mut(&s.id) else {
                continue;
            };
            debug_assert_eq!(req.num_computed_tokens, s.start, "update applied twice?");
            req.num_computed_tokens = s.start + s.tokens.len();
            if req.num_computed_tokens < req.num_tokens() {
                continue; // a prompt chunk: more to compute
            }
            let tok = sampled.get(&s.id).copied();
            debug_assert_eq!(
                tok.is_some(),
                s.sample,
                "a token is sampled exactly when asked"
            );
            if let Some(t) = tok {
                req.tokens.push(t);
            }
            let reason = if tok.is_some_and(|t| req.stop_token_ids.contains(&t)) {
                FinishReason::Stop
            } else if self.capped(&self.requests[&s.id]) {
                FinishReason::Length
            } else {
                continue;
            };
            if let Some(request) = self.finish(s.id) {
                finished.push(Finished { reason, request });
            }
        }
        finished
    }

    /// Removes a request (aborted, or stopped by the caller), waiting or running, frees its
    /// blocks and returns it; `None` when `id` is unknown.
    pub fn finish(&mut self, id: RequestId) -> Option<Request> {
        let req = self.requests.remove(&id)?;
        if let Some(pos) = self.running.iter().position(|&r| r == id) {
            self.running.remove(pos);
            self.kv.free(id);
        } else if let Some(pos) = self.waiting.iter().position(|&r| r == id) {
            self.waiting.remove(pos);
        }
        Some(req)
    }

    /// True when `req` may not grow: `max_tokens` outputs (always, for prefill-only) or
    /// `max_model_len` tokens.
    fn capped(&self, req: &Request) -> bool {
        req.output().len() >= req.max_tokens || req.num_tokens() >= self.cfg.max_model_len
    }

    /// A live request's tokens and progress.
    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    /// Requests holding KV blocks (vLLM `num_requests_running`).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests queued without blocks (vLLM `num_requests_waiting`).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True while any request is live.
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Fraction of KV blocks in use (vLLM `kv_cache_usage_perc`).
    pub fn kv_usage(&self) -> f32 {
        self.kv.usage()
    }

    /// `(queried tokens, hit tokens)` of the prefix cache since creation.
    pub fn prefix_cache_stats(&self) -> (u64, u64) {
        self.kv.prefix_cache_stats()
    }

    /// Preemptions since creation (vLLM `num_preemptions_total`).
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// The KV-cache manager, read-only.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Turns KV-cache events on (before the first request; see `KvCacheManager::enable_events`).
    pub fn enable_kv_events(&mut self, hasher: tokenfab_kv_cache::VllmHasher) {
        self.kv.enable_events(hasher);
    }

    /// Moves the KV-cache events recorded since the last call into `out`, oldest first.
    pub fn drain_kv_events(&mut self, out: &mut Vec<tokenfab_kv_cache::KvEvent>) {
        self.kv.drain_events(out);
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
