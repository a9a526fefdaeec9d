//! `tokenfab perplexity` and `tokenfab score`: the model's probabilities of given text.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokenfab_backend::cpu::log_softmax;
use tokenfab_engine::sampler::argmax;
use tokenfab_engine::Session;

use crate::args::ModelArgs;

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Tokens per chunk; each chunk is scored on its second half.
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
}

/// llama.cpp's method: the text is cut into chunks of `ctx` tokens (BOS replacing each chunk's first
/// token when the model adds one); each chunk is evaluated alone and its second half scored.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let m = a.model.load()?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let tokens = m.tokenizer.encode(&text, true, false)?;
    anyhow::ensure!(a.ctx >= 4, "--ctx must be at least 4. Given: {}", a.ctx);
    anyhow::ensure!(
        a.ctx <= m.model.cfg.context_len,
        "--ctx must be <= the model's context of {}. Given: {}",
        m.model.cfg.context_len,
        a.ctx
    );
    let mut n_chunks = tokens.len() / a.ctx;
    if let Some(c) = a.chunks {
        n_chunks = n_chunks.min(c);
    }
    anyhow::ensure!(
        n_chunks > 0,
        "{} has {} tokens, fewer than one chunk of {}",
        a.file.display(),
        tokens.len(),
        a.ctx
    );
    eprintln!(
        "perplexity: {} tokens, {n_chunks} chunks of {}",
        tokens.len(),
        a.ctx
    );
    let bos = m
        .tokenizer
        .add_bos()
        .then(|| m.tokenizer.bos_id())
        .flatten();
    let first = a.ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut session = Session::new(&m.model, a.ctx)?;
    let vocab = m.model.cfg.vocab_size;
    let mut lsm = vec![0f32; vocab];
    let t0 = std::time::Instant::now();
    for c in 0..n_chunks {
        let mut chunk = tokens[c * a.ctx..(c + 1) * a.ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.truncate(0);
        let logits = session.feed(&chunk, first)?;
        for i in first..a.ctx - 1 {
            let row = &logits[(i - first) * vocab..(i - first + 1) * vocab];
            log_softmax(row, &mut lsm);
            let lp = -(lsm[tokens[c * a.ctx + i + 1] as usize] as f64);
            nll += lp;
            nll2 += lp * lp;
            count += 1;
        }
        eprint!("[{}]{:.4},", c + 1, (nll / count as f64).exp());
    }
    eprintln!();
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    eprintln!(
        "scored {count} tokens in {:.1} s ({:.1} tokens/s)",
        t0.elapsed().as_secs_f64(),
        (n_chunks * a.ctx) as f64 / t0.elapsed().as_secs_f64()
    );
    println!("PPL = {ppl:.4} +/- {err:.5}");
    Ok(())
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON lines, each {"prompt_tokens": [...], "tokens": [...]}.
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// Where to write the result rows [default: stdout].
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ScoreRow {
    prompt_tokens: Vec<u32>,
    tokens: Vec<u32>,
}

/// For each row: the log-probability of each of `tokens` given everything before it, and the
/// model's own top choice there (teacher forcing: the loglikelihood of evaluation harnesses).
pub fn score(a: ScoreArgs) -> Result<()> {
    let m = a.model.load()?;
    let input = std::io::BufReader::new(
        std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?,
    );
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let vocab = m.model.cfg.vocab_size;
    let mut lsm = vec![0f32; vocab];
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: ScoreRow = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}", a.input.display(), i + 1))?;
        anyhow::ensure!(
            !row.prompt_tokens.is_empty(),
            "row {}: prompt_tokens is empty",
            i + 1
        );
        if let Some(&t) = row
            .prompt_tokens
            .iter()
            .chain(&row.tokens)
            .find(|&&t| t as usize >= vocab)
        {
            anyhow::bail!(
                "row {}: token {t} is outside the vocabulary of {vocab}",
                i + 1
            );
        }
        let mut all = row.prompt_tokens.clone();
        all.extend_from_slice(&row.tokens);
        all.pop();
        let mut session = Session::new(&m.model, all.len().max(1))?;
        let logits = session.feed(&all, row.prompt_tokens.len() - 1)?;
        let (mut lps, mut top_ids, mut top_lps) = (Vec::new(), Vec::new(), Vec::new());
        for (j, &t) in row.tokens.iter().enumerate() {
            log_softmax(&logits[j * vocab..(j + 1) * vocab], &mut lsm);
            let top = argmax(&lsm);
            lps.push(lsm[t as usize]);
            top_ids.push(top);
            top_lps.push(lsm[top as usize]);
        }
        let j = serde_json::json!({"logprobs": lps, "top_ids": top_ids, "top_logprobs": top_lps});
        writeln!(out, "{j}")?;
    }
    out.flush()?;
    Ok(())
}
