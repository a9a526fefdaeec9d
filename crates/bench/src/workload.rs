//! What the benchmark sends: prompts (synthetic of exact token length, or a JSONL dataset),
//! a seeded random source, and request arrival times.

use std::path::Path;

use serde::Deserialize;

use crate::client::Target;
use crate::BenchError;

/// One prompt to send. `token_ids` is set when the prompt was built with the server's
/// tokenizer: `/v1/completions` then receives the ids themselves, so the length is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub token_ids: Option<Vec<u32>>,
    /// Prompt length in tokens (exact with a tokenizer, else estimated as one per word).
    pub input_len: usize,
    /// `max_tokens` to ask for.
    pub output_len: usize,
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    Synthetic {
        input_len: usize,
        output_len: usize,
    },
    /// JSONL rows `{"prompt": "...", "output_len": N}` (`output_len` defaults to the given one).
    Dataset {
        path: std::path::PathBuf,
        output_len: usize,
    },
}

/// SplitMix64: small, fast, and the same sequence for the same seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_B00C)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` is safe.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller.
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Gamma(shape, scale) by Marsaglia and Tsang; shape < 1 through the boost
    /// `Gamma(shape) = Gamma(shape + 1) * U^(1/shape)`.
    pub fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0, scale) * self.unit().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }
}

/// Seconds until the next arrival at `rate` requests/s. Burstiness 1 is a Poisson process;
/// other values draw gaps from Gamma(shape = burstiness, scale = 1 / (rate * burstiness)), the
/// mean gap staying 1/rate (vLLM's `--burstiness`): below 1 burstier, above 1 more regular.
/// An infinite rate sends everything at once.
pub fn next_gap_s(rng: &mut Rng, rate: f64, burstiness: f64) -> f64 {
    if !rate.is_finite() {
        return 0.0;
    }
    rng.gamma(burstiness, 1.0 / (rate * burstiness))
}

/// Common English words that are one token each (with their leading space) in GPT-2-style,
/// Llama and SentencePiece vocabularies: the word-count estimate of a prompt's length.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "year",
    "city", "water", "house", "world", "day", "life", "work", "system", "part", "number", "way",
    "place", "group", "school", "state", "family", "power", "money", "light", "river", "road",
    "music", "game", "book", "table", "line", "field", "market", "story", "child", "night",
    "small", "large", "new", "old", "good", "long", "great", "little", "high", "open", "early",
    "young", "black", "white", "red", "green", "blue", "cold", "warm",
];

/// `n` random words from [`WORDS`], space separated.
pub fn random_words(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s
}

/// Builds `count` synthetic prompts of `input_len` tokens. With the server's `/tokenize` the
/// length is exact: random words are tokenized and the ids cut to `input_len` (the text is the
/// detokenized ids, or the words when `/detokenize` is missing); without it, one token per word.
/// Returns the prompts and whether their lengths are exact.
pub async fn synthetic_prompts(
    target: &Target,
    rng: &mut Rng,
    count: usize,
    input_len: usize,
    output_len: usize,
) -> Result<(Vec<Prompt>, bool), BenchError> {
    let mut out = Vec::with_capacity(count);
    let mut exact = true;
    for _ in 0..count {
        let mut words = input_len + input_len / 4 + 8;
        let mut text = random_words(rng, words);
        let ids = if exact {
            target.tokenize(&text).await?
        } else {
            None
        };
        let Some(mut ids) = ids else {
            exact = false;
            let text = random_words(rng, input_len);
            out.push(Prompt {
                text,
                token_ids: None,
                input_len,
                output_len,
            });
            continue;
        };
        for _ in 0..8 {
            if ids.len() >= input_len {
                break;
            }
            words *= 2;
            text = random_words(rng, words);
            ids = target.tokenize(&text).await?.unwrap_or_default();
        }
        if ids.len() < input_len {
            return Err(BenchError::Protocol {
                url: format!("{}/tokenize", target.base),
                msg: format!("{words} words gave only {} tokens", ids.len()),
            });
        }
        ids.truncate(input_len);
        // Without /detokenize the chat endpoint gets the first `input_len` words (an estimate;
        // the usage chunk reports the true count); /v1/completions gets the ids, exact.
        let text = match target.detokenize(&ids).await? {
            Some(t) => t,
            None => text
                .split(' ')
                .take(input_len)
                .collect::<Vec<_>>()
                .join(" "),
        };
        out.push(Prompt {
            text,
            token_ids: Some(ids),
            input_len,
            output_len,
        });
    }
    Ok((out, exact))
}

/// One row of a JSONL dataset.
#[derive(Deserialize)]
pub struct DatasetRow {
    pub prompt: String,
    /// `max_tokens` of this row (else the run's `--output-len`).
    pub output_len: Option<usize>,
}

/// Reads the `{"prompt", "output_len"}` rows of a JSONL file (blank lines skipped); an empty
/// file is an error.
pub fn read_dataset(path: &Path) -> Result<Vec<DatasetRow>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        rows.push(serde_json::from_str(line).map_err(|e| BenchError::Dataset {
            path: path.display().to_string(),
            line: i + 1,
            msg: e.to_string(),
        })?);
    }
    if rows.is_empty() {
        return Err(BenchError::Dataset {
            path: path.display().to_string(),
            line: 0,
            msg: "no rows".into(),
        });
    }
    Ok(rows)
}

/// Reads `{"prompt", "output_len"}` JSONL rows; input lengths come from the server's tokenizer
/// when it has one (else one token per whitespace-separated word).
pub async fn dataset_prompts(
    target: &Target,
    path: &Path,
    default_output_len: usize,
) -> Result<Vec<Prompt>, BenchError> {
    let mut out = Vec::new();
    for row in read_dataset(path)? {
        let input_len = match target.tokenize(&row.prompt).await? {
            Some(ids) => ids.len(),
            None => row.prompt.split_whitespace().count(),
        };
        out.push(Prompt {
            text: row.prompt,
            token_ids: None,
            input_len,
            output_len: row.output_len.unwrap_or(default_output_len),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, {
            let mut r = Rng::new(8);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        });
        assert_eq!(random_words(&mut Rng::new(1), 5).split(' ').count(), 5);
    }

    #[test]
    fn arrival_gaps_have_the_right_mean_and_spread() {
        // Mean gap 1/rate for any burstiness; variance of Gamma(k, 1/(rate k)) is 1/(k rate^2):
        // coefficient of variation 1/sqrt(k).
        for &(k, cv) in &[(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)] {
            let mut rng = Rng::new(42);
            let n = 40_000;
            let gaps: Vec<f64> = (0..n).map(|_| next_gap_s(&mut rng, 5.0, k)).collect();
            let mean = gaps.iter().sum::<f64>() / n as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((mean - 0.2).abs() < 0.01, "k={k} mean={mean}");
            let got_cv = var.sqrt() / mean;
            assert!((got_cv - cv).abs() < 0.08 * cv, "k={k} cv={got_cv}");
        }
        assert_eq!(next_gap_s(&mut Rng::new(1), f64::INFINITY, 1.0), 0.0);
    }
}
