//! The scheduler: one token budget per step over running then waiting requests.

use std::collections::{HashMap, VecDeque};

use tokenfab_kv_cache::{ComputedBlocks, KvCacheManager};
use tokenfab_types::{BlockId, RequestId, TokenId};

use crate::config::{SchedulerConfig, SchedulerError};
use crate::fair::Groups;
use crate::request::Request;

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
    /// True when after this step every known token is computed: the runner must sample the next
    /// token from the logits of the last position. False for a non-final prefill chunk.
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
    /// Which requests share one fair share of each step's budget (see `fair.rs`).
    groups: Groups,
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
            groups: Groups::default(),
        })
    }

    /// The limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a request (FIFO). Refuses one that could never run: empty, `max_tokens == 0`,
    /// longer than `max_model_len`, or needing more blocks than the whole pool even alone.
    pub fn add_request(
        &mut self,
        id: RequestId,
        prompt: Vec<TokenId>,
        max_tokens: usize,
    ) -> Result<(), SchedulerError> {
        self.add_request_with(id, prompt, max_tokens, false)
    }

    /// [`Scheduler::add_request`], optionally computing every prompt token even when the prefix
    /// cache holds some (a request that wants prompt log-probabilities needs their logits).
    pub fn add_request_with(
        &mut self,
        id: RequestId,
        prompt: Vec<TokenId>,
        max_tokens: usize,
        skip_prefix_cache: bool,
    ) -> Result<(), SchedulerError> {
        if self.requests.contains_key(&id) {
            return Err(SchedulerError::DuplicateId(id));
        }
        if prompt.is_empty() {
            return Err(SchedulerError::EmptyPrompt);
        }
        if max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens);
        }
        let max_model_len = self.cfg.max_model_len;
        if prompt.len().saturating_add(max_tokens) > max_model_len {
            return Err(SchedulerError::TooLong {
                prompt_tokens: prompt.len(),
                max_tokens,
                max_model_len,
            });
        }
        // The last sampled token is never fed back, so its KV slot is never needed.
        let needed_blocks = (prompt.len() + max_tokens - 1).div_ceil(self.cfg.block_size);
        if needed_blocks > self.cfg.num_blocks {
            return Err(SchedulerError::DoesNotFit {
                needed_blocks,
                num_blocks: self.cfg.num_blocks,
            });
        }
        let num_prompt_tokens = prompt.len();
        let req = Request {
            id,
            tokens: prompt,
            num_prompt_tokens,
            max_tokens,
            num_computed_tokens: 0,
            skip_prefix_cache,
            num_cached_tokens: None,
            num_preemptions: 0,
        };
        self.requests.insert(id, req);
        self.waiting.push_back(id);
        Ok(())
    }

    /// Puts a live request in `group`: the requests of one group share one fair share of each
    /// step's token budget (see `fair.rs`); a request in no group has a share of its own.
    /// False when `id` is unknown.
    pub fn set_group(&mut self, id: RequestId, group: u64) -> bool {
        if !self.requests.contains_key(&id) {
            return false;
        }
        self.groups.set(id, group);
        true
    }

    /// `(request, tokens it wants this step)` for the running requests and the waiting ones that
    /// have a seat, in scheduling order: the demands the budget is shared over.
    fn wants(&self) -> Vec<(RequestId, usize)> {
        let seats = self.cfg.max_num_seqs.saturating_sub(self.running.len());
        let running = self.running.iter().map(|&id| (id, &self.requests[&id]));
        let waiting = self
            .waiting
            .iter()
            .take(seats)
            .map(|&id| (id, &self.requests[&id]));
        running
            .chain(waiting)
            .map(|(id, r)| (id, self.num_to_schedule(r)))
            .collect()
    }

    /// Plans one step; see the crate docs. Must be followed by [`Self::update`] with its output
    /// before the next call (the KV manager already counts the scheduled tokens as computed).
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut shares = self.groups.shares(budget, &self.wants());
        // (id, start, number of tokens), in scheduling order.
        let mut plan: Vec<(RequestId, usize, usize)> = Vec::new();
        let mut preempted = Vec::new();

        // Running requests, oldest first, each within its group's share.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let key = self.groups.key(id);
            let req = &self.requests[&id];
            let n = self.num_to_schedule(req).min(budget).min(shares.left(key));
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
            shares.take(key, n);
            i += 1;
        }

        // Waiting requests in FIFO order within their group's share (a group with none left is
        // passed over, not waited for), only when nothing had to be preempted (memory is tight).
        if preempted.is_empty() {
            let mut w = 0;
            while w < self.waiting.len() {
                if budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                    break;
                }
                let id = self.waiting[w];
                let key = self.groups.key(id);
                if shares.left(key) == 0 || self.prefix_in_progress(id) {
                    w += 1;
                    continue;
                }
                let req = &self.requests[&id];
                let computed = if req.skip_prefix_cache {
                    ComputedBlocks::default()
                } else {
                    self.kv.get_computed_blocks(&req.tokens)
                };
                let n = (req.num_tokens() - computed.num_computed_tokens)
                    .min(budget)
                    .min(shares.left(key));
                if self
                    .kv
                    .allocate_slots(id, &req.tokens, n, Some(&computed))
                    .is_none()
                {
                    break;
                }
                self.waiting.remove(w);
                self.running.push(id);
                let req = self.requests.get_mut(&id).expect("waiting ids are live");
                req.num_computed_tokens = computed.num_computed_tokens;
                req.num_cached_tokens
                    .get_or_insert(computed.num_computed_tokens);
                plan.push((id, computed.num_computed_tokens, n));
                budget -= n;
                shares.take(key, n);
            }
        }
        self.spend_leftover(&mut plan, &mut budget);

        let scheduled: Vec<ScheduledSeq> = plan
            .into_iter()
            .map(|(id, start, n)| {
                let req = &self.requests[&id];
                ScheduledSeq {
                    id,
                    start,
                    tokens: req.tokens[start..start + n].to_vec(),
                    block_table: self.kv.block_table(id).to_vec(),
                    sample: start + n == req.num_tokens(),
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

    /// True when a running request is still computing full blocks that waiting request `id`
    /// shares with it: admitted now, `id` would compute them a second time; a few steps later
    /// the prefix cache hands them over. (First come, first served got this for free; fair
    /// shares would otherwise prefill a burst of requests with one system prompt side by side.)
    fn prefix_in_progress(&self, id: RequestId) -> bool {
        let req = &self.requests[&id];
        if !self.cfg.enable_prefix_caching || req.skip_prefix_cache {
            return false;
        }
        let bs = self.cfg.block_size;
        self.running.iter().any(|r| {
            let r = &self.requests[r];
            let computing = r.num_prompt_tokens;
            if r.num_computed_tokens >= computing || req.tokens.get(..bs) != r.tokens.get(..bs) {
                return false;
            }
            let common = req.tokens[..computing.min(req.tokens.len())]
                .iter()
                .zip(&r.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            r.num_computed_tokens < common / bs * bs
        })
    }

    /// Work-conserving: budget that fair shares left unused (a group's cache hits, a share
    /// nobody could take) goes to planned requests that want more, in plan order, as long as
    /// their blocks can be had without preempting anyone.
    fn spend_leftover(&mut self, plan: &mut [(RequestId, usize, usize)], budget: &mut usize) {
        for (id, start, n) in plan.iter_mut() {
            if *budget == 0 {
                return;
            }
            let req = &self.requests[id];
            let more = (req.num_tokens() - (*start + *n)).min(*budget);
            if more > 0
                && !self.capped(req)
                && self
                    .kv
                    .allocate_slots(*id, &req.tokens, more, None)
                    .is_some()
            {
                *n += more;
                *budget -= more;
            }
        }
    }

    /// Tokens `req` still has to compute; 0 for a length-capped request (it only awaits
    /// `finish`, and computing its last token would sample past its limit).
    fn num_to_schedule(&self, req: &Request) -> usize {
        if self.capped(req) {
            return 0;
        }
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
    /// each `(id, token)` in `sampled` is appended to that request's output. Requests finished
    /// (or aborted) since `schedule` are skipped. Nothing is removed: the caller checks stop
    /// conditions ([`Self::is_length_capped`], EOS, stop strings) and calls [`Self::finish`].
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[(RequestId, TokenId)]) {
        for s in &out.scheduled {
            if let Some(req) = self.requests.get_mut(&s.id) {
                debug_assert_eq!(req.num_computed_tokens, s.start, "update applied twice?");
                req.num_computed_tokens = s.start + s.tokens.len();
            }
        }
        for &(id, tok) in sampled {
            if let Some(req) = self.requests.get_mut(&id) {
                debug_assert_eq!(req.num_computed_tokens, req.num_tokens(), "sampled a chunk");
                req.tokens.push(tok);
            }
        }
    }

    /// Removes a request (finished or aborted), waiting or running, and frees its blocks.
    /// False when `id` is unknown.
    pub fn finish(&mut self, id: RequestId) -> bool {
        if self.requests.remove(&id).is_none() {
            return false;
        }
        self.groups.remove(id);
        if let Some(pos) = self.running.iter().position(|&r| r == id) {
            self.running.remove(pos);
            self.kv.free(id);
        } else if let Some(pos) = self.waiting.iter().position(|&r| r == id) {
            self.waiting.remove(pos);
        }
        true
    }

    fn capped(&self, req: &Request) -> bool {
        req.output().len() >= req.max_tokens || req.num_tokens() >= self.cfg.max_model_len
    }

    /// True when `id` has `max_tokens` outputs or reached `max_model_len` tokens: the caller
    /// should finish it with reason "length". False for an unknown id.
    pub fn is_length_capped(&self, id: RequestId) -> bool {
        self.requests.get(&id).is_some_and(|r| self.capped(r))
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
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
