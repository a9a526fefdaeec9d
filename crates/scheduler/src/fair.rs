//! Fair shares of one step's token budget between groups of requests.
//!
//! First come, first served lets one large call (16 choices of a 1,600-token prompt) take every
//! step's budget while a 5-token request behind it waits for all of its prefill. Instead, each
//! step the budget is split max-min fairly ("water-filling") between the groups that want
//! tokens: every group gets what it asks for up to a common level, the level as high as the budget
//! allows. A group is the requests of one client call (its choices and prompts, which the engine
//! marks with one group id), or a request alone. Within a group, requests keep their order, so
//! the choices of one prompt still prefill one after another and share the prefix cache.
//! Scheduling stays work-conserving: the scheduler hands what a group leaves unused to whoever
//! still wants tokens.

use std::collections::HashMap;

use tokenfab_types::RequestId;

/// Max-min fair split of `budget` over `demands`: each gets `min(demand, level)` for the highest
/// level the budget allows, and what is left below the next level goes one token each to the
/// first unsatisfied demands. The result sums to `min(budget, sum(demands))`.
pub fn water_fill(budget: usize, demands: &[usize]) -> Vec<usize> {
    let total: usize = demands.iter().sum();
    if total <= budget {
        return demands.to_vec();
    }
    let mut sorted: Vec<usize> = demands.to_vec();
    sorted.sort_unstable();
    // Raise the level through the sorted demands while the budget covers everyone up to it.
    let (mut left, mut level) = (budget, 0);
    for (i, &d) in sorted.iter().enumerate() {
        let above = sorted.len() - i;
        let step = d - level;
        if step * above > left {
            level += left / above;
            break;
        }
        left -= step * above;
        level = d;
    }
    let mut shares: Vec<usize> = demands.iter().map(|&d| d.min(level)).collect();
    let mut rest = budget - shares.iter().sum::<usize>();
    for (s, &d) in shares.iter_mut().zip(demands) {
        if rest == 0 {
            break;
        }
        if *s < d {
            *s += 1;
            rest -= 1;
        }
    }
    shares
}

/// Who shares a fair share: a client call's group, or a request on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GroupKey {
    Group(u64),
    Alone(RequestId),
}

/// Group ids given to requests (`Scheduler::set_group`); requests without one stand alone.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    of: HashMap<RequestId, u64>,
}

impl Groups {
    pub fn set(&mut self, id: RequestId, group: u64) {
        self.of.insert(id, group);
    }

    pub fn remove(&mut self, id: RequestId) {
        self.of.remove(&id);
    }

    pub fn key(&self, id: RequestId) -> GroupKey {
        self.of
            .get(&id)
            .map_or(GroupKey::Alone(id), |&g| GroupKey::Group(g))
    }

    /// Each group's share of `budget`, from `(request, tokens it wants)` in priority order (the
    /// first groups get the rounding remainder).
    pub fn shares(&self, budget: usize, wants: &[(RequestId, usize)]) -> Shares {
        let mut order: Vec<GroupKey> = Vec::new();
        let mut demand: HashMap<GroupKey, usize> = HashMap::new();
        for &(id, n) in wants {
            let k = self.key(id);
            let d = demand.entry(k).or_insert_with(|| {
                order.push(k);
                0
            });
            *d += n;
        }
        let demands: Vec<usize> = order.iter().map(|k| demand[k]).collect();
        let left = order
            .into_iter()
            .zip(water_fill(budget, &demands))
            .collect();
        Shares { left }
    }
}

/// What each group may still take this step (nothing for a group it does not list).
#[derive(Debug, Default)]
pub(crate) struct Shares {
    left: HashMap<GroupKey, usize>,
}

impl Shares {
    pub fn left(&self, k: GroupKey) -> usize {
        self.left.get(&k).copied().unwrap_or(0)
    }

