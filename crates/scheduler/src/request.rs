//! One request as the scheduler tracks it, and what a caller hands in to create one.

use tokenfab_types::{FinishReason, RequestId, TokenId};

/// A request to queue with [`crate::Scheduler::add`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRequest {
    /// Unique among the live requests.
    pub id: RequestId,
    /// (n,) the prompt; never empty.
    pub prompt: Vec<TokenId>,
    /// Most output tokens. 0 makes a prefill-only request: its prompt is computed (for prompt
    /// log-probabilities, say) and it finishes with `Length` without sampling anything.
    pub max_tokens: usize,
    /// Sampling one of these ends the request with `Stop`, the token kept as its last output: the
    /// model's end-of-generation tokens (unless the client ignores them) and the request's own
    /// stop tokens.
    pub stop_token_ids: Vec<TokenId>,
    /// Compute every prompt token even when the prefix cache holds some (a request that wants
    /// prompt log-probabilities needs every row's logits).
    pub skip_prefix_cache: bool,
}

impl NewRequest {
    /// A request with no stop tokens that may use the prefix cache.
    pub fn new(id: RequestId, prompt: Vec<TokenId>, max_tokens: usize) -> Self {
        Self {
            id,
            prompt,
            max_tokens,
            ..Self::default()
        }
    }
}

/// A request the scheduler ended in [`crate::Scheduler::update`]: removed, its blocks freed.
#[derive(Clone, Debug)]
pub struct Finished {
    /// `Stop` (a stop token was sampled) or `Length` (`max_tokens` or the context reached).
    pub reason: FinishReason,
    /// Its tokens and counts as they ended.
    pub request: Request,
}

/// A request's tokens and progress.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request's id.
    pub(crate) id: RequestId,
    /// Prompt then output tokens, in order; `[..num_prompt_tokens]` is the prompt.
    pub(crate) tokens: Vec<TokenId>,
    /// Length of the prompt inside `tokens`.
    pub(crate) num_prompt_tokens: usize,
    /// Output tokens after which the request is length-capped; 0 for prefill-only.
    pub(crate) max_tokens: usize,
    /// Sampling one of these ends the request with `Stop`.
    pub(crate) stop_token_ids: Vec<TokenId>,
    /// Tokens whose KV is in the cache; `tokens[num_computed_tokens..]` remain to compute.
    /// Reset to 0 on preemption.
    pub(crate) num_computed_tokens: usize,
    /// Prefix-cache hit tokens when first scheduled (`None` before that), for usage reporting.
    pub(crate) num_cached_tokens: Option<usize>,
    /// Times this request was preempted.
    pub(crate) num_preemptions: u32,
    /// Compute every token even when the prefix cache holds some.
    pub(crate) skip_prefix_cache: bool,
    /// Draft tokens proposed to follow `tokens` (speculative decoding), verified at the request's
    /// next decode step; never part of `tokens` until accepted.
    pub(crate) draft: Vec<TokenId>,
    /// Tokens sampled for this request by the step in flight, not yet known (vLLM's
    /// `num_output_placeholders`): 1 from [`crate::Scheduler::schedule_ahead`] until the
    /// in-flight step's `update`, else 0. The next step is planned as if they were in `tokens`.
    pub(crate) num_placeholders: usize,
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The prompt's tokens.
    pub fn prompt(&self) -> &[TokenId] {
        &self.tokens[..self.num_prompt_tokens]
    }

    /// Output tokens sampled so far (kept across preemptions).
    pub fn output(&self) -> &[TokenId] {
        &self.tokens[self.num_prompt_tokens..]
    }

    /// Prompt then output.
    pub fn all_tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Prompt plus output length.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// [`Self::num_tokens`] counting the placeholder of a token the step in flight samples.
    pub(crate) fn num_tokens_ahead(&self) -> usize {
        self.tokens.len() + self.num_placeholders
    }

    /// The output limit given at `add_request`.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens whose KV is computed.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    /// Prefix-cache hit tokens at first scheduling (0 before it is scheduled).
    pub fn num_cached_tokens(&self) -> usize {
        self.num_cached_tokens.unwrap_or(0)
    }

    /// Times this request was preempted.
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }

    /// Sampling one of these ends the request with `Stop`.
    pub fn stop_token_ids(&self) -> &[TokenId] {
        &self.stop_token_ids
    }

    /// Keeps the first `len` output tokens and drops the rest: a caller that ends a request on
    /// a stop string found in an earlier token of a step drops the tokens sampled after it.
    pub fn truncate_output(&mut self, len: usize) {
        self.tokens.truncate(self.num_prompt_tokens + len);
    }
}
