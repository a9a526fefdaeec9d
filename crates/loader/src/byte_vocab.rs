//! A byte-level vocabulary (one token per byte, GPT-2's byte-to-character map) written into GGUF
//! metadata: what dummy weights, tiny test models and the fuzz targets tokenize with.

use crate::{GgufWriter, Value, ValueType};

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others take the
/// characters from U+0100 on, in byte order.
pub fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("below U+0200")
}

/// Adds a byte-level BPE vocabulary of `vocab` tokens (256 bytes, ChatML specials, fillers) and a
/// ChatML template. Token 256 is `<|im_start|>` (BOS), 257 `<|im_end|>` (EOS).
pub fn byte_level_tokenizer(w: &mut GgufWriter, vocab: usize) {
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(gpt2_byte_char(b).to_string()))
        .collect();
    tokens.push(Value::String("<|im_start|>".into()));
    tokens.push(Value::String("<|im_end|>".into()));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    for i in tokens.len()..vocab {
        tokens.push(Value::String(format!("<|filler_{i}|>")));
        types.push(Value::I32(1));
    }
    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
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
        .meta("tokenizer.ggml.bos_token_id", Value::U32(256))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(257))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .meta("tokenizer.chat_template", Value::String(CHATML.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        assert_eq!(gpt2_byte_char(b'A'), 'A');
        assert_eq!(gpt2_byte_char(0), '\u{100}');
        assert_eq!(gpt2_byte_char(b' '), '\u{120}');
        assert_eq!(gpt2_byte_char(0x06), '\u{106}');
        let all: std::collections::HashSet<char> = (0..=255u8).map(gpt2_byte_char).collect();
        assert_eq!(all.len(), 256);
    }
}
