//! llguidance's view of tokenfab's tokenizer: a token trie over each token's raw bytes, special
//! tokens marked so grammars only reach them by name, and the model's end-of-generation ids.

use std::sync::Arc;

use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenId};
use tokenfab_loader::Tokenizer;

use crate::{Error, Result};

/// The tokenizer behind a [`TokEnv`]: llguidance tokenizes forced text with it, so forced tokens
/// are the ones the model would see from tokenfab's own encoder.
pub(crate) struct TokenizerEnv {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl toktrie::TokenizerEnv for TokenizerEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Invalid UTF-8 runs (a grammar may force partial characters) go through the trie.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// Builds the token environment once per model.
///
/// `n_vocab` is the width of a logits row: ids past the tokenizer's vocabulary (padded
/// embedding rows) become placeholder special tokens that no grammar allows.
pub(crate) fn tok_env(tokenizer: Arc<Tokenizer>, n_vocab: usize) -> Result<TokEnv> {
    let vocab = tokenizer.vocab_size();
    if n_vocab < vocab {
        return Err(Error::Tokenizer(format!(
            "logits have {n_vocab} entries but the vocabulary has {vocab} tokens"
        )));
    }
    let mut eog = tokenizer.eog_ids();
    let eos = tokenizer
        .eos_id()
        .or(tokenizer.eot_id())
        .or(eog.first().copied())
        .ok_or_else(|| Error::Tokenizer("no end-of-sequence token".into()))?;
    // The primary EOS first: llguidance forces it once a grammar is complete.
    eog.retain(|&id| id != eos);
    eog.insert(0, eos);
    // Words: each token's bytes; control/unknown tokens prefixed with llguidance's marker byte
    // (0xFF, never valid UTF-8) so free text can never spell them.
    let mut words: Vec<Vec<u8>> = (0..vocab as u32)
        .map(|id| {
            let piece = tokenizer.token_piece(id);
            if tokenizer.is_special(id) {
                let mut w = Vec::with_capacity(piece.len() + 1);
                w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                w.extend_from_slice(piece);
                w
            } else {
                piece.to_vec()
            }
        })
        .collect();
    for id in vocab..n_vocab {
        let mut w = format!(" <[{id}]>").into_bytes();
        w[0] = TokTrie::SPECIAL_TOKEN_MARKER;
        words.push(w);
    }
    let info = TokRxInfo {
        vocab_size: n_vocab as u32,
        tok_eos: eos,
        tok_bos: tokenizer.bos_id(),
        tok_pad: tokenizer.pad_id(),
        tok_unk: tokenizer.unk_id(),
        tok_end_of_turn: tokenizer.eot_id(),
    };
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
    Ok(Arc::new(TokenizerEnv { tokenizer, trie }))
}
