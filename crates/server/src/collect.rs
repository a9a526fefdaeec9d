//! Non-streaming responses: every choice's events gathered, then one JSON body.
//!
//! The handler's future owns the `RequestStream`s; a client that disconnects drops the future and
//! with it the streams, which aborts the requests.

use futures::StreamExt;
use tokenfab_engine::{RequestStream, StreamEvent, TokenLogprob, Usage};
use tokenfab_types::{FinishReason, TokenId};

use crate::error::{ApiError, ApiResult};
use crate::logprobs::{chat_token, CompletionLogprobsBuilder, Vocab};
use crate::openai::{
    ChatChoice, ChatCompletion, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs,
};
use crate::sse::merge;
use crate::stream::{Meta, Tally};
use crate::validation::ValidRequest;

/// One choice's whole output.
#[derive(Debug, Clone)]
pub struct ChoiceOut {
    text: String,
    /// Generated tokens in order (their text is in `text`, with any text released at the end).
    tokens: Vec<(TokenId, Option<TokenLogprob>)>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    finish: FinishReason,
    usage: Usage,
}

impl Default for ChoiceOut {
    fn default() -> Self {
        Self {
            text: String::new(),
            tokens: vec![],
            prompt_logprobs: vec![],
            finish: FinishReason::Abort,
            usage: Usage::default(),
        }
    }
}

/// Waits for every choice to end; the first engine error fails the whole response.
pub async fn collect(streams: Vec<RequestStream>) -> ApiResult<Vec<ChoiceOut>> {
    let mut outs = vec![ChoiceOut::default(); streams.len()];
    let mut merged = merge(streams);
    while let Some((i, ev)) = merged.next().await {
        let o = &mut outs[i];
        match ev {
            StreamEvent::PromptLogprobs(v) => o.prompt_logprobs = v,
            StreamEvent::Token {
                token,
                text,
                logprob,
            } => {
                o.text.push_str(&text);
                o.tokens.push((token, logprob));
            }
            StreamEvent::Text(t) => o.text.push_str(&t),
            StreamEvent::End { reason, usage } => {
                o.finish = reason;
                o.usage = usage;
            }
            StreamEvent::Error(msg) => return Err(ApiError::Engine(msg)),
            StreamEvent::ClientTimeout { after } => {
                return Err(ApiError::StreamTimeout {
                    secs: after.as_secs_f64(),
                })
            }
        }
    }
    Ok(outs)
}

pub fn chat_response(
    meta: Meta,
    v: &ValidRequest,
    outs: Vec<ChoiceOut>,
    vocab: &Vocab,
) -> ChatCompletion {
    let mut tally = Tally::new(v.prompts().len(), v.n());
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            tally.end(index, &o.usage);
            let logprobs = v.logprobs().map(|_| ChatLogprobs {
                content: o
                    .tokens
                    .iter()
                    .filter_map(|(_, lp)| lp.as_ref().map(|lp| chat_token(vocab, lp)))
                    .collect(),
            });
            let (message, finish) = crate::tools::message(&v.chat_parse(), o.text, o.finish);
            ChatChoice {
                index,
                message,
                logprobs,
                finish_reason: Some(finish),
            }
        })
        .collect();
    ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices,
        usage: tally.usage(),
    }
}

pub fn completion_response(
    meta: Meta,
    v: &ValidRequest,
    outs: Vec<ChoiceOut>,
    vocab: &Vocab,
) -> Completion {
    let mut tally = Tally::new(v.prompts().len(), v.n());
    let choices = outs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let prompt = &v.prompts()[index / v.n()];
            tally.end(index, &o.usage);
            let mut text = String::new();
            let mut b = CompletionLogprobsBuilder::new(vocab.clone(), v.tokens_as_ids());
            let mut lp = CompletionLogprobs::default();
            if v.echo() {
                text.push_str(prompt.text());
                b.push_prompt(&mut lp, prompt.tokens(), &o.prompt_logprobs);
            }
            text.push_str(&o.text);
            // Offsets follow the tokens' pieces (as vLLM's do); held-back text has no token.
            for (t, l) in &o.tokens {
                b.push(&mut lp, *t, l.as_ref());
            }
            CompletionChoice {
                index,
                text,
                logprobs: v.logprobs().map(|_| lp),
                finish_reason: Some(o.finish.as_str()),
            }
        })
        .collect();
    Completion {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        choices,
        usage: Some(Some(tally.usage())),
    }
}
