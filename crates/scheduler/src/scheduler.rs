//! The scheduler: one token budget per step over running then waiting requests.

use std::collections::{HashMap, VecDeque};

use tokenfab_kv_cache::{ComputedBlocks, KvCacheManager};
use tokenfab_types::{BlockId, FinishReason, RequestId, TokenId};

use crate::admission::{Budget, DraftRoom, Work};
use crate::config::{SchedulerConfig, SchedulerError};
use crate::fair::{Groups, Shares};
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
    /// The last `num_draft` are draft tokens (speculative decoding), not yet the request's own.
    pub tokens: Vec<TokenId>,
    /// Draft tokens at the end of `tokens`, to verify: the runner samples after each of them as
    /// well as after the last known token (`num_draft + 1` rows), and `update` keeps the drafts
    /// that match what was sampled. 0 when the request has no draft this step.
    pub num_draft: usize,
    /// The request's whole block table: block `i` holds positions `i * block_size ..`.
    pub block_table: Vec<BlockId>,
    /// True when after this step every known token is computed and the request may grow: the
    /// runner must sample the next token from the logits of the last position. False for a
    /// non-final prefill chunk, and for a prefill-only request's last one.
    pub sample: bool,
    /// Prefix-cache hit tokens when the request was first scheduled, for usage reporting.
    pub num_cached_tokens: usize,
    /// Async scheduling ([`Scheduler::schedule_ahead`]): the last of `tokens` is the token the
    /// step in flight samples for this request, unknown when this step was planned: it holds
    /// [`PLACEHOLDER`], and the runner takes the input from that step's result.
    pub placeholder: bool,
}

/// The value of a [`ScheduledSeq::placeholder`] token in `tokens` (outside every vocabulary).
pub const PLACEHOLDER: TokenId = TokenId::MAX;

/// What one step computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Requests to run this step, in scheduling order (running ones first, then newly admitted).
    pub scheduled: Vec<ScheduledSeq>,
    /// Requests preempted during this step (blocks freed, back at the front of the waiting queue);
    /// the runner drops any per-request state it keeps for them.
    pub preempted: Vec<RequestId>,
    /// Sum of `tokens.len()` over `scheduled` (drafts included); <= `max_num_batched_tokens`.
    pub num_batched_tokens: usize,
    /// Planned ahead, a request could not get its blocks without preempting another (which is
    /// never done while a step is in flight): it waits, and the next step is planned by
    /// [`Scheduler::schedule`], which preempts.
    pub stalled: bool,
}

