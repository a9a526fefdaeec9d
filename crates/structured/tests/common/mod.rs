//! Shared by the integration tests: the default model's tokenizer, a seeded RNG, random walks
//! through masks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use tokenfab_loader::{Gguf, Tokenizer};
use tokenfab_structured::{Grammars, Limits, RequestMatcher};

pub fn default_model() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return path;
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .output()
        .expect("cannot run scripts/fetch-model.sh");
    assert!(out.status.success(), "fetch-model.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn gguf() -> &'static Gguf {
    static G: OnceLock<Gguf> = OnceLock::new();
    G.get_or_init(|| Gguf::open(default_model()).unwrap())
}

pub fn tokenizer() -> Arc<Tokenizer> {
    static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(Tokenizer::from_gguf(gguf()).unwrap()))
        .clone()
}

/// The default model's grammars, built once per test binary.
pub fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let tok = tokenizer();
        let n = tok.vocab_size();
        Grammars::new(tok, n, Limits::default()).unwrap()
    })
}

/// xorshift64*: a fixed-seed generator for reproducible walks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The text of `tokens` as the matcher saw it (raw token bytes).
pub fn text_of(tokens: &[u32]) -> String {
    let tok = tokenizer();
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| tok.token_piece(t).to_vec())
        .collect();
    String::from_utf8(bytes).expect("a walk's text is UTF-8")
}

/// Samples from the mask until an end-of-generation token or `max_steps`: returns the tokens
/// (without the final EOG) and whether the walk ended. Half the steps pick among allowed
/// tokens that close something (quote, bracket, comma, EOG), so walks end.
pub fn walk(m: &mut RequestMatcher, rng: &mut Rng, max_steps: usize) -> (Vec<u32>, bool) {
    walk_with(&tokenizer(), m, rng, max_steps)
}

/// [`walk`] over any tokenizer's vocabulary.
pub fn walk_with(
    tok: &Tokenizer,
    m: &mut RequestMatcher,
    rng: &mut Rng,
    max_steps: usize,
) -> (Vec<u32>, bool) {
    let mut out = Vec::new();
    for _ in 0..max_steps {
        let allowed = m.compute_mask().unwrap().allowed();
        assert!(!allowed.is_empty());
        let closing: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|&t| {
                tok.is_eog(t)
                    || tok
                        .token_piece(t)
                        .iter()
                        .any(|b| matches!(b, b'"' | b'}' | b']' | b','))
            })
            .collect();
        let t = if !closing.is_empty() && rng.below(2) == 0 {
            closing[rng.below(closing.len())]
        } else {
            allowed[rng.below(allowed.len())]
        };
        m.consume(t).unwrap();
        if tok.is_eog(t) {
            return (out, true);
        }
        out.push(t);
    }
    (out, false)
}

/// Feeds `text`'s tokens to the matcher, checking each was allowed.
pub fn force(m: &mut RequestMatcher, text: &str) -> Vec<u32> {
    let ids = tokenizer().encode(text, false, false).unwrap();
    for &t in &ids {
        assert!(
            m.compute_mask().unwrap().is_allowed(t),
            "token {t} of {text:?} not allowed"
        );
        m.consume(t).unwrap();
    }
    ids
}
