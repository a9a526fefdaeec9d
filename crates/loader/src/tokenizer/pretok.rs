//! Pre-tokenization of byte-level BPE vocabularies: the split regexes llama.cpp uses for each
//! `tokenizer.ggml.pre` value (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`), applied in sequence.
//!
//! Each regex splits every piece produced by the previous one; the matches and the text between
//! them both become pieces (llama.cpp `unicode_regex_split_stl`). llama.cpp matches the Unicode
//! categories through a "collapsed" text (one placeholder byte per category) and non-ASCII
//! whitespace as `\v`; running the same regexes with Unicode classes on the real text gives the
//! same pieces, because the placeholders match exactly the characters of their category.

use std::ops::Range;

use fancy_regex::Regex;

use crate::{Error, Result};

/// The English contractions, spelled case-insensitively the way llama.cpp writes them.
const CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// GPT-2's own regex.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// How one `tokenizer.ggml.pre` value pre-tokenizes, and the flags llama.cpp ties to it.
#[derive(Debug, Clone)]
pub(crate) struct PreConfig {
    /// The split regexes, applied in sequence.
    pub regexes: Vec<String>,
    /// A word that is already a token is taken whole, without merges (llama 3 and friends).
    pub ignore_merges: bool,
    /// `clean_up_tokenization_spaces` when decoding.
    pub clean_spaces: bool,
    /// The default of `add_bos_token` when the file does not say.
    pub add_bos: bool,
}

