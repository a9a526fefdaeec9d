//! What goes into the engine and what comes back, per request.

use std::sync::Arc;
use std::time::Duration;

use tokenfab_structured::Compiled;
use tokenfab_types::{FinishReason, SamplingParams, TokenId};

use crate::error::{Error, Result};

/// What a caller (the server, a CLI command) asks of the engine. [`crate::EngineHandle::submit`]
/// checks it (token ids, lengths) and refuses it with a typed [`Error`] before queueing.
#[derive(Clone, Debug, Default)]
pub struct EngineRequest {
    /// (n,) the prompt, already tokenized; never empty.
    pub prompt_tokens: Vec<TokenId>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; prompt + max_tokens fits the context. 0 computes the prompt only
    /// (with its log-probabilities when asked) and ends with `Length`, nothing generated.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these; the stop string is not returned.
    pub stop: Vec<String>,
    /// Generation stops after one of these tokens; like end-of-generation tokens, the token is
    /// streamed (with its log-probability) but adds no text.
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
    /// Constrained decoding (JSON schema, regex, choice, grammar, tool calls): the compiled
    /// constraint, from which the engine starts this request's own matcher. Each sampled token
    /// is drawn from the tokens the constraint allows; end-of-generation tokens always stop a
    /// constrained request (`ignore_eos` does not apply: the grammar decides where it ends).
    pub grammar: Option<Arc<Compiled>>,
    /// Requests of one client call (its choices and prompts) carry one group id and share one
    /// fair share of each step's token budget; `None`: the request has a share of its own.
    pub group: Option<u64>,
}

/// The token-id range check, the one place it is written: `id` must be a row of the model's
/// vocabulary of `vocab_size` tokens. `field` names the request field it came from.
pub fn check_token_id(field: &'static str, id: i64, vocab_size: usize) -> Result<TokenId> {
    if id < 0 || id as u64 >= vocab_size as u64 {
        return Err(Error::TokenOutOfRange {
            field,
            id,
            vocab_size,
        });
    }
    Ok(id as TokenId)
}

impl EngineRequest {
    /// Every token id of the request (prompt, stop tokens, logit bias) is in the vocabulary.
    pub fn check_token_ids(&self, vocab_size: usize) -> Result<()> {
        let fields = [
            ("prompt", &self.prompt_tokens),
            ("stop_token_ids", &self.stop_token_ids),
        ];
        for (field, ids) in fields {
            for &t in ids {
                check_token_id(field, t.into(), vocab_size)?;
            }
        }
        for &(t, _) in &self.logit_bias {
            check_token_id("logit_bias", t.into(), vocab_size)?;
        }
        Ok(())
    }
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
    /// Generated tokens, a final stop or end-of-generation token included.
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
    /// character or a possible stop string is still pending, and is empty for a stop or
    /// end-of-generation token, which ends the text).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_checked_against_the_vocabulary_naming_the_field() {
        assert_eq!(check_token_id("prompt", 9, 10).unwrap(), 9);
        for bad in [-1, 10, i64::MAX] {
            let e = check_token_id("prompt", bad, 10).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("`prompt` token ids must be in [0, 10). Given: {bad}")
            );
        }
        let mut r = EngineRequest {
            prompt_tokens: vec![1, 2],
            stop_token_ids: vec![3],
            logit_bias: vec![(4, 1.0)],
            ..Default::default()
        };
        assert!(r.check_token_ids(5).is_ok());
        r.logit_bias.push((5, -1.0));
        let e = r.check_token_ids(5).unwrap_err();
        assert!(matches!(
            e,
            Error::TokenOutOfRange {
                field: "logit_bias",
                id: 5,
                vocab_size: 5
            }
        ));
        r.stop_token_ids.push(7);
        assert!(r
            .check_token_ids(5)
            .unwrap_err()
            .to_string()
            .contains("stop_token_ids"));
    }
}
