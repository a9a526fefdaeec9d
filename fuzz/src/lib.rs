//! What the fuzz targets share: the tokenizer and chat template they run against, loaded once.
//!
//! The default model's (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, or `$TOKENFAB_MODEL`) when the
//! file is there; otherwise a small in-memory byte-level vocabulary with ChatML specials.

use std::sync::OnceLock;

use tokenfab_loader::byte_vocab::{byte_level_tokenizer, gpt2_byte_char};
use tokenfab_loader::{ChatTemplate, Gguf, GgufWriter, Tokenizer, Value};

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
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()));
    byte_level_tokenizer(&mut w, 258);
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

/// A second copy of the shared tokenizer behind an `Arc` (what a grammar compiler holds).
pub fn shared_tokenizer() -> std::sync::Arc<Tokenizer> {
    static T: OnceLock<std::sync::Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let path = model_path();
        let g = if path.exists() {
            Gguf::open(&path).expect("the default model parses")
        } else {
            tiny_gguf()
        };
        std::sync::Arc::new(Tokenizer::from_gguf(&g).expect("tokenizer"))
    })
    .clone()
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
pub fn all_bytes_in_vocab(tok: &Tokenizer, text: &str) -> bool {
    text.bytes()
        .all(|b| tok.token_to_id(&gpt2_byte_char(b).to_string()).is_some())
}
