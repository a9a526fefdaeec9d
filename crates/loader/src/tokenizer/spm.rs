//! SentencePiece-style BPE over scores, a port of llama.cpp's `llm_tokenizer_spm_session`.
//!
//! The text (spaces already written as `▁`) is split into UTF-8 characters; the adjacent pair
//! whose concatenation is a token with the highest score is merged first (leftmost on a tie).
//! A final symbol that is not a token is resegmented along the merges that built it, and what
//! still is not a token is written as byte tokens (`<0xNN>`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::bpe::{symbols, Symbol};

/// What the SPM session needs from the vocabulary.
pub(crate) trait SpmVocab {
    fn text_to_token(&self, text: &str) -> Option<u32>;
    fn score(&self, id: u32) -> f32;
    fn byte_to_token(&self, byte: u8) -> Option<u32>;
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Greater = popped first: higher score, then smaller left index.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes `text` (whitespace already escaped) and appends the ids to `out`.
pub(crate) fn tokenize(vocab: &impl SpmVocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols = symbols(text);
    let mut queue = BinaryHeap::new();
    let mut rev_merge: HashMap<&str, (usize, usize)> = HashMap::new();
    for i in 1..symbols.len() {
        try_add(
            vocab,
            text,
            &symbols,
            &mut queue,
            &mut rev_merge,
            Some(i - 1),
            Some(i),
        );
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (b.left, b.right);
        if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != b.size {
            continue;
        }
        symbols[l].len += symbols[r].len;
        symbols[r].len = 0;
        let next = symbols[r].next;
        symbols[l].next = next;
        if let Some(n) = next {
            symbols[n].prev = Some(l);
        }
        let prev = symbols[l].prev;
        try_add(
            vocab,
            text,
            &symbols,
            &mut queue,
            &mut rev_merge,
            prev,
            Some(l),
        );
        try_add(
            vocab,
            text,
            &symbols,
            &mut queue,
            &mut rev_merge,
            Some(l),
            next,
        );
    }
    let mut i = if symbols.is_empty() { None } else { Some(0) };
    while let Some(idx) = i {
        let s = symbols[idx];
        resegment(vocab, text, &symbols, &rev_merge, s.start, s.len, out);
        i = s.next;
    }
}

fn try_add<'t>(
    vocab: &impl SpmVocab,
    text: &'t str,
    symbols: &[Symbol],
    queue: &mut BinaryHeap<Bigram>,
    rev_merge: &mut HashMap<&'t str, (usize, usize)>,
    l: Option<usize>,
    r: Option<usize>,
) {
    let (Some(l), Some(r)) = (l, r) else { return };
    let start = symbols[l].start;
    let size = symbols[l].len + symbols[r].len;
    let piece = &text[start..start + size];
    let Some(id) = vocab.text_to_token(piece) else {
        return;
    };
    queue.push(Bigram {
        left: l,
        right: r,
        score: vocab.score(id),
        size,
    });
    rev_merge.insert(piece, (l, r));
}

fn resegment(
    vocab: &impl SpmVocab,
    text: &str,
    symbols: &[Symbol],
    rev_merge: &HashMap<&str, (usize, usize)>,
    start: usize,
    len: usize,
    out: &mut Vec<u32>,
) {
    let piece = &text[start..start + len];
    if let Some(id) = vocab.text_to_token(piece) {
        out.push(id);
        return;
    }
    match rev_merge.get(piece) {
        None => out.extend(piece.bytes().filter_map(|b| vocab.byte_to_token(b))),
        Some(&(l, r)) => {
            // The halves as they were when this pair was queued: `l` starts the piece and `r`
            // ends it.
            let (ls, rs) = (symbols[l].start, symbols[r].start);
            resegment(vocab, text, symbols, rev_merge, ls, rs - ls, out);
            resegment(vocab, text, symbols, rev_merge, rs, start + len - rs, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V(HashMap<String, (u32, f32)>);
    impl SpmVocab for V {
        fn text_to_token(&self, t: &str) -> Option<u32> {
            self.0.get(t).map(|v| v.0)
        }
        fn score(&self, id: u32) -> f32 {
            self.0.values().find(|v| v.0 == id).unwrap().1
        }
        fn byte_to_token(&self, b: u8) -> Option<u32> {
            self.text_to_token(&format!("<0x{b:02X}>"))
        }
    }

    #[test]
    fn merges_by_score_with_byte_fallback() {
        let mut m = HashMap::new();
        for (i, (t, s)) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("▁a", -0.5),
            ("ab", -0.1),
            ("<0xC3>", 0.0),
            ("<0xA9>", 0.0),
        ]
        .iter()
        .enumerate()
        {
            m.insert(t.to_string(), (i as u32, *s));
        }
        let v = V(m);
        let mut out = Vec::new();
        tokenize(&v, "▁ab", &mut out);
        // "ab" (-0.1) beats "▁a" (-0.5).
        assert_eq!(out, [0, 4]);
        out.clear();
        tokenize(&v, "▁aé", &mut out);
        assert_eq!(out, [3, 5, 6]);
    }
}
