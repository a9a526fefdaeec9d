//! Engine logprobs in the two OpenAI shapes: chat (`{content: [{token, logprob, bytes,
//! top_logprobs}]}`) and legacy completions (`{tokens, token_logprobs, top_logprobs,
//! text_offset}`, as vLLM returns them for lm-eval).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokenfab_engine::TokenLogprob;
use tokenfab_types::TokenId;

use crate::openai::{ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

/// A token's bytes (the tokenizer's piece); shared by the stream state machines.
pub type Vocab = Arc<dyn Fn(TokenId) -> Vec<u8> + Send + Sync>;

/// JSON has no -inf: clamp as OpenAI and vLLM do.
pub fn clamp(lp: f32) -> f32 {
    if lp.is_nan() {
        -9999.0
    } else {
        lp.max(-9999.0)
    }
}

fn text(vocab: &Vocab, id: TokenId, as_id: bool) -> String {
    if as_id {
        format!("token_id:{id}")
    } else {
        String::from_utf8_lossy(&vocab(id)).into_owned()
    }
}

/// One generated chat token.
pub fn chat_token(vocab: &Vocab, lp: &TokenLogprob) -> ChatTokenLogprob {
    let bytes = vocab(lp.token);
    ChatTokenLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob: clamp(lp.logprob),
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, l)| {
                let bytes = vocab(id);
                ChatTopLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    logprob: clamp(l),
                    bytes,
                }
            })
            .collect(),
    }
}

/// Builds the completions logprobs of one choice token by token; `text_offset` counts
/// characters of the returned text from its start.
pub struct CompletionLogprobsBuilder {
    vocab: Vocab,
    as_ids: bool,
    offset: usize,
}

impl CompletionLogprobsBuilder {
    pub fn new(vocab: Vocab, as_ids: bool) -> Self {
        Self {
            vocab,
            as_ids,
            offset: 0,
        }
    }

    /// Appends a token with its logprob (`None`: the first prompt token, which has none).
    pub fn push(
        &mut self,
        out: &mut CompletionLogprobs,
        token: TokenId,
        lp: Option<&TokenLogprob>,
    ) {
        let t = text(&self.vocab, token, self.as_ids);
        out.text_offset.push(self.offset);
        self.offset += t.chars().count();
        out.tokens.push(t.clone());
        out.token_logprobs.push(lp.map(|l| clamp(l.logprob)));
        out.top_logprobs.push(lp.map(|l| {
            let mut m: BTreeMap<String, f32> = l
                .top
                .iter()
                .map(|&(id, v)| (text(&self.vocab, id, self.as_ids), clamp(v)))
                .collect();
            // vLLM lists the chosen token among the alternatives too.
            m.entry(t).or_insert(clamp(l.logprob));
            m
        }));
    }

    /// The prompt's tokens (echo): the first has no logprob.
    pub fn push_prompt(
        &mut self,
        out: &mut CompletionLogprobs,
        tokens: &[TokenId],
        lps: &[Option<TokenLogprob>],
    ) {
        for (i, &t) in tokens.iter().enumerate() {
            self.push(out, t, lps.get(i).and_then(Option::as_ref));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        Arc::new(|id| format!("t{id}").into_bytes())
    }

    #[test]
    fn echo_shape_has_a_null_first_entry_and_offsets() {
        let mut b = CompletionLogprobsBuilder::new(vocab(), false);
        let mut out = CompletionLogprobs::default();
        let lp = TokenLogprob {
            token: 2,
            logprob: -0.5,
            top: vec![(3, -0.1), (2, -0.5)],
        };
        b.push_prompt(&mut out, &[1, 2], &[None, Some(lp)]);
        b.push(
            &mut out,
            12,
            Some(&TokenLogprob {
                token: 12,
                logprob: f32::NEG_INFINITY,
                top: vec![],
            }),
        );
        assert_eq!(out.tokens, ["t1", "t2", "t12"]);
        assert_eq!(out.token_logprobs, [None, Some(-0.5), Some(-9999.0)]);
        assert_eq!(out.text_offset, [0, 2, 4]);
        assert!(out.top_logprobs[0].is_none());
        let top = out.top_logprobs[1].as_ref().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top["t3"], -0.1);
        assert_eq!(out.top_logprobs[2].as_ref().unwrap()["t12"], -9999.0);
    }

    #[test]
    fn token_ids_spelling() {
        let mut b = CompletionLogprobsBuilder::new(vocab(), true);
        let mut out = CompletionLogprobs::default();
        b.push(&mut out, 7, None);
        assert_eq!(out.tokens, ["token_id:7"]);
    }
}
