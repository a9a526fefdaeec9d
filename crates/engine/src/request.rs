//! What goes into the engine and what comes back, per request.

use std::time::Duration;

use tokenfab_types::{FinishReason, SamplingParams, TokenId};

/// A request the server has already validated: token ids and limits that fit the model.
#[derive(Clone, Debug, Default)]
pub struct EngineRequest {
    /// (n,) the prompt, already tokenized; never empty.
    pub prompt_tokens: Vec<TokenId>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; prompt + max_tokens fits the context.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these; the stop string is not returned.
    pub stop: Vec<String>,
    /// Generation stops after one of these tokens (returned, like EOS is not).
    pub stop_token_ids: Vec<TokenId>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Added to the logits before sampling.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// When set, each generated token carries its log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
    /// When set, the prompt's tokens get log-probabilities too (with this many alternatives); the
    /// first prompt token has none.
    pub prompt_logprobs: Option<usize>,
    /// Requests of one client call (its choices and prompts) carry one group id and share one
    /// fair share of each step's token budget; `None`: the request has a share of its own.
    pub group: Option<u64>,
}

/// A token's log-probability under the model's raw distribution, with the top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenId,
    pub logprob: f32,
    /// Highest first.
    pub top: Vec<(TokenId, f32)>,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// What the engine sends back on a request's stream, in this order: `PromptLogprobs` (when asked),
/// `Token`s, perhaps one `Text`, then exactly one `End`, `Error` or `ClientTimeout`.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// One entry per prompt token; the first is `None`.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token and the text it completes (whole UTF-8 characters; may be empty while a
    /// character or a possible stop string is still pending).
    Token {
        token: TokenId,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end without a token of its own (it was held back as a possible stop
    /// string or an incomplete character). Comes right before `End`.
    Text(String),
    End {
        reason: FinishReason,
        usage: Usage,
    },
    /// The request failed inside the engine; the message is safe to show to the client.
    Error(String),
    /// The consumer took nothing for `after` (the stream timeout) while events waited: the
    /// request was aborted. Comes after the events the consumer had not taken yet.
    ClientTimeout {
        after: Duration,
    },
}

impl StreamEvent {
    /// True for the events that end a stream.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            StreamEvent::End { .. } | StreamEvent::Error(_) | StreamEvent::ClientTimeout { .. }
        )
    }
}