    pub fn take(&mut self, k: GroupKey, n: usize) {
        if let Some(l) = self.left.get_mut(&k) {
            *l = l.saturating_sub(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_is_max_min_fair_and_spends_the_budget() {
        assert_eq!(water_fill(10, &[3, 4]), [3, 4], "everyone fits");
        assert_eq!(water_fill(512, &[25_696, 5]), [507, 5]);
        assert_eq!(water_fill(10, &[100, 100, 100]), [4, 3, 3]);
        assert_eq!(water_fill(10, &[1, 100, 2, 100]), [1, 4, 2, 3]);
        assert_eq!(water_fill(0, &[5, 5]), [0, 0]);
        assert_eq!(water_fill(7, &[]), Vec::<usize>::new());
        for (budget, d) in [(64, vec![1, 1, 1, 200, 30]), (5, vec![9, 9, 9, 9, 9, 9, 9])] {
            let s = water_fill(budget, &d);
            assert_eq!(s.iter().sum::<usize>(), budget.min(d.iter().sum()));
            assert!(s.iter().zip(&d).all(|(s, d)| s <= d));
            // Max-min: nobody below another one's share while wanting more (rounding aside).
            let max = *s.iter().max().unwrap();
            assert!(s.iter().zip(&d).all(|(&s, &d)| s == d || s + 1 >= max));
        }
    }

    #[test]
    fn requests_of_one_group_share_one_share() {
        let mut g = Groups::default();
        for id in 1..=4 {
            g.set(id, 77);
        }
        // Four members of one call wanting 1,000 each, and a lone request wanting 5.
        let wants: Vec<(RequestId, usize)> = (1..=4).map(|i| (i, 1000)).chain([(9, 5)]).collect();
        let mut s = g.shares(64, &wants);
        assert_eq!(s.left(GroupKey::Group(77)), 59);
        assert_eq!(s.left(g.key(9)), 5);
        assert_eq!(g.key(9), GroupKey::Alone(9));
        s.take(GroupKey::Group(77), 50);
        assert_eq!(s.left(GroupKey::Group(77)), 9);
        g.remove(1);
        assert_eq!(g.key(1), GroupKey::Alone(1));
    }

    /// The scheduler with fair shares, no model: one step = schedule, then every sampled
    /// position gets token 1.
    mod with_scheduler {
        use crate::{NewRequest, Scheduler, SchedulerConfig, SchedulerOutput};
        use tokenfab_types::{RequestId, TokenId};

        fn sched(budget: usize, caching: bool) -> Scheduler {
            Scheduler::new(SchedulerConfig {
                max_num_batched_tokens: budget,
                max_num_seqs: 64,
                block_size: 16,
                num_blocks: 2048,
                enable_prefix_caching: caching,
                max_model_len: 8192,
            })
            .unwrap()
        }

        fn prompt(seed: u32, n: usize) -> Vec<TokenId> {
            (0..n as u32).map(|i| seed * 10_000 + i).collect()
        }

        fn step(s: &mut Scheduler) -> SchedulerOutput {
            let out = s.schedule();
            let sampled: Vec<(RequestId, TokenId)> = out
                .scheduled
                .iter()
                .filter(|q| q.sample)
                .map(|q| (q.id, 1))
                .collect();
            s.update(&out, &sampled);
            out
        }

        /// A request that computes every prompt token (as one asking for prompt logprobs).
        fn uncached(id: RequestId, prompt: Vec<TokenId>, max_tokens: usize) -> NewRequest {
            NewRequest {
                skip_prefix_cache: true,
                ..NewRequest::new(id, prompt, max_tokens)
            }
        }

        fn tokens_of(out: &SchedulerOutput, id: RequestId) -> usize {
            out.scheduled
                .iter()
                .filter(|q| q.id == id)
                .map(|q| q.tokens.len())
                .sum()
        }

        /// The red-team case: 16 choices of a 1,606-token prompt (echo + logprobs: no prefix
        /// cache), then a 5-token request. First come, first served made the small one wait
        /// for all 25,696 prefill tokens (50 steps of 512); with fair shares it is prefilled in
        /// the step after it arrives and decodes every step after that.
        #[test]
        fn a_small_request_is_not_starved_by_a_large_call() {
            let mut s = sched(512, true);
            for i in 0..16 {
                s.add(uncached(i, prompt(1, 1606), 16)).unwrap();
                assert!(s.set_group(i, 7));
            }
            step(&mut s);
            s.add_request(100, prompt(2, 5), 8).unwrap();
            let out = step(&mut s);
            assert_eq!(tokens_of(&out, 100), 5, "prefilled at once");
            assert_eq!(
                out.num_batched_tokens, 512,
                "the budget is still spent in full"
            );
            for _ in 0..7 {
                let out = step(&mut s);
                assert_eq!(tokens_of(&out, 100), 1, "decodes every step");
            }
            assert!(s.request(100).is_none(), "8 tokens out: finished");
            // Meanwhile the large call kept the rest of every step.
            let big: usize = (0..16)
                .map(|i| s.request(i).unwrap().num_computed_tokens())
                .sum();
            assert_eq!(big, 9 * 512 - 5 - 7);
        }

        #[test]
        fn a_group_shares_one_share_and_keeps_its_order() {
            let mut s = sched(64, false);
            for i in 0..4 {
                s.add_request(i, prompt(i as u32 + 1, 1000), 4).unwrap();
                s.set_group(i, 9);
            }
            s.add_request(10, prompt(20, 1000), 4).unwrap();
            let out = step(&mut s);
            // Two groups: the call of four and the lone request, 32 tokens each.
            assert_eq!(tokens_of(&out, 10), 32);
            assert_eq!(
                tokens_of(&out, 0),
                32,
                "the call's first request takes its share"
            );
            assert_eq!((1..4).map(|i| tokens_of(&out, i)).sum::<usize>(), 0);
        }

        /// Decodes come first (admission.rs); the shares split what they leave.
        #[test]
        fn shares_split_what_the_decodes_leave() {
            let mut s = sched(64, false);
            s.add_request(1, prompt(1, 4), 20).unwrap();
            step(&mut s);
            for i in 2..6 {
                s.add_request(i, prompt(i as u32, 1000), 4).unwrap();
                s.set_group(i, 9);
            }
            s.add_request(10, prompt(20, 1000), 4).unwrap();
            let out = step(&mut s);
            assert_eq!(tokens_of(&out, 1), 1, "the decode keeps its token");
            assert_eq!(tokens_of(&out, 2), 32, "the call's share of 63");
            assert_eq!(tokens_of(&out, 10), 31, "the lone request's share of 63");
            assert_eq!(out.num_batched_tokens, 64);
        }

        /// A burst of requests with one long system prompt: the first computes it, the others
        /// wait for the prefix cache instead of computing it side by side.
        #[test]
        fn a_shared_prefix_is_computed_once_in_a_burst() {
            let mut s = sched(64, true);
            for i in 0..4 {
                let mut p = prompt(3, 160);
                p.push(i as u32);
                s.add_request(i, p, 2).unwrap();
            }
            let mut steps = 0;
            while s.has_unfinished() && steps < 100 {
                step(&mut s);
                steps += 1;
            }
            assert!(!s.has_unfinished());
            let (_, hits) = s.prefix_cache_stats();
            assert_eq!(
                hits,
                3 * 160,
                "three requests got the 160 shared tokens from the cache"
            );
        }
    }
}