/// One request's planned share of a step, before its token list is built.
#[derive(Clone, Debug)]
struct Planned {
    id: RequestId,
    /// `num_computed_tokens` when planned.
    start: usize,
    /// Known tokens to compute.
    n: usize,
    /// Draft tokens to verify after them.
    draft: Vec<TokenId>,
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
    /// Which requests share one fair share of each step's prompt budget (see `fair.rs`).
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
            draft: Vec::new(),
            num_placeholders: 0,
        };
        self.requests.insert(r.id, req);
        self.waiting.push_back(r.id);
        Ok(())
    }

    /// Puts a live request in `group`: the requests of one group share one fair share of each
    /// step's prompt budget (see `fair.rs`); a request in no group has a share of its own.
    /// False when `id` is unknown.
    pub fn set_group(&mut self, id: RequestId, group: u64) -> bool {
        if !self.requests.contains_key(&id) {
            return false;
        }
        self.groups.set(id, group);
        true
    }

    /// `(request, prompt tokens it wants this step)` for the running requests with a prompt left
    /// to compute and the waiting ones that have a seat, in scheduling order: the demands the
    /// prompt tier's budget is shared over.
    fn prompt_wants(&self) -> Vec<(RequestId, usize)> {
        let seats = self.cfg.max_num_seqs.saturating_sub(self.running.len());
        let running = self.running.iter().filter(|&id| {
            let r = &self.requests[id];
            Work::of(r.num_tokens_ahead(), r.num_computed_tokens) == Work::Prefill
        });
        running
            .chain(self.waiting.iter().take(seats))
            .map(|&id| (id, self.num_to_schedule(&self.requests[&id])))
            .collect()
    }

    /// Plans one step; see the crate docs and [`crate::admission`] for who gets the budget.
    /// Must be followed by [`Self::update`] with its output before the next call (the KV manager
    /// already counts the scheduled tokens as computed), or by [`Self::schedule_ahead`].
    pub fn schedule(&mut self) -> SchedulerOutput {
        debug_assert!(
            self.requests.values().all(|r| r.num_placeholders == 0),
            "a step is in flight: plan with schedule_ahead"
        );
        self.plan(false)
    }

    /// Async scheduling (vLLM's): plans the next step while `in_flight`, the last planned one,
    /// runs and before its [`Self::update`]. Its requests count as having computed what it
    /// computes, and each one it samples for holds a placeholder for that token
    /// ([`ScheduledSeq::placeholder`]), so budgets and blocks are those of the step after it.
    /// Differences from [`Self::schedule`]: a request whose placeholder reaches its length cap is
    /// left out (it ends at that update); nobody is preempted (`stalled` instead); no drafts (the
    /// caller plans steps with drafts synchronously). `update(in_flight)` comes before this
    /// output's `update`; a request that finishes there has its row in this step discarded.
    pub fn schedule_ahead(&mut self, in_flight: &SchedulerOutput) -> SchedulerOutput {
        for s in &in_flight.scheduled {
            // Finished or aborted since: nothing to plan.
            let Some(req) = self.requests.get_mut(&s.id) else {
                continue;
            };
            debug_assert_eq!(s.num_draft, 0, "drafts are verified by a synchronous step");
            debug_assert_eq!(req.num_computed_tokens, s.start, "planned ahead twice?");
            req.num_computed_tokens = s.start + s.tokens.len();
            req.num_placeholders = usize::from(s.sample);
        }
        self.plan(true)
    }

    /// [`Self::schedule`], or with `ahead` [`Self::schedule_ahead`]'s planning.
    fn plan(&mut self, ahead: bool) -> SchedulerOutput {
        let mut stalled = false;
        let mut budget = Budget::new(self.cfg.max_num_batched_tokens);
        let mut plan: Vec<Planned> = Vec::new();
        let mut preempted = Vec::new();

        // Fair shares of the prompt tier, set once the decodes have taken theirs.
        let mut shares = Shares::default();

        // Running requests, oldest first: decodes, then unfinished prompts (each within its
        // group's share).
        'tiers: for tier in [Work::Decode, Work::Prefill] {
            if tier == Work::Prefill {
                shares = self.groups.shares(budget.left(), &self.prompt_wants());
            }
            let mut i = 0;
            while i < self.running.len() && budget.left() > 0 {
                let id = self.running[i];
                let req = &self.requests[&id];
                i += 1;
                if Work::of(req.num_tokens_ahead(), req.num_computed_tokens) != tier {
                    continue;
                }
                // Its token in flight is its last: it ends at that step's update.
                if req.num_placeholders > 0 && self.capped(req) {
                    continue;
                }
                debug_assert_eq!(self.kv.num_computed_slots(id), req.num_computed_tokens);
                let key = self.groups.key(id);
                let want = match tier {
                    Work::Decode => self.num_to_schedule(req),
                    Work::Prefill => self.num_to_schedule(req).min(shares.left(key)),
                };
                let n = budget.take(want);
                if n == 0 {
                    continue;
                }
                if ahead {
                    let tokens = &self.requests[&id].tokens;
                    if self.kv.allocate_slots(id, tokens, n, None).is_none() {
                        budget.give_back(n);
                        stalled = true;
                        break 'tiers;
                    }
                } else if !self.allocate_or_preempt(id, n, &mut plan, &mut budget, &mut preempted) {
                    break 'tiers;
                }
                shares.take(key, n);
                let start = self.requests[&id].num_computed_tokens;
                plan.push(Planned {
                    id,
                    start,
                    n,
                    draft: Vec::new(),
                });
                // Preemption removed requests from the end of `running`, never before `i`.
                i = i.min(self.running.len());
            }
        }

        // Waiting requests in FIFO order within their group's share (a group with none left is
        // passed over, not waited for), only when nothing had to be preempted (memory is tight).
        if preempted.is_empty() && !stalled {
            let mut w = 0;
            while w < self.waiting.len() {
                if budget.left() == 0 || self.running.len() >= self.cfg.max_num_seqs {
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
                    .min(budget.left())
                    .min(shares.left(key));
                if self
                    .kv
                    .allocate_slots(id, &req.tokens, n, Some(&computed))
                    .is_none()
                {
                    break;
                }
                budget.take(n);
                shares.take(key, n);
                self.waiting.remove(w);
                self.running.push(id);
                let req = self.requests.get_mut(&id).expect("waiting ids are live");
                req.num_computed_tokens = computed.num_computed_tokens;
                req.num_cached_tokens
                    .get_or_insert(computed.num_computed_tokens);
                plan.push(Planned {
                    id,
                    start: computed.num_computed_tokens,
                    n,
                    draft: Vec::new(),
                });
            }
        }

        self.spend_leftover(&mut plan, &mut budget);

        if self.waiting.is_empty() && !ahead {
            self.plan_drafts(&mut plan, &mut budget);
        }
        let scheduled: Vec<ScheduledSeq> =
            plan.into_iter().map(|p| self.scheduled_seq(p)).collect();
        let num_batched_tokens = scheduled.iter().map(|s| s.tokens.len()).sum();
        SchedulerOutput {
            scheduled,
            preempted,
            num_batched_tokens,
            stalled,
        }
    }

    /// Grows running request `id` by `n` slots, preempting the newest running requests until they
    /// fit (dropping any of them already planned, and giving back their budget). False when `id`
    /// itself had to go: memory is exhausted for this step.
    fn allocate_or_preempt(
        &mut self,
        id: RequestId,
        n: usize,
        plan: &mut Vec<Planned>,
        budget: &mut Budget,
        preempted: &mut Vec<RequestId>,
    ) -> bool {
        while self
            .kv
            .allocate_slots(id, &self.requests[&id].tokens, n, None)
            .is_none()
        {
            let victim = self.running.pop().expect("the request itself is running");
            self.preempt(victim);
            preempted.push(victim);
            if let Some(at) = plan.iter().position(|p| p.id == victim) {
                budget.give_back(plan.remove(at).n);
            }
            if victim == id {
                budget.give_back(n);
                return false;
            }
        }
        true
    }

    /// True when a running request is still computing full blocks that waiting request `id`
    /// shares with it: admitted now, `id` would compute them a second time; a few steps later
    /// the prefix cache hands them over. (Whole prompts in arrival order got this for free; fair
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

    /// Work-conserving: prompt budget that fair shares left unused (a group's cache hits, a
    /// share nobody could take) goes to planned requests with prompt tokens left, in plan order,
    /// as long as their blocks can be had without preempting anyone.
    fn spend_leftover(&mut self, plan: &mut [Planned], budget: &mut Budget) {
        for p in plan.iter_mut() {
            if budget.left() == 0 {
                return;
            }
            let req = &self.requests[&p.id];
            let more = (req.num_tokens_ahead() - (p.start + p.n)).min(budget.left());
            if more > 0
                && self
                    .kv
                    .allocate_slots(p.id, &req.tokens, more, None)
                    .is_some()
            {
                p.n += budget.take(more);
            }
        }
    }

    /// Adds each decoding request's draft (as far as the leftover budget, its limits and free
    /// blocks allow) to its planned step. Drafts are consumed whether they fit or not.
    fn plan_drafts(&mut self, plan: &mut [Planned], budget: &mut Budget) {
        let max_model_len = self.cfg.max_model_len;
        for p in plan.iter_mut() {
            let req = self.requests.get_mut(&p.id).expect("planned ids are live");
            if req.draft.is_empty()
                || p.start + p.n != req.num_tokens()
                || is_capped(req, max_model_len)
            {
                continue;
            }
            let mut draft = std::mem::take(&mut req.draft);
            let room = DraftRoom {
                num_tokens: req.num_tokens(),
                output_len: req.output().len(),
                max_tokens: req.max_tokens,
                max_model_len,
            };
            draft.truncate(room.cap(draft.len(), budget.left()));
            // Best effort: drafts never preempt anyone.
            if !draft.is_empty()
                && self
                    .kv
                    .allocate_slots(p.id, &req.tokens, draft.len(), None)
                    .is_some()
            {
                budget.take(draft.len());
                p.draft = draft;
            }
        }
    }

    fn scheduled_seq(&self, p: Planned) -> ScheduledSeq {
        let req = &self.requests[&p.id];
        let end = p.start + p.n;
        let known = end.min(req.num_tokens());
        let mut tokens = Vec::with_capacity(p.n + p.draft.len());
        tokens.extend_from_slice(&req.tokens[p.start..known]);
        // The placeholder is the last token a request may have: only its decode row reads it.
        tokens.resize(p.n, PLACEHOLDER);
        tokens.extend_from_slice(&p.draft);
        ScheduledSeq {
            id: p.id,
            start: p.start,
            tokens,
            num_draft: p.draft.len(),
            block_table: self.kv.block_table(p.id).to_vec(),
            sample: end == req.num_tokens_ahead() && !self.capped(req),
            num_cached_tokens: req.num_cached_tokens(),
            placeholder: known < end,
        }
    }

    /// Sets the draft tokens `id` proposes to follow its tokens (speculative decoding): they are
    /// verified at its next decode step, as far as the budget and its limits allow, and replace
    /// any earlier draft. Ignored for an unknown id.
    pub fn set_draft(&mut self, id: RequestId, draft: Vec<TokenId>) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.draft = draft;
        }
    }

    /// Tokens `req` still has to compute. A live request always has some: one whose tokens are
    /// all computed has either sampled its next token or finished in [`Self::update`].
    fn num_to_schedule(&self, req: &Request) -> usize {
        req.num_tokens_ahead() - req.num_computed_tokens
    }

    /// Frees `id`'s blocks and puts it at the front of the waiting queue to be recomputed.
    fn preempt(&mut self, id: RequestId) {
        self.kv.free(id);
        let req = self.requests.get_mut(&id).expect("running ids are live");
        req.num_computed_tokens = 0;
        req.num_preemptions += 1;
        req.draft.clear();
        self.waiting.push_front(id);
        self.num_preemptions += 1;
    }

    /// Applies a step's results: each scheduled request advances by its scheduled tokens, and
    /// the tokens `sampled` for it (`(id, token)` pairs, a request's together and in order) are
    /// appended to its output. A request that verified a draft gets the drafts it accepted
    /// followed by the token sampled after them: its progress counts only the accepted drafts,
    /// and the slots of the rejected ones are rolled back. Then the scheduler decides who is
    /// done, the one place that does: a sampled stop token ends a request with `Stop`;
    /// `max_tokens` outputs, or `max_model_len` tokens, with `Length` (a prefill-only request once
    /// its prompt is computed). Those are removed, their blocks freed, and returned in scheduling
    /// order. Requests finished (or aborted) since `schedule` are skipped. Stop strings are the
    /// caller's: it ends such a request with [`Self::finish`].
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(RequestId, TokenId)],
    ) -> Vec<Finished> {
        // id -> its run of `sampled`.
        let mut runs: HashMap<RequestId, (usize, usize)> = HashMap::new();
        for (i, &(id, _)) in sampled.iter().enumerate() {
            let r = runs.entry(id).or_insert((i, i));
            debug_assert_eq!(r.1, i, "request {id}'s tokens are not together");
            r.1 = i + 1;
        }
        let mut finished = Vec::new();
        for s in &out.scheduled {
            let Some(req) = self.requests.get_mut(&s.id) else {
                continue;
            };
            // `schedule_ahead` already counted this step's tokens as computed.
            debug_assert!(
                req.num_computed_tokens == s.start
                    || req.num_computed_tokens == s.start + s.tokens.len(),
                "update applied twice?"
            );
            if s.sample {
                // Its token is known now.
                req.num_placeholders = 0;
            }
            let toks = runs
                .get(&s.id)
                .map_or(&sampled[..0], |&(a, b)| &sampled[a..b]);
            debug_assert_eq!(
                !toks.is_empty(),
                s.sample,
                "tokens are sampled exactly when asked"
            );
            let base = s.tokens.len() - s.num_draft;
            let accepted = toks.len().saturating_sub(1).min(s.num_draft);
            debug_assert!(
                toks[..accepted]
                    .iter()
                    .zip(&s.tokens[base..])
                    .all(|(t, d)| t.1 == *d),
                "accepted tokens are the draft's"
            );
            req.num_computed_tokens = s.start + base + accepted;
            if s.num_draft > 0 {
                self.kv.truncate_slots(s.id, req.num_computed_tokens);
            }
            if toks.is_empty() && req.num_computed_tokens < req.num_tokens() {
                continue; // a prompt chunk: more to compute
            }
            let mut reason = None;
            for &(_, t) in toks {
                req.tokens.push(t);
                if req.stop_token_ids.contains(&t) {
                    reason = Some(FinishReason::Stop);
                    break;
                }
                if is_capped(req, self.cfg.max_model_len) {
                    reason = Some(FinishReason::Length);
                    break;
                }
            }
            let req = &self.requests[&s.id];
            let reason = match reason {
                Some(r) => r,
                None if toks.is_empty() && self.capped(req) => FinishReason::Length,
                None => continue,
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
        self.groups.remove(id);
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
        is_capped(req, self.cfg.max_model_len)
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

/// True when `req` may not grow: `max_tokens` outputs or `max_model_len` tokens.
fn is_capped(req: &Request, max_model_len: usize) -> bool {
    let ahead = req.num_placeholders;
    req.output().len() + ahead >= req.max_tokens || req.num_tokens() + ahead >= max_model_len
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
