//! One request as the scheduler tracks it.

use tokenfab_types::{RequestId, TokenId};

/// A request's tokens and progress.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request's id.
    pub(crate) id: RequestId,
    /// Prompt then output tokens, in order; `[..num_prompt_tokens]` is the prompt.
    pub(crate) tokens: Vec<TokenId>,
    /// Length of the prompt inside `tokens`.
    pub(crate) num_prompt_tokens: usize,
    /// Output tokens after which the request is length-capped.
    pub(crate) max_tokens: usize,
    /// Tokens whose KV is in the cache; `tokens[num_computed_tokens..]` remain to compute.
    /// Reset to 0 on preemption.
    pub(crate) num_computed_tokens: usize,
    /// Prefix-cache hit tokens when first scheduled (`None` before that), for usage reporting.
    pub(crate) num_cached_tokens: Option<usize>,
    /// Times this request was preempted.
    pub(crate) num_preemptions: u32,
    /// Compute every token even when the prefix cache holds some.
    pub(crate) skip_prefix_cache: bool,
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
}
