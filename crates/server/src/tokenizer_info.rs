//! `GET /tokenizer_info`: the tokenizer's configuration as vLLM serves it (the fields of a Hugging
//! Face `tokenizer_config.json`, plus the chat template), so that clients such as lm-eval's
//! `tokenizer_backend=remote` need no tokenizer files: they tokenize through `/tokenize` and read
//! the special tokens here.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use tokenfab_loader::{ChatTemplate, Tokenizer};

use crate::AppState;

pub async fn tokenizer_info(State(s): State<AppState>) -> Json<Value> {
    let e = &s.engine;
    Json(describe(
        e.tokenizer(),
        e.chat_template(),
        e.info().context_len,
    ))
}

/// The `tokenizer_config.json` fields a GGUF file determines.
fn describe(t: &Tokenizer, template: Option<&ChatTemplate>, context_len: usize) -> Value {
    // The Hugging Face class a converter builds for each GGUF vocabulary kind.
    let class = match t.kind() {
        "llama" => "LlamaTokenizerFast",
        "huggingface" => "PreTrainedTokenizerFast",
        _ => "GPT2TokenizerFast",
    };
    let mut m = Map::new();
    m.insert("tokenizer_class".into(), class.into());
    m.insert("add_bos_token".into(), t.add_bos().into());
    m.insert("add_eos_token".into(), t.add_eos().into());
    m.insert("model_max_length".into(), context_len.into());
    let named = [
        ("bos_token", t.bos_id()),
        ("eos_token", t.eos_id()),
        ("pad_token", t.pad_id()),
        ("unk_token", t.unk_id()),
    ];
    for (key, id) in named {
        if let Some(text) = id.and_then(|i| t.id_to_token(i)) {
            m.insert(key.into(), text.into());
        }
    }
    let added: Map<String, Value> = (0..t.vocab_size() as u32)
        .filter(|&id| t.is_special(id))
        .map(|id| {
            let content = t.id_to_token(id).unwrap_or_default();
            let entry = json!({"content": content, "lstrip": false, "normalized": false,
                               "rstrip": false, "single_word": false, "special": true});
            (id.to_string(), entry)
        })
        .collect();
    m.insert("added_tokens_decoder".into(), added.into());
    if let Some(tpl) = template {
        m.insert("chat_template".into(), tpl.source().into());
    }
    Value::Object(m)
}
