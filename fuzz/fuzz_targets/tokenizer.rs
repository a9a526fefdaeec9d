//! Arbitrary text and special-token soup through the default model's tokenizer: encoding never
//! panics, every id is in the vocabulary, decoding never panics, plain text (no specials parsed
//! or added) decodes back to itself, and shielded text (chat message contents) tokenizes exactly
//! as plain text does, whatever special-token spellings it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let tok = &tokenfab_fuzz::model().tokenizer;
    let text = tokenfab_fuzz::text(rest, flags & 4 != 0);
    let add_special = flags & 1 != 0;
    let parse_special = flags & 2 != 0;
    let ids = tok
        .encode(&text, add_special, parse_special)
        .expect("encoding a string never fails");
    let vocab = tok.vocab_size() as u32;
    assert!(ids.iter().all(|&i| i < vocab), "an id past the vocabulary");
    let back = tok.decode(&ids, false);
    // Plain text round-trips, except bytes the vocabulary has no token for: llama.cpp drops
    // those too (SmolLM2 lacks bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d).
    if !add_special && !parse_special && tokenfab_fuzz::all_bytes_in_vocab(tok, &text) {
        assert_eq!(back, text, "plain text must round-trip");
    }
    let _ = tok.decode(&ids, true);
    // Shielded, the text's special-token spellings stay text (a user's own U+FDD0 becomes U+FFFD).
    let shielded = tok.shield_specials(&text);
    let as_text = text.replace(tokenfab_loader::tokenizer::SHIELD, "\u{FFFD}");
    assert_eq!(
        tok.encode_shielded(&shielded, add_special).expect("encoding never fails"),
        tok.encode(&as_text, add_special, false).expect("encoding never fails"),
        "shielded text must tokenize as plain text"
    );
    // Arbitrary ids (as the /detokenize route gets them, after its range check).
    let raw: Vec<u32> = rest
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .map(|i| i % vocab)
        .collect();
    let _ = tok.decode(&raw, flags & 8 != 0);
    for &i in &raw {
        let _ = tok.token_bytes(i);
    }
});
