//! How one step's token budget is shared between kinds of work, in this order:
//!
//! 1. **Decode**: one token for every running request whose prompt is computed (the token it
//!    sampled last). Prefill never takes these, so a burst of new prompts cannot stall decoding
//!    requests; only a budget smaller than the running batch leaves some for the next step.
//! 2. **Prefill**: what remains is split max-min fairly between the groups that want prompt
//!    tokens (`fair.rs`: one client call's choices and prompts, or a request alone), then handed
//!    to running requests' unfinished prompts (oldest first) and to waiting requests in arrival
//!    order, each taking as much as it needs within its group's share; what shares leave unused
//!    goes to the planned prompts in order. Within a group, prompts finish in arrival order as
//!    early as the budget allows (time to first token stays low for a burst of one call's
//!    prompts), and a 5-token request is never stuck behind a call of 16 long prompts.
//! 3. **Drafts** (speculative decoding): only from what is left after both, and only when no
//!    request is left waiting, so draft tokens never delay a prompt or take KV blocks a waiting
//!    request needs.

/// Which tier a running request's work falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// One token to compute: the last sampled one.
    Decode,
    /// Prompt tokens left to compute (a chunked prompt, or one recomputed after preemption).
    Prefill,
}

impl Work {
    /// The work of a request with `num_tokens` tokens of which `num_computed` are computed.
    pub fn of(num_tokens: usize, num_computed: usize) -> Work {
        if num_tokens - num_computed <= 1 {
            Work::Decode
        } else {
            Work::Prefill
        }
    }
}

/// The token budget of one step, handed out tier by tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    left: usize,
}

impl Budget {
    pub fn new(max_num_batched_tokens: usize) -> Self {
        Self {
            left: max_num_batched_tokens,
        }
    }

    pub fn left(&self) -> usize {
        self.left
    }

    /// Takes up to `want` tokens; returns how many were granted.
    pub fn take(&mut self, want: usize) -> usize {
        let n = want.min(self.left);
        self.left -= n;
        n
    }

    /// Returns tokens of work that was planned and then dropped (its request was preempted).
    pub fn give_back(&mut self, n: usize) {
        self.left += n;
    }
}

/// Limits of one request's draft for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DraftRoom {
    /// Tokens the request holds (prompt + output).
    pub num_tokens: usize,
    /// Its output so far and its output limit.
    pub output_len: usize,
    pub max_tokens: usize,
    /// The context length.
    pub max_model_len: usize,
}

impl DraftRoom {
    /// Draft tokens a request may verify this step: if all are accepted, they and the token
    /// sampled after them must still fit `max_tokens` and the context, so no draft position is
    /// ever computed past what the request may keep (and its KV never needs more blocks than
    /// `check_request` allowed for).
    pub fn cap(&self, proposed: usize, budget_left: usize) -> usize {
        let by_output = self.max_tokens.saturating_sub(self.output_len + 1);
        let by_context = self.max_model_len.saturating_sub(self.num_tokens + 1);
        proposed.min(by_output).min(by_context).min(budget_left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_left_is_decode_more_is_prefill() {
        assert_eq!(Work::of(10, 9), Work::Decode);
        assert_eq!(Work::of(10, 8), Work::Prefill);
        assert_eq!(Work::of(10, 0), Work::Prefill);
        assert_eq!(Work::of(1, 0), Work::Decode);
    }

    #[test]
    fn the_budget_grants_what_is_left_and_takes_back_dropped_work() {
        let mut b = Budget::new(10);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(8), 6);
        assert_eq!((b.take(1), b.left()), (0, 0));
        b.give_back(3);
        assert_eq!(b.take(5), 3);
    }

    #[test]
    fn drafts_fit_the_output_limit_the_context_and_the_budget() {
        let room = DraftRoom {
            num_tokens: 100,
            output_len: 10,
            max_tokens: 20,
            max_model_len: 4096,
        };
        assert_eq!(room.cap(5, 100), 5);
        // 10 outputs, 4 drafts and the token after them make 15 <= 20; 9 + 1 would be 20 too.
        assert_eq!(room.cap(12, 100), 9);
        assert_eq!(room.cap(5, 2), 2);
        let last = DraftRoom {
            output_len: 19,
            ..room
        };
        assert_eq!(
            last.cap(5, 100),
            0,
            "the next token is the last one allowed"
        );
        let ctx = DraftRoom {
            max_model_len: 103,
            ..room
        };
        assert_eq!(ctx.cap(5, 100), 2);
    }
}
