//! A `tokenizer.json` (Hugging Face `tokenizers`) as a tokenizer backend: encoding runs the
//! `tokenizers` crate itself (normalizer, pre-tokenizer, BPE or Unigram model, added tokens), so
//! ids are the checkpoint's own; the vocabulary, token attributes and pieces are derived here so
//! that decoding, special tokens and end-of-generation work as for GGUF vocabularies.
//!
//! Token attributes follow llama.cpp's conversion (`TextModel.get_vocab_base`): special added
//! tokens (and added tokens that look special, `<|...|>`) are control tokens, other added tokens
//! user-defined, `<0xXX>` tokens of a byte-fallback model bytes, the model's `unk_token` unknown.

use std::str::FromStr;

use serde_json::Value as Json;

use super::{attr, TokenData, SHIELD};
use crate::{Error, Result};

/// The two `tokenizers` pipelines of one `tokenizer.json`.
pub(super) struct HfModel {
    /// Special added tokens in the text become those tokens (`parse_special`).
    parse: tokenizers::Tokenizer,
    /// Special added tokens in the text are tokenized as text.
    plain: tokenizers::Tokenizer,
    /// `parse` whose first normalizer step drops [`SHIELD`]s (`shield.rs`): a shielded spelling
    /// matches no added token and is then tokenized as text. `Err` says why this vocabulary
    /// cannot keep shielded text as text.
    shielded: std::result::Result<tokenizers::Tokenizer, String>,
    /// Pieces are GPT-2 byte characters (a `ByteLevel` step), else SentencePiece-style (`▁`).
    pub byte_level: bool,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel")
            .field("byte_level", &self.byte_level)
            .finish()
    }
}

/// What [`load`] derives from a `tokenizer.json`.
pub(super) struct HfVocab {
    pub model: HfModel,
    pub tokens: Vec<TokenData>,
    pub unk: Option<u32>,
    /// Decoding drops the space the normalizer put before the first word (a `Strip` or
    /// `Metaspace` decoder step).
    pub add_space_prefix: bool,
}

fn err(m: String) -> Error {
    Error::Tokenizer(format!("tokenizer.json: {m}"))
}

/// Whether a JSON pipeline step (or a `Sequence` of them) has a step of type `ty` for which
/// `pred` holds.
fn has_step(v: Option<&Json>, ty: &str, pred: &dyn Fn(&Json) -> bool) -> bool {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return false;
    };
    let inner = ["decoders", "normalizers", "pretokenizers", "processors"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Json::as_array));
    match inner {
        Some(list) => list.iter().any(|s| has_step(Some(s), ty, pred)),
        None => v.get("type").and_then(Json::as_str) == Some(ty) && pred(v),
    }
}

/// Added tokens llama.cpp's converter treats as control tokens even when not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

