//! What the fuzz targets share: the tokenizer and chat template they run against, loaded once.
//!
//! The default model's (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, or `$TOKENFAB_MODEL`) when the
//! file is there; otherwise a small in-memory byte-level vocabulary with ChatML specials.

use std::sync::OnceLock;

use tokenfab_loader::{ChatTemplate, Gguf, GgufWriter, Tokenizer, Value, ValueType};

pub struct Model {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

/// Special tokens and fragments of them, for "special-token soup" inputs.
pub const SOUP: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>assistant\n",
    "<",
    "|",
    ">",
    "<|",
    "|>",
    "im_",
    "start",
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "a",
    "The",
    " capital",
    "é",
    "\u{301}",
    "中文",
    "😀",
    "\u{200d}",
    "\u{0}",
    "\u{fffd}",
    "'s",
    "123",
    "<s>",
    "</s>",
    "[INST]",
    "{{",
    "}}",
];

fn model_path() -> std::path::PathBuf {
    std::env::var_os("TOKENFAB_MODEL").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        Into::into,
    )
}

/// A byte-level vocabulary of 256 bytes plus `<|im_start|>` (256) and `<|im_end|>` (257) with a
/// ChatML template, as a GGUF held in memory.
fn tiny_gguf() -> Gguf {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256u32;
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            };
            Value::String(c.to_string())
        })
        .collect();
    tokens.push(Value::String("<|im_start|>".into()));
    tokens.push(Value::String("<|im_end|>".into()));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String("gpt-2".into()))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, tokens),
        )
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )
        .meta(
            "tokenizer.ggml.merges",
            Value::Array(ValueType::String, vec![]),
        )
        .meta("tokenizer.ggml.bos_token_id", Value::U32(256))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(257))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .meta("tokenizer.chat_template", Value::String(chatml.into()));
    Gguf::from_bytes(w.to_bytes()).expect("the tiny vocabulary parses")
}

/// The shared model (tokenizer and template), loaded on first use.
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let path = model_path();
        let g = if path.exists() {
            Gguf::open(&path).expect("the default model parses")
        } else {
            tiny_gguf()
        };
        let tokenizer = Tokenizer::from_gguf(&g).expect("tokenizer");
        let template = ChatTemplate::from_gguf(&g, &tokenizer).expect("template");
        Model {
            tokenizer,
            template,
        }
    })
}

/// Text from fuzz bytes: as UTF-8 (lossy), or, when `soup`, each byte picking a piece of [`SOUP`]
/// or standing for itself.
pub fn text(data: &[u8], soup: bool) -> String {
    if !soup {
        return String::from_utf8_lossy(data).into_owned();
    }
    let mut s = String::new();
    for &b in data {
        match SOUP.get(b as usize) {
            Some(p) => s.push_str(p),
            None => s.push(char::from(b)),
        }
    }
    s
}

/// Whether every byte of `text` has its byte-level token in the vocabulary (GPT-2's byte map).
pub fn all_bytes_in_vocab(tok: &tokenfab_loader::Tokenizer, text: &str) -> bool {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    text.bytes().all(|b| {
        let c = if printable(b) {
            b as char
        } else {
            let n = (0..b).filter(|&x| !printable(x)).count() as u32;
            char::from_u32(256 + n).expect("valid")
        };
        tok.token_to_id(&c.to_string()).is_some()
    })
}
