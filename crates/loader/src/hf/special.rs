//! The tokenizer side of a checkpoint as GGUF metadata: `tokenizer.json` whole (the GGUF key
//! `tokenizer.huggingface.json`), special token ids and BOS/EOS flags from `tokenizer_config.json`
//! and the tokenizer's post-processor (gguf-py's `SpecialVocab`), the chat template, the
//! end-of-generation ids and default sampling of `generation_config.json`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;

use super::arch::{json_err, Hparams};
use super::{unsupported, Files};
use crate::{Result, Value, ValueType};

/// Token text -> id over `tokenizer.json`'s model vocabulary and added tokens.
pub(super) struct TokenIds {
    ids: HashMap<String, u32>,
    /// Model vocabulary plus added tokens, counted as llama.cpp's Gemma 3 conversion counts them.
    pub n_listed: usize,
}

impl TokenIds {
    pub fn new(tok: &Json) -> Result<Self> {
        let mut ids = HashMap::new();
        let n_vocab = match tok.pointer("/model/vocab") {
            // BPE, WordPiece: text -> id.
            Some(Json::Object(vocab)) => {
                for (t, id) in vocab {
                    let id = id
                        .as_u64()
                        .ok_or_else(|| json_err("tokenizer.json", t, id))?;
                    ids.insert(t.clone(), id as u32);
                }
                vocab.len()
            }
            // Unigram: [text, score] by id.
            Some(Json::Array(vocab)) => {
                for (id, entry) in vocab.iter().enumerate() {
                    let t = entry
                        .get(0)
                        .and_then(Json::as_str)
                        .ok_or_else(|| json_err("tokenizer.json", "model.vocab", entry))?;
                    ids.insert(t.to_string(), id as u32);
                }
                vocab.len()
            }
            _ => return Err(unsupported("tokenizer.json has no `model.vocab`".into())),
        };
        let added = tok
            .get("added_tokens")
            .and_then(Json::as_array)
            .map_or(&[][..], Vec::as_slice);
        for a in added {
            if let (Some(c), Some(id)) = (
                a.get("content").and_then(Json::as_str),
                a.get("id").and_then(Json::as_u64),
            ) {
                ids.insert(c.to_string(), id as u32);
            }
        }
        Ok(TokenIds {
            n_listed: n_vocab + added.len(),
            ids,
        })
    }
}

/// `bos_token` and friends: a string or an `AddedToken` object with `content`.
fn token_text(v: &Json) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Json::as_str))
}

/// What the tokenizer's post-processor adds around a single sequence: (adds BOS, adds EOS) when
/// a `TemplateProcessing` says so, as gguf-py's crude parse of it does.
fn post_processor_adds(tok: &Json) -> (Option<bool>, Option<bool>) {
    let Some(pp) = tok.get("post_processor").filter(|p| !p.is_null()) else {
        return (None, None);
    };
    let procs = match pp.get("processors").and_then(Json::as_array) {
        Some(list) => list.iter().collect::<Vec<_>>(),
        None => vec![pp],
    };
    let (mut bos, mut eos) = (None, None);
    for p in procs {
        match p.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {
                bos.get_or_insert(false);
                eos.get_or_insert(false);
            }
            Some("TemplateProcessing") => {
                let single = p.get("single").and_then(Json::as_array);
                let special =
                    |i: Option<&Json>| i.and_then(|x| x.pointer("/SpecialToken/id")).is_some();
                if let Some(s) = single.filter(|s| s.len() > 1) {
                    bos = Some(special(s.first()));
                    eos = Some(special(s.last()));
                }
            }
            _ => {}
        }
    }
    (bos, eos)
}

/// Writes the `tokenizer.*` keys (and `general.sampling.*`) into `meta`.
pub(super) fn tokenizer_meta(
    meta: &mut BTreeMap<String, Value>,
    files: &Files,
    ids: &TokenIds,
    hp: &Hparams,
) -> Result<()> {
    let (pp_bos, pp_eos) = post_processor_adds(&files.tokenizer);
    let cfg = files.tokenizer_config.clone().unwrap_or(Json::Null);
    for (typ, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
    ] {
        let from_cfg = cfg
            .get(format!("{typ}_token"))
            .and_then(token_text)
            .and_then(|t| ids.ids.get(t).copied());
        // config.json's `bos_token_id`/`eos_token_id` fill what tokenizer_config.json leaves out.
        let id = from_cfg.or_else(|| {
            hp.get(&format!("{typ}_token_id"))
                .and_then(|v| v.as_u64().or_else(|| v.get(0).and_then(Json::as_u64)))
                .map(|x| x as u32)
        });
        if let Some(id) = id {
            meta.insert(key.into(), Value::U32(id));
        }
    }
    for (typ, pp) in [("bos", pp_bos), ("eos", pp_eos)] {
        let flag = pp.or_else(|| cfg.get(format!("add_{typ}_token")).and_then(Json::as_bool));
        if let Some(b) = flag {
            meta.insert(format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(b));
        }
    }
    if let Some(b) = cfg
        .get("clean_up_tokenization_spaces")
        .and_then(Json::as_bool)
    {
        meta.insert("tokenizer.huggingface.clean_spaces".into(), Value::Bool(b));
    }
    let template = cfg
        .get("chat_template")
        .filter(|t| !t.is_null())
        .cloned()
        .or_else(|| files.template.clone());
    match template {
        None => {}
        Some(Json::String(t)) => {
            meta.insert("tokenizer.chat_template".into(), Value::String(t));
        }
        // A list of named templates: `default` is the template, the others keep their name.
        Some(Json::Array(list)) => {
            for item in &list {
                let name = item.get("name").and_then(Json::as_str);
                let body = item.get("template").and_then(Json::as_str);
                let (Some(name), Some(body)) = (name, body) else {
                    return Err(json_err("tokenizer_config.json", "chat_template", item));
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".to_string()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                meta.insert(key, Value::String(body.into()));
            }
        }
        Some(other) => return Err(json_err("tokenizer_config.json", "chat_template", &other)),
    }
    meta.insert(
        "tokenizer.huggingface.json".into(),
        Value::String(files.tokenizer_text.clone()),
    );

    let Some(gen) = &files.generation_config else {
        return Ok(());
    };
    let eog: Vec<Value> = match gen.get("eos_token_id") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|x| Value::U32(x as u32))
                    .ok_or_else(|| json_err("generation_config.json", "eos_token_id", v))
            })
            .collect::<Result<_>>()?,
        Some(v) => vec![Value::U32(
            v.as_u64()
                .ok_or_else(|| json_err("generation_config.json", "eos_token_id", v))?
                as u32,
        )],
    };
    if !eog.is_empty() {
        meta.insert(
            "tokenizer.ggml.eog_token_ids".into(),
            Value::Array(ValueType::U32, eog),
        );
    }
    for (hf, key) in [
        ("temperature", "general.sampling.temp"),
        ("top_p", "general.sampling.top_p"),
        ("min_p", "general.sampling.min_p"),
        ("repetition_penalty", "general.sampling.penalty_repeat"),
    ] {
        if let Some(v) = gen.get(hf).filter(|v| !v.is_null()) {
            let x = v
                .as_f64()
                .ok_or_else(|| json_err("generation_config.json", hf, v))?;
            meta.insert(key.into(), Value::F32(x as f32));
        }
    }
    if let Some(v) = gen.get("top_k").filter(|v| !v.is_null()) {
        let k = v
            .as_u64()
            .ok_or_else(|| json_err("generation_config.json", "top_k", v))?;
        meta.insert("general.sampling.top_k".into(), Value::I32(k as i32));
    }
    Ok(())
}
