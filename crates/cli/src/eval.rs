//! `tokenfab perplexity` and `tokenfab score`: the model's probabilities of given text, as
//! prefill-only engine requests (`max_tokens` 0) asking for prompt log-probabilities.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokenfab_engine::{Device, EngineHandle, EngineRequest, StreamEvent, TokenLogprob};

use crate::args::{next_event, start_engine, ModelArgs};

/// Requests in flight at once: the engine batches them while the command reads results.
const WINDOW: usize = 4;

/// Runs one prefill-only request per prompt, up to [`WINDOW`] at once, and hands each one's
/// prompt log-probabilities (with `top_n` alternatives; entry 0 is `None`) to `each`, in order.
fn prompt_logprobs(
    engine: &EngineHandle,
    prompts: impl IntoIterator<Item = Vec<u32>>,
    top_n: usize,
    mut each: impl FnMut(usize, Vec<Option<TokenLogprob>>) -> Result<()>,
) -> Result<()> {
    let mut prompts = prompts.into_iter().enumerate();
    let mut in_flight = VecDeque::new();
    loop {
        while in_flight.len() < WINDOW {
            let Some((i, p)) = prompts.next() else { break };
            let req = EngineRequest {
                prompt_tokens: p,
                max_tokens: 0,
                prompt_logprobs: Some(top_n),
                ..Default::default()
            };
            let s = engine
                .submit(req)
                .with_context(|| format!("row {}", i + 1))?;
            in_flight.push_back((i, s));
        }
        let Some((i, mut s)) = in_flight.pop_front() else {
            return Ok(());
        };
        let mut lps = None;
        loop {
            match next_event(&mut s)? {
                StreamEvent::PromptLogprobs(v) => lps = Some(v),
                StreamEvent::End { .. } => break,
                other => anyhow::bail!("a prefill-only request produced {other:?}"),
            }
        }
        each(
            i,
            lps.context("the engine sent no prompt log-probabilities")?,
        )?;
    }
}

fn lp(e: &Option<TokenLogprob>) -> Result<&TokenLogprob> {
    e.as_ref()
        .context("a prompt position without its log-probability")
}

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
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
}

/// llama.cpp's method: the text is cut into chunks of `ctx` tokens (BOS replacing each chunk's first
/// token when the model adds one); each chunk is evaluated alone and its second half scored.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let m = a.model.load()?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let tokens = m.tokenizer.encode(&text, true, false)?;
    anyhow::ensure!(a.ctx >= 4, "--ctx must be at least 4. Given: {}", a.ctx);
    let context_len = m.context_len();
    anyhow::ensure!(
        a.ctx <= context_len,
        "--ctx must be <= the model's context of {context_len}. Given: {}",
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
    let engine = start_engine(m, a.device, WINDOW, WINDOW * a.ctx, None)?;
    let chunks = (0..n_chunks).map(|c| {
        let mut chunk = tokens[c * a.ctx..(c + 1) * a.ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        chunk
    });
    // Each chunk's second half is scored: the log-probability of token i given those before.
    let first = a.ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let t0 = std::time::Instant::now();
    prompt_logprobs(&engine, chunks, 0, |c, lps| {
        for e in &lps[first + 1..] {
            let l = -(lp(e)?.logprob as f64);
            nll += l;
            nll2 += l * l;
            count += 1;
        }
        eprint!("[{}]{:.4},", c + 1, (nll / count as f64).exp());
        Ok(())
    })?;
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
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
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
    let mut rows = Vec::new();
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
            rows.len() + 1
        );
        rows.push(row);
    }
    let longest = rows
        .iter()
        .map(|r| r.prompt_tokens.len() + r.tokens.len())
        .max()
        .unwrap_or(1);
    let engine = start_engine(m, a.device, WINDOW, WINDOW * longest, None)?;
    let inputs = rows
        .iter()
        .map(|r| [&r.prompt_tokens[..], &r.tokens].concat());
    prompt_logprobs(&engine, inputs, 1, |i, lps| {
        let (mut lps_out, mut top_ids, mut top_lps) = (Vec::new(), Vec::new(), Vec::new());
        for e in &lps[rows[i].prompt_tokens.len()..] {
            let e = lp(e)?;
            let &(top, top_lp) = e.top.first().context("no top alternative")?;
            lps_out.push(e.logprob);
            top_ids.push(top);
            top_lps.push(top_lp);
        }
        let j =
            serde_json::json!({"logprobs": lps_out, "top_ids": top_ids, "top_logprobs": top_lps});
        writeln!(out, "{j}")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}
