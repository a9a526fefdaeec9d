//! Token pieces and llama.cpp's detokenization clean-up.

use super::{attr, bpe, Model, TokenData};

/// The bytes of one token's piece (llama.cpp `token_to_piece` with `special = true`).
pub(super) fn piece_of(model: &Model, t: &TokenData) -> Vec<u8> {
    if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return t.text.as_bytes().to_vec();
    }
    if t.attr & attr::NORMAL != 0 {
        let byte_level = match model {
            Model::Spm => false,
            Model::Bpe { .. } => true,
            Model::Hf(m) => m.byte_level,
        };
        return match byte_level {
            false => t.text.replace('\u{2581}', " ").into_bytes(),
            true => {
                let map = &bpe::byte_map().to_byte;
                let mut out = Vec::with_capacity(t.text.len());
                for c in t.text.chars() {
                    match map.get(&c) {
                        Some(&b) => out.push(b),
                        // Not a GPT-2 byte character: llama.cpp writes an `[UNK_BYTE_..]`
                        // marker; the character itself is more useful.
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
        };
    }
    if t.attr & attr::BYTE != 0 {
        let hex = t
            .text
            .get(3..5)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        return hex.map(|b| vec![b]).unwrap_or_default();
    }
    Vec::new()
}

/// llama.cpp's `clean_up_tokenization_spaces`: " ." -> ".", " ' " -> "'", " 's" -> "'s"...
pub(super) fn clean_up_spaces(text: &mut Vec<u8>) {
    let mut total = text.len();
    // " ?", " !", " .", " ,"
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // " ' "
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // " 's", " 'm", " 're", " 've"
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let contraction = match text[i + 1] {
                b's' | b'm' => true,
                b'r' | b'v' => i + 2 < n && text[i + 2] == b'e',
                _ => false,
            };
            if contraction {
                total -= 1;
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}