pub(super) fn load(text: &str) -> Result<HfVocab> {
    let json: Json = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let model_ty = json
        .pointer("/model/type")
        .and_then(Json::as_str)
        .unwrap_or("BPE");
    if !matches!(model_ty, "BPE" | "Unigram") {
        return Err(err(format!(
            "model type `{model_ty}` is not supported (BPE and Unigram are)"
        )));
    }
    let mut parse = tokenizers::Tokenizer::from_str(text).map_err(|e| err(e.to_string()))?;
    // A `truncation` or `padding` section would silently cut or pad every prompt.
    parse
        .with_truncation(None)
        .map_err(|e| err(e.to_string()))?
        .with_padding(None);
    let mut plain = parse.clone();
    plain.set_encode_special_tokens(true);
    let shielded = shielded_pipeline(&parse);

    let any = |_: &Json| true;
    let byte_level = has_step(json.get("decoder"), "ByteLevel", &any)
        || has_step(json.get("pre_tokenizer"), "ByteLevel", &any);
    let strips_first = |s: &Json| s.get("start").and_then(Json::as_u64).unwrap_or(0) > 0;
    let metaspace_prefix = |s: &Json| {
        s.get("prepend_scheme").and_then(Json::as_str).map_or_else(
            || {
                s.get("add_prefix_space")
                    .and_then(Json::as_bool)
                    .unwrap_or(true)
            },
            |p| p != "never",
        )
    };
    let add_space_prefix = !byte_level
        && (has_step(json.get("decoder"), "Strip", &strips_first)
            || has_step(json.get("decoder"), "Metaspace", &metaspace_prefix));

    let vocab = parse.get_vocab(true);
    let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    if n == 0 || n > u32::MAX as usize || n > vocab.len().saturating_mul(2) + 1024 {
        return Err(err(format!(
            "{} tokens with ids up to {n} is not a vocabulary",
            vocab.len()
        )));
    }
    let mut tokens: Vec<TokenData> = (0..n)
        .map(|i| TokenData {
            text: format!("[PAD{i}]"),
            score: 0.0,
            attr: attr::UNUSED,
        })
        .collect();
    let byte_fallback = json
        .pointer("/model/byte_fallback")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    for (t, &id) in &vocab {
        let is_byte = byte_fallback
            && t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && u8::from_str_radix(&t[3..5], 16).is_ok();
        tokens[id as usize] = TokenData {
            text: t.clone(),
            score: 0.0,
            attr: if is_byte { attr::BYTE } else { attr::NORMAL },
        };
    }
    for (id, a) in parse.get_added_tokens_decoder() {
        let t = &mut tokens[id as usize];
        t.attr = if a.special || looks_special(&a.content) {
            attr::CONTROL
        } else {
            attr::USER_DEFINED
        };
    }
    // BPE names its unknown token, Unigram gives its id.
    let unk = json
        .pointer("/model/unk_token")
        .and_then(Json::as_str)
        .and_then(|u| vocab.get(u).copied())
        .or_else(|| {
            let id = json.pointer("/model/unk_id").and_then(Json::as_u64)?;
            ((id as usize) < n).then_some(id as u32)
        });
    if let Some(u) = unk {
        tokens[u as usize].attr = attr::UNKNOWN;
    }
    Ok(HfVocab {
        model: HfModel {
            parse,
            plain,
            shielded,
            byte_level,
        },
        tokens,
        unk,
        add_space_prefix,
    })
}

/// `parse` with shields dropped before anything else normalizes the text. Added tokens marked
/// `normalized` are matched after normalization, where the shields are gone: a vocabulary with
/// such a control token cannot shield it, and says so.
fn shielded_pipeline(
    parse: &tokenizers::Tokenizer,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    use tokenizers::normalizers::{NormalizerWrapper, Replace, Sequence};
    let normalized_control = parse
        .get_added_tokens_decoder()
        .into_values()
        .filter(|a| a.normalized && (a.special || looks_special(&a.content)))
        .map(|a| a.content)
        .filter(|c| c.chars().nth(1).is_some())
        .min();
    if let Some(c) = normalized_control {
        return Err(format!(
            "its control token `{c}` is matched after normalization, where the marker that keeps \
             special-token text in messages as text is already gone"
        ));
    }
    let strip = Replace::new(SHIELD.to_string(), "").map_err(|e| e.to_string())?;
    let mut steps: Vec<NormalizerWrapper> = vec![strip.into()];
    steps.extend(parse.get_normalizer().cloned());
    let mut t = parse.clone();
    t.with_normalizer(Some(Sequence::new(steps)))
        .map_err(|e| e.to_string())?;
    Ok(t)
}

impl HfModel {
    /// Appends the ids of `text` holding shielded parts: special-token text outside them
    /// becomes special tokens, inside them it is text (no BOS/EOS).
    pub fn encode_shielded(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let tok = self.shielded.as_ref().map_err(|why| {
            Error::Unshieldable(format!("this tokenizer.json cannot keep it as text: {why}"))
        })?;
        run(tok, text, out)
    }

    /// Appends the ids of `text` (no BOS/EOS: the caller adds them).
    pub fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) -> Result<()> {
        let tok = if parse_special {
            &self.parse
        } else {
            &self.plain
        };
        run(tok, text, out)
    }
}

fn run(tok: &tokenizers::Tokenizer, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let enc = tok
        .encode_fast(text, false)
        .map_err(|e| Error::Tokenizer(format!("tokenizer.json: encoding failed: {e}")))?;
    out.extend_from_slice(enc.get_ids());
    Ok(())
}