fn llama3_like(numbers: &str) -> String {
    format!(
        r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{numbers}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
}

impl PreConfig {
    fn new(regexes: &[&str]) -> Self {
        PreConfig {
            regexes: regexes.iter().map(|s| s.to_string()).collect(),
            ignore_merges: false,
            clean_spaces: true,
            add_bos: false,
        }
    }

    fn owned(regexes: Vec<String>) -> Self {
        PreConfig {
            regexes,
            ignore_merges: false,
            clean_spaces: true,
            add_bos: false,
        }
    }

    fn no_clean(mut self) -> Self {
        self.clean_spaces = false;
        self
    }

    /// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: used when the file names no pre-tokenizer.
    pub fn default_bpe() -> Self {
        PreConfig::new(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"])
    }

    /// The configuration for a `tokenizer.ggml.pre` value; `None` when this build does not know
    /// it (the caller falls back to [`PreConfig::default_bpe`] and says so in the log).
    pub fn for_pre(pre: &str) -> Option<Self> {
        let cfg = match pre {
            "default" => Self::default_bpe(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2" | "jina-v5-nano" => PreConfig {
                ignore_merges: true,
                add_bos: true,
                ..Self::owned(vec![llama3_like(r"\p{N}{1,3}")])
            },
            "dbrx" | "smaug-bpe" => Self::owned(vec![llama3_like(r"\p{N}{1,3}")]),
            "deepseek-llm" => PreConfig::new(&[
                "[\r\n]",
                "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
                "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
                "\\s+$",
                "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
                "\\p{N}+",
            ])
            .no_clean(),
            "deepseek-coder" => PreConfig::new(&[
                "[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
                r"\p{N}",
            ])
            .no_clean(),
            "falcon" => PreConfig::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                PreConfig::new(&[r"\p{N}", GPT2])
            }
            "command-r" | "smollm" => PreConfig::new(&[r"\p{N}", GPT2]).no_clean(),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
            | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4"
            | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => PreConfig::new(&[GPT2]),
            "trillion" | "granite-docling" => PreConfig::new(&[GPT2]).no_clean(),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => {
                let cfg = Self::owned(vec![llama3_like(r"\p{N}")]);
                if pre == "megrez" {
                    cfg
                } else {
                    cfg.no_clean()
                }
            }
            "stablelm2" => Self::owned(vec![llama3_like(r"\p{N}")]),
            "qwen35" => Self::owned(vec![format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+|\p{{N}}| ?[^\s\p{{L}}\p{{M}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )])
            .no_clean(),
            "chatglm-bpe" => Self::owned(vec![llama3_like(r"\p{N}{1,3}")]),
            "glm4" | "glm5" => PreConfig {
                ignore_merges: true,
                ..Self::owned(vec![llama3_like(r"\p{N}{1,3}")])
            },
            "poro-chat" => PreConfig::new(&[r" ?[^(\s|.,!?…。，、।۔،)]+"]).no_clean(),
            "bloom" | "gpt3-finnish" => PreConfig::new(&[r" ?[^(\s|.,!?…。，、।۔،)]+"]),
            "viking" => PreConfig::new(&[r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"]).no_clean(),
            "seed-coder" => PreConfig::owned(vec![format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1}}| ?[^\s\p{{L}}\p{{N}}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
            )])
            .no_clean(),
            "grok-2" | "laguna" | "hunyuan" | "solar-open" => {
                PreConfig::owned(vec![llama3_like(r"\p{N}")]).no_clean()
            }
            "minicpm5" => PreConfig {
                ignore_merges: true,
                ..Self::owned(vec![r"\p{N}{1,3}".to_string(), llama3_like(r"\p{N}+")])
            },
            _ => return None,
        };
        Some(cfg)
    }
}

/// The compiled split regexes of one vocabulary.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(cfg: &PreConfig) -> Result<Self> {
        let regexes = cfg
            .regexes
            .iter()
            .map(|r| {
                Regex::new(r).map_err(|e| Error::Tokenizer(format!("bad split regex `{r}`: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Splits `text` into pieces (byte ranges covering all of `text`, in order).
    pub fn split(&self, text: &str) -> Vec<Range<usize>> {
        // llama.cpp's `\s` does not see non-ASCII whitespace; it maps it to `\v`, which the
        // regexes treat as whitespace. Unicode `\s` here sees the same set (Unicode White_Space).
        let mut pieces: Vec<Range<usize>> = std::iter::once(0..text.len()).collect();
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                split_one(re, text, piece, &mut next);
            }
            pieces = next;
        }
        pieces.retain(|r| !r.is_empty());
        pieces
    }
}

fn split_one(re: &Regex, text: &str, piece: Range<usize>, out: &mut Vec<Range<usize>>) {
    let sub = &text[piece.clone()];
    let base = piece.start;
    let mut last = 0;
    let mut pos = 0;
    while pos <= sub.len() {
        let m = match re.find_from_pos(sub, pos) {
            Ok(Some(m)) => m,
            // A backtracking limit (pathological input) leaves the rest as one piece.
            Ok(None) | Err(_) => break,
        };
        if m.end() == m.start() {
            // An empty match: step one character forward, as a regex iterator does.
            pos = m.end() + sub[m.end()..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        if m.start() > last {
            out.push(base + last..base + m.start());
        }
        out.push(base + m.start()..base + m.end());
        last = m.end();
        pos = m.end();
    }
    if last < sub.len() {
        out.push(base + last..base + sub.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces<'a>(pre: &str, text: &'a str) -> Vec<&'a str> {
        let cfg = PreConfig::for_pre(pre).unwrap();
        let p = PreTokenizer::new(&cfg).unwrap();
        p.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_splits_words_and_spaces() {
        assert_eq!(
            pieces("gpt-2", "Hello  world's 123"),
            ["Hello", " ", " world", "'s", " 123"]
        );
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(pieces("smollm", "ab 123"), ["ab", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        assert_eq!(
            pieces("llama-bpe", "x 12345\n\n y"),
            ["x", " ", "123", "45", "\n\n", " y"]
        );
    }

    #[test]
    fn every_known_pre_compiles() {
        for pre in [
            "default",
            "llama-bpe",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
            "qwen35",
            "poro-chat",
            "seed-coder",
            "minicpm5",
        ] {
            PreTokenizer::new(&PreConfig::for_pre(pre).unwrap()).unwrap();
        }
        assert!(PreConfig::for_pre("no-such-pre").is_none());
    }
}
