//! Unit tests on small in-memory vocabularies.

use super::*;
use crate::{GgufWriter, ValueType};

fn strings(v: &[&str]) -> Value {
    Value::Array(
        ValueType::String,
        v.iter().map(|s| Value::String(s.to_string())).collect(),
    )
}

/// A byte-level BPE vocabulary: the 256 GPT-2 byte characters, a few merges and specials.
pub(super) fn bpe_tokenizer(pre: &str, add_bos: bool) -> Tokenizer {
    let map = bpe::byte_map();
    let mut toks: Vec<String> = (0..=255u8)
        .map(|b| map.to_char[b as usize].to_string())
        .collect();
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "r l", "Ġwo rl", "Ġworl d",
    ];
    for m in merges {
        toks.push(m.replace(' ', ""));
    }
    let specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool>"];
    toks.extend(specials.iter().map(|s| s.to_string()));
    let n = toks.len();
    let mut types = vec![Value::I32(1); n];
    types[n - 4] = Value::I32(3);
    types[n - 3] = Value::I32(3);
    types[n - 2] = Value::I32(3);
    types[n - 1] = Value::I32(4);
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    let bytes = GgufWriter::new()
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String(pre.into()))
        .meta("tokenizer.ggml.tokens", strings(&refs))
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )
        .meta("tokenizer.ggml.merges", strings(&merges))
        .meta("tokenizer.ggml.bos_token_id", Value::U32((n - 2) as u32))
        .meta("tokenizer.ggml.eos_token_id", Value::U32((n - 3) as u32))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(add_bos))
        .to_bytes();
    Tokenizer::from_gguf(&Gguf::from_bytes(bytes).unwrap()).unwrap()
}

#[test]
fn bpe_merges_words_and_round_trips() {
    let t = bpe_tokenizer("gpt-2", false);
    let hello = t.token_to_id("hello").unwrap();
    let world = t.token_to_id("Ġworld").unwrap();
    assert_eq!(
        t.encode("hello world", true, false).unwrap(),
        [hello, world]
    );
    assert_eq!(t.decode(&[hello, world], false), "hello world");
    assert_eq!(t.token_bytes(world), b" world");
    // Bytes with no merge come out one per byte, and decode back exactly.
    let ids = t.encode("héllo\n", false, false).unwrap();
    assert_eq!(t.decode(&ids, false), "héllo\n");
}

#[test]
fn special_tokens_parse_only_when_asked() {
    let t = bpe_tokenizer("smollm", false);
    let start = t.token_to_id("<|im_start|>").unwrap();
    let end = t.token_to_id("<|im_end|>").unwrap();
    let ids = t
        .encode("<|im_start|>hello<|im_end|>", false, true)
        .unwrap();
    assert_eq!(ids, [start, t.token_to_id("hello").unwrap(), end]);
    let plain = t.encode("<|im_start|>", false, false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&start));
    // User-defined tokens are always cut out.
    let tool = t.token_to_id("<tool>").unwrap();
    assert_eq!(t.encode("<tool>", false, false).unwrap(), [tool]);
    // Control tokens decode to their text unless skipped.
    assert_eq!(t.decode(&ids, false), "<|im_start|>hello<|im_end|>");
    assert_eq!(t.decode(&ids, true), "hello");
}

#[test]
fn bos_is_added_only_when_the_model_says_so() {
    let with = bpe_tokenizer("gpt-2", true);
    let bos = with.bos_id().unwrap();
    assert!(with.add_bos());
    assert_eq!(with.encode("hello", true, false).unwrap()[0], bos);
    assert_eq!(with.encode("hello", false, false).unwrap().len(), 1);
    let without = bpe_tokenizer("gpt-2", false);
    assert_eq!(without.encode("hello", true, false).unwrap().len(), 1);
    assert!(without.encode("", true, false).unwrap().is_empty());
}

#[test]
fn end_of_generation_tokens_by_name_and_by_id() {
    let t = bpe_tokenizer("gpt-2", false);
    assert!(t.is_eog(t.eos_id().unwrap()));
    assert!(t.is_eog(t.token_to_id("<|im_end|>").unwrap()));
    assert!(t.is_eog(t.token_to_id("<|endoftext|>").unwrap()));
    assert!(!t.is_eog(t.token_to_id("hello").unwrap()));
    assert!(!t.is_eog(u32::MAX));
}

#[test]
fn unknown_pre_falls_back_instead_of_failing() {
    let t = bpe_tokenizer("some-future-model", false);
    assert_eq!(
        t.decode(&t.encode("hello world 1234", false, false).unwrap(), false),
        "hello world 1234"
    );
}

#[test]
fn out_of_range_ids_are_ignored() {
    let t = bpe_tokenizer("gpt-2", false);
    assert_eq!(t.decode(&[u32::MAX], false), "");
    assert!(t.token_bytes(u32::MAX).is_empty());
    assert_eq!(t.id_to_token(u32::MAX), None);
}

fn spm_tokenizer() -> Tokenizer {
    let mut toks = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    for b in 0..=255u8 {
        toks.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in [
        ("▁", -1.0),
        ("h", -3.0),
        ("i", -3.0),
        ("hi", -2.0),
        ("▁hi", -1.5),
        ("!", -3.0),
    ] {
        toks.push(t.into());
        types.push(1);
        scores.push(s);
    }
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    let bytes = GgufWriter::new()
        .meta("tokenizer.ggml.model", Value::String("llama".into()))
        .meta("tokenizer.ggml.tokens", strings(&refs))
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        )
        .meta(
            "tokenizer.ggml.scores",
            Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
        )
        .meta("tokenizer.ggml.bos_token_id", Value::U32(1))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(2))
        .to_bytes();
    Tokenizer::from_gguf(&Gguf::from_bytes(bytes).unwrap()).unwrap()
}

#[test]
fn spm_space_prefix_scores_and_byte_fallback() {
    let t = spm_tokenizer();
    let hi = t.token_to_id("▁hi").unwrap();
    let bang = t.token_to_id("!").unwrap();
    assert!(t.add_bos());
    assert_eq!(t.encode("hi!", true, false).unwrap(), [1, hi, bang]);
    // "é" is not a token: its UTF-8 bytes come out as byte tokens.
    let ids = t.encode("hié", false, false).unwrap();
    assert_eq!(ids, [hi, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(t.decode(&ids, true), "hié");
    assert_eq!(t.decode(&[1, hi, bang, 2], true), " hi!");
    assert!(t.is_eog(2));
}

#[test]
fn clean_up_spaces_like_llama_cpp() {
    let mut b = b"a , b . it 's ' x ' 't".to_vec();
    clean_up_spaces(&mut b);
    assert_eq!(String::from_utf8(b).unwrap(), "a, b. it's'x''t");
}

#[test]
fn rejects_unsupported_models() {
    let bytes = GgufWriter::new()
        .meta("tokenizer.ggml.model", Value::String("bert".into()))
        .meta("tokenizer.ggml.tokens", strings(&["a"]))
        .to_bytes();
    let err = Tokenizer::from_gguf(&Gguf::from_bytes(bytes).unwrap()).unwrap_err();
    assert!(err.to_string().contains("bert"), "{err}");
}
