//! A complete tiny model file for tests: random 2-layer Llama weights, a byte-level BPE vocabulary
//! (one token per byte, plus ChatML specials) and a ChatML template.

use std::path::{Path, PathBuf};

use tokenfab_loader::{Value, ValueType};
use tokenfab_models::testing::tiny_llama;

/// Token ids of the specials after the 256 byte tokens.
pub const IM_START: u32 = 256;
pub const IM_END: u32 = 257;
pub const VOCAB: usize = 258;

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the rest from U+0100 on.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("valid")
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Writes the tiny model to `dir/tiny.gguf` and returns its path.
pub fn write_tiny_model(dir: &Path) -> PathBuf {
    let mut w = tiny_llama("llama", VOCAB);
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(byte_char(b).to_string()))
        .collect();
    tokens.push(Value::String("<|im_start|>".into()));
    tokens.push(Value::String("<|im_end|>".into()));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    w.meta("tokenizer.ggml.model", Value::String("gpt2".into()))
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
        .meta("tokenizer.ggml.bos_token_id", Value::U32(IM_START))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(IM_END))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .meta("tokenizer.chat_template", Value::String(CHATML.into()));
    std::fs::create_dir_all(dir).expect("test dir");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, w.to_bytes()).expect("writing the tiny model");
    path
}
