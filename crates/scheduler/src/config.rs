//! The scheduler's limits and its error type.

use tokenfab_types::RequestId;

/// Limits of one scheduler; every field must be > 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Token budget of one step: tokens computed by one forward pass, over all requests
    /// (vLLM `max_num_batched_tokens`). Long prompts are chunked to fit it.
    pub max_num_batched_tokens: usize,
    /// Most requests in the running batch at once (vLLM `max_num_seqs`).
    pub max_num_seqs: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// KV-cache blocks in the pool (the memory limit, in blocks).
    pub num_blocks: usize,
    /// Share full blocks of equal prefixes between requests (vLLM `enable_prefix_caching`).
    pub enable_prefix_caching: bool,
    /// Most tokens (prompt + output) one request may reach: the model's context length.
    pub max_model_len: usize,
}

/// Why a configuration or a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    /// A configuration field is out of range.
    #[error("`{field}` must be > 0. Given: 0")]
    InvalidConfig {
        /// The offending `SchedulerConfig` field.
        field: &'static str,
    },
    /// The prompt has no tokens.
    #[error("the prompt must contain at least 1 token. Given: 0")]
    EmptyPrompt,
    /// Prompt plus `max_tokens` exceeds the context length.
    #[error("prompt tokens + `max_tokens` must be <= {max_model_len}. Given: {prompt_tokens} + {max_tokens}")]
    TooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Requested output tokens.
        max_tokens: usize,
        /// The limit, `SchedulerConfig::max_model_len`.
        max_model_len: usize,
    },
    /// Even alone, the request would need more KV blocks than the pool has.
    #[error(
        "request needs {needed_blocks} KV-cache blocks at its longest, the pool has {num_blocks}"
    )]
    DoesNotFit {
        /// Blocks for the most tokens it computes: `prompt + max_tokens - 1` (the last sampled
        /// token is never computed), or the prompt alone when `max_tokens` is 0.
        needed_blocks: usize,
        /// `SchedulerConfig::num_blocks`.
        num_blocks: usize,
    },
    /// The id is already live in this scheduler.
    #[error("request id {0} is already in use")]
    DuplicateId(RequestId),
}

impl SchedulerConfig {
    /// Whether a request of `prompt_len` tokens and up to `max_tokens` outputs can ever run: not
    /// empty, within `max_model_len`, and fitting the whole pool alone. [`crate::Scheduler::add`]
    /// refuses what fails here; a caller may check before queueing to answer synchronously.
    pub fn check_request(
        &self,
        prompt_len: usize,
        max_tokens: usize,
    ) -> Result<(), SchedulerError> {
        if prompt_len == 0 {
            return Err(SchedulerError::EmptyPrompt);
        }
        if prompt_len.saturating_add(max_tokens) > self.max_model_len {
            return Err(SchedulerError::TooLong {
                prompt_tokens: prompt_len,
                max_tokens,
                max_model_len: self.max_model_len,
            });
        }
        // The last sampled token is never fed back, so its KV slot is never needed.
        let needed_blocks = (prompt_len + max_tokens.max(1) - 1).div_ceil(self.block_size);
        if needed_blocks > self.num_blocks {
            return Err(SchedulerError::DoesNotFit {
                needed_blocks,
                num_blocks: self.num_blocks,
            });
        }
        Ok(())
    }

    /// Checks that every limit is > 0.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let fields = [
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_model_len", self.max_model_len),
        ];
        match fields.iter().find(|(_, v)| *v == 0) {
            Some(&(field, _)) => Err(SchedulerError::InvalidConfig { field }),
            None => Ok(()),
        }
    }
}
