//! What one request may ask for: a work budget over the whole request (every prompt times every
//! choice), checked after validation and before anything reaches the engine, so that a 4 KB body
//! cannot ask for minutes of compute, millions of logprob entries or a response of many
//! megabytes. Each refusal is a 400 naming the limit and the flag that sets it.
//!
//! Also here: requests that can never be served (more choices than the queue holds, `best_of`)
//! and the cheap bound that refuses a text before tokenizing it when it cannot fit anyway.

use tokenfab_loader::Tokenizer;

use crate::error::{ApiError, ApiResult};
use crate::openai::SamplingFields;
use crate::validation::{Limits, ValidRequest};

/// Estimated JSON bytes of one logprob entry (a token, its logprob, the punctuation).
pub const LOGPROB_ENTRY_BYTES: usize = 40;

/// Per-request work limits, as configured (`tokenfab serve` flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkLimits {
    /// Prompt tokens summed over every choice (`--max-request-prompt-tokens`); `None`: the
    /// context length, at least 65,536.
    pub max_prompt_tokens_total: Option<usize>,
    /// Logprob entries one response may carry: tokens with logprobs times (1 + alternatives),
    /// over every choice (`--max-logprob-entries`).
    pub max_logprob_entries: usize,
    /// Estimated size of one response (`--max-response-bytes`).
    pub max_response_bytes: usize,
}

impl Default for WorkLimits {
    fn default() -> Self {
        Self {
            max_prompt_tokens_total: None,
            max_logprob_entries: 131_072,
            max_response_bytes: 32 << 20,
        }
    }
}

/// The work limits resolved for the served model and engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkBudget {
    pub max_prompt_tokens_total: usize,
    pub max_logprob_entries: usize,
    pub max_response_bytes: usize,
    /// Most choices (prompts x `n`) of one request: the engine's queue holds no more at once.
    pub max_choices: usize,
    /// Bytes the longest token decodes to: a text of `b` bytes has at least `b / this` tokens,
    /// and a completion of `m` tokens at most `m * this` bytes.
    pub max_token_bytes: usize,
}

impl WorkBudget {
    pub fn new(w: &WorkLimits, context_len: usize, max_choices: usize, t: &Tokenizer) -> Self {
        Self {
            max_prompt_tokens_total: w.max_prompt_tokens_total.unwrap_or(context_len.max(65_536)),
            max_logprob_entries: w.max_logprob_entries,
            max_response_bytes: w.max_response_bytes,
            max_choices,
            max_token_bytes: max_token_bytes(t),
        }
    }

    /// No limits beyond what the vocabulary implies (tests, fuzzing).
    pub fn unlimited(t: &Tokenizer) -> Self {
        Self {
            max_prompt_tokens_total: usize::MAX,
            max_logprob_entries: usize::MAX,
            max_response_bytes: usize::MAX,
            max_choices: usize::MAX,
            max_token_bytes: max_token_bytes(t),
        }
    }
}

/// The most bytes one token of `t` decodes to (at least 1).
pub fn max_token_bytes(t: &Tokenizer) -> usize {
    (0..t.vocab_size() as u32)
        .map(|id| t.token_piece(id).len())
        .max()
        .unwrap_or(1)
        .max(1)
}

/// `1234567` as `1,234,567`.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Refuses a text that cannot fit `max_tokens` tokens, before tokenizing it: every token
/// decodes to at most `max_token_bytes` bytes, so the text has at least that many tokens.
pub fn check_text(field: &str, text: &str, max_tokens: usize, l: &Limits) -> ApiResult<()> {
    let at_least = text.len().div_ceil(l.work.max_token_bytes);
    if at_least > max_tokens {
        return Err(ApiError::invalid(
            field,
            format!(
                "`{field}` is {} bytes, at least {} tokens (no token of this model is longer than \
                 {} bytes); the limit is {} tokens.",
                grouped(text.len()),
                grouped(at_least),
                l.work.max_token_bytes,
                grouped(max_tokens)
            ),
        ));
    }
    Ok(())
}

