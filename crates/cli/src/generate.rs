//! `tokenfab generate`: one prompt in, one completion out, through the in-process engine.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use tokenfab_engine::{EngineRequest, StreamEvent, Usage};

use crate::args::{next_event, start_engine, ModelArgs, SamplingArgs, SpecArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The prompt; special tokens written in it (e.g. `<|im_start|>`) are parsed as such.
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// End with one JSON line: {"text", "tokens", "prompt_tokens", "tokens_per_s",
    /// "prompt_tokens_per_s", "device"}; `tokens` holds every generated token, a final
    /// end-of-generation token included.
    #[arg(long)]
    pub json: bool,
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: tokenfab_engine::Device,
    /// Write the log-probabilities of every token after the prompt (the first sampled token's
    /// distribution; the logits less their log-sum-exp) to FILE as f32 little-endian in token id
    /// order, for comparing devices.
    #[arg(long, value_name = "FILE")]
    pub dump_logprobs: Option<std::path::PathBuf>,
}

/// What came back, with the times the speeds are measured from.
pub(crate) struct Generated {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Submission to the first token: the prompt's pass (prefill).
    prefill_secs: f64,
    /// First token to the end: the decode steps.
    decode_secs: f64,
    pub usage: Usage,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let prompt = m.tokenizer.encode(&a.prompt, true, true)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty after tokenization");
    let ctx = m.context_len();
    anyhow::ensure!(
        prompt.len() < ctx,
        "the prompt has {} tokens; the model's context is {ctx}",
        prompt.len()
    );
    let max_tokens = a.max_tokens.min(ctx - prompt.len());
    let engine = start_engine(m, a.device, 1, prompt.len() + max_tokens, a.spec.config()?)?;
    let vocab = engine.info().vocab_size;
    let req = EngineRequest {
        prompt_tokens: prompt.clone(),
        sampling: a.sampling.params()?,
        max_tokens,
        ignore_eos: a.ignore_eos,
        logprobs: a.dump_logprobs.as_ref().map(|_| vocab),
        ..Default::default()
    };
    let stdout = std::io::stdout();
    let mut first_logprobs = None;
    let g = generate(&engine, req, |text, logprob| {
        let mut o = stdout.lock();
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
        if first_logprobs.is_none() {
            first_logprobs = logprob.cloned();
        }
    })?;
    println!();
    if let Some(path) = &a.dump_logprobs {
        let lp = first_logprobs.context("no token was generated, so no distribution to dump")?;
        let mut by_id = vec![f32::NEG_INFINITY; vocab];
        for (id, l) in lp.top {
            by_id[id as usize] = l;
        }
        let bytes: Vec<u8> = by_id.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    // The first token comes from the prompt's pass; the rest from decode steps.
    let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let tokens_per_s = rate(g.tokens.len().saturating_sub(1), g.decode_secs);
    let prompt_tokens_per_s = rate(prompt.len(), g.prefill_secs);
    tracing::info!(
        prompt_tokens = prompt.len(),
        prompt_tokens_per_s = format!("{prompt_tokens_per_s:.1}"),
        generated = g.tokens.len(),
        tokens_per_s = format!("{tokens_per_s:.1}"),
        "done"
    );
    if a.json {
        let j = serde_json::json!({
            "text": g.text,
            "tokens": g.tokens,
            "prompt_tokens": prompt.len(),
            "tokens_per_s": tokens_per_s,
            "prompt_tokens_per_s": prompt_tokens_per_s,
            "device": engine.info().device,
        });
        println!("{j}");
    }
    Ok(())
}

/// Runs one request to its end, handing each piece of text (with the token's log-probability,
/// when asked) to `on_text` as it comes.
pub(crate) fn generate(
    engine: &tokenfab_engine::EngineHandle,
    req: EngineRequest,
    mut on_text: impl FnMut(&str, Option<&tokenfab_engine::TokenLogprob>),
) -> Result<Generated> {
    let t0 = Instant::now();
    let mut s = engine.submit(req)?;
    let (mut text, mut tokens, mut t_first) = (String::new(), Vec::new(), None);
    let usage = loop {
        match next_event(&mut s)? {
            StreamEvent::Token {
                token,
                text: t,
                logprob,
            } => {
                t_first.get_or_insert_with(Instant::now);
                on_text(&t, logprob.as_ref());
                text.push_str(&t);
                tokens.push(token);
            }
            StreamEvent::Text(t) => {
                on_text(&t, None);
                text.push_str(&t);
            }
            StreamEvent::PromptLogprobs(_) => {}
            StreamEvent::End { usage, .. } => break usage,
            StreamEvent::Error(_) | StreamEvent::ClientTimeout { .. } => {
                unreachable!("next_event returns engine errors as errors")
            }
        }
    };
    let end = Instant::now();
    let t_first = t_first.unwrap_or(end);
    Ok(Generated {
        text,
        tokens,
        prefill_secs: (t_first - t0).as_secs_f64(),
        decode_secs: (end - t_first).as_secs_f64(),
        usage,
    })
}
