//! Byte-level BPE (GPT-2 style), a port of llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-tokenized word is mapped byte by byte to GPT-2's printable characters, split into
//! characters, and the adjacent pair with the lowest merge rank is merged (leftmost first on a
//! tie) until no pair has a rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

/// GPT-2's `bytes_to_unicode`: byte -> printable char, and its inverse.
pub(crate) struct ByteMap {
    pub to_char: [char; 256],
    pub to_byte: HashMap<char, u8>,
}

pub(crate) fn byte_map() -> &'static ByteMap {
    static MAP: OnceLock<ByteMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u8 {
            let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
            to_char[b as usize] = if printable {
                char::from(b)
            } else {
                n += 1;
                char::from_u32(255 + n).expect("valid code point")
            };
        }
        let to_byte = to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        ByteMap { to_char, to_byte }
    })
}

/// Maps each byte of `word` to its GPT-2 character.
pub(crate) fn byte_encode(word: &str) -> String {
    let map = byte_map();
    word.bytes().map(|b| map.to_char[b as usize]).collect()
}

/// Merge ranks keyed by `"left right"` (the merge line itself), first occurrence wins.
#[derive(Debug, Default)]
pub(crate) struct Merges {
    ranks: HashMap<String, u32>,
}

impl Merges {
    pub fn new<'a>(lines: impl Iterator<Item = &'a str>) -> Self {
        let mut ranks = HashMap::new();
        for (i, line) in lines.enumerate() {
            // llama.cpp splits at the first space after the first byte; a line without one
            // becomes an empty pair that never matches.
            let key = match line.as_bytes().iter().skip(1).position(|&b| b == b' ') {
                Some(_) => line.to_string(),
                None => " ".to_string(),
            };
            ranks.entry(key).or_insert(i as u32);
        }
        Merges { ranks }
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }
}

/// One symbol of a word being merged: a byte range of the word, linked to its neighbours.
/// Shared with the SentencePiece tokenizer, which merges the same kind of list.
#[derive(Clone, Copy)]
pub(super) struct Symbol {
    pub start: usize,
    pub len: usize,
    pub prev: Option<usize>,
    pub next: Option<usize>,
}

/// One symbol per character of `text`, each linked to its neighbours.
pub(super) fn symbols(text: &str) -> Vec<Symbol> {
    let mut symbols = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: (start + len < text.len()).then_some(i + 1),
        });
    }
    symbols
}

/// A candidate merge: ordered by rank, then by the left symbol's index.
type Bigram = Reverse<(u32, usize, usize, usize, usize)>; // (rank, left, right, left_len, right_len)

/// Splits one (byte-encoded) word into the pieces BPE merges it into.
pub(crate) fn merge_word<'w>(merges: &Merges, word: &'w str, out: &mut Vec<&'w str>) {
    let mut symbols = symbols(word);
    let mut key = String::new();
    let mut queue: BinaryHeap<Bigram> = BinaryHeap::new();
    let text = |s: &Symbol| &word[s.start..s.start + s.len];
    let mut push =
        |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (ls, rs) = (&symbols[l], &symbols[r]);
            if let Some(rank) = merges.rank(&mut key, text(ls), text(rs)) {
                queue.push(Reverse((rank, l, r, ls.len, rs.len)));
            }
        };
    for i in 1..symbols.len() {
        push(&symbols, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(Reverse((_, l, r, l_len, r_len))) = queue.pop() {
        // Skip a pair one of whose sides has changed since it was queued (same start, so the
        // same lengths mean the same text).
        if symbols[l].len != l_len || symbols[r].len != r_len || l_len == 0 || r_len == 0 {
            continue;
        }
        symbols[l].len += r_len;
        symbols[r].len = 0;
        let next = symbols[r].next;
        symbols[l].next = next;
        if let Some(n) = next {
            symbols[n].prev = Some(l);
        }
        let prev = symbols[l].prev;
        push(&symbols, &mut queue, prev, Some(l));
        push(&symbols, &mut queue, Some(l), next);
    }
    out.extend(
        symbols
            .iter()
            .filter(|s| s.len > 0)
            .map(|s| &word[s.start..s.start + s.len]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let m = byte_map();
        assert_eq!(m.to_char[b' ' as usize], 'Ġ');
        assert_eq!(m.to_char[b'\n' as usize], 'Ċ');
        assert_eq!(m.to_char[b'a' as usize], 'a');
        assert_eq!(m.to_byte[&'Ġ'], b' ');
        assert_eq!(m.to_byte.len(), 256);
    }

    #[test]
    fn merges_lowest_rank_first() {
        let merges = Merges::new(["l o", "lo w", "e r", "low er"].into_iter());
        let mut out = Vec::new();
        merge_word(&merges, "lower", &mut out);
        assert_eq!(out, ["lower"]);
        out.clear();
        merge_word(&merges, "lowxer", &mut out);
        assert_eq!(out, ["low", "x", "er"]);
    }
}