/// `best_of`: generating several and returning the best is not implemented; equal to `n` (or
/// 1 with `n` 1) asks for nothing more than `n` and is accepted.
fn check_best_of(f: &SamplingFields, n: usize) -> ApiResult<()> {
    match f.best_of {
        None => Ok(()),
        Some(b) if b == n as i64 => Ok(()),
        Some(b) if b < n as i64 => Err(ApiError::invalid(
            "best_of",
            format!("`best_of` must be >= `n` ({n}). Given: {b}"),
        )),
        Some(b) => Err(ApiError::invalid(
            "best_of",
            format!(
                "`best_of` > `n` is not supported (tokenfab returns every choice it generates); \
                 use `n` instead. Given: best_of {b}, n {n}"
            ),
        )),
    }
}

/// What a request asks for, summed over its prompts and choices.
#[derive(Debug, Default, PartialEq)]
pub struct Work {
    pub choices: usize,
    pub prompt_tokens: usize,
    pub logprob_entries: usize,
    /// Estimated: text at the longest token's length plus logprob entries.
    pub response_bytes: usize,
}

pub fn work_of(v: &ValidRequest, max_token_bytes: usize) -> Work {
    let mut w = Work {
        choices: v.num_choices(),
        ..Work::default()
    };
    for p in v.prompts() {
        let echoed = if v.echo() { p.tokens().len() } else { 0 };
        let entries = v
            .logprobs()
            .map_or(0, |k| (p.max_tokens() + echoed).saturating_mul(k + 1));
        let text = if v.echo() { p.text().len() } else { 0 }
            .saturating_add(p.max_tokens().saturating_mul(max_token_bytes));
        let n = v.n();
        w.prompt_tokens = w.prompt_tokens.saturating_add(p.tokens().len() * n);
        w.logprob_entries = w.logprob_entries.saturating_add(entries.saturating_mul(n));
        let bytes = text.saturating_add(entries.saturating_mul(LOGPROB_ENTRY_BYTES));
        w.response_bytes = w.response_bytes.saturating_add(bytes.saturating_mul(n));
    }
    w
}

/// The checks of a validated request against the budget (called at the end of validation).
pub fn check(v: &ValidRequest, f: &SamplingFields, l: &Limits) -> ApiResult<()> {
    check_best_of(f, v.n())?;
    let b = &l.work;
    let w = work_of(v, b.max_token_bytes);
    let shape = format!("{} prompt(s) x `n` {}", v.prompts().len(), v.n());
    if w.choices > b.max_choices {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{shape} = {} choices, but this server queues at most {} requests at once \
                 (--max-queued-requests), so the request could never be accepted.",
                w.choices, b.max_choices
            ),
        ));
    }
    if w.prompt_tokens > b.max_prompt_tokens_total {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{shape} asks to compute {} prompt tokens; the limit per request is {} \
                 (--max-request-prompt-tokens). Send fewer prompts or choices.",
                grouped(w.prompt_tokens),
                grouped(b.max_prompt_tokens_total)
            ),
        ));
    }
    if w.logprob_entries > b.max_logprob_entries {
        return Err(ApiError::invalid(
            "logprobs",
            format!(
                "{shape} with these logprobs (and echo) asks for up to {} logprob entries; \
                 the limit per request is {} (--max-logprob-entries). Ask for fewer \
                 alternatives, tokens or choices.",
                grouped(w.logprob_entries),
                grouped(b.max_logprob_entries)
            ),
        ));
    }
    if w.response_bytes > b.max_response_bytes {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "{shape} could return up to {} bytes (`max_tokens` at up to {} bytes a token, \
                 plus logprobs); the limit per response is {} bytes (--max-response-bytes). \
                 Lower `max_tokens` or `n`.",
                grouped(w.response_bytes),
                b.max_token_bytes,
                grouped(b.max_response_bytes)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(25_696_000), "25,696,000");
    }
}
