//! `tokenfab generate`: one prompt in, one completion out.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use tokenfab_engine::{Device, IncrementalDecoder, LoadedModel, Sampler, Session};
use tokenfab_models::{CudaConfig, CudaExecutor};

use crate::args::{ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
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
    /// End with one JSON line: {"text", "tokens", "prompt_tokens", "tokens_per_s"}.
    #[arg(long)]
    pub json: bool,
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: tokenfab_engine::Device,
    /// Write the logits after the prompt (the first sampled token's) to FILE as f32
    /// little-endian, for comparing devices.
    #[arg(long, value_name = "FILE")]
    pub dump_logits: Option<std::path::PathBuf>,
}

/// A session on the device asked for (`auto`: the GPU when usable, else the CPU, with a log line).
fn open_session(m: &LoadedModel, device: Device, capacity: usize) -> Result<Session<'_>> {
    let (device, why_cpu) = tokenfab_engine::device::resolve(device);
    if let Some(e) = why_cpu {
        tracing::info!("--device auto: running on the CPU ({e})");
    }
    Ok(match device {
        Device::Cuda(ordinal) => {
            let cfg = CudaConfig {
                ordinal,
                max_blocks: Some(capacity.div_ceil(16)),
                max_graph_batch: 1,
                ..CudaConfig::default()
            };
            Session::with_executor(Box::new(CudaExecutor::new(&m.model, &cfg)?), capacity)?
        }
        _ => Session::new(&m.model, capacity)?,
    })
}

/// What one generation produced.
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Seconds spent on tokens after the first (decode steps only).
    pub decode_secs: f64,
    pub stopped_by_eog: bool,
}

/// Samples up to `max_tokens` tokens after `logits` (the prompt's last row), streaming text to
/// `on_text` as whole UTF-8 characters.
pub fn stream(
    m: &LoadedModel,
    session: &mut Session,
    sampler: &mut Sampler,
    mut logits: Vec<f32>,
    max_tokens: usize,
    ignore_eos: bool,
    mut on_text: impl FnMut(&str),
) -> Result<Generated> {
    let prompt_len = session.tokens().len();
    let prompt: Vec<u32> = session.tokens().to_vec();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut detok = IncrementalDecoder::new();
    let mut stopped_by_eog = false;
    let mut t_first = None;
    while out.len() < max_tokens {
        let tok = sampler.sample(&mut logits, &prompt, &out);
        t_first.get_or_insert_with(Instant::now);
        if !ignore_eos && m.tokenizer.is_eog(tok) {
            stopped_by_eog = true;
            break;
        }
        out.push(tok);
        let piece = detok.push(&m.tokenizer.token_bytes(tok));
        on_text(&piece);
        text.push_str(&piece);
        if out.len() == max_tokens || prompt_len + out.len() >= session.capacity() {
            break;
        }
        logits = session.feed(&[tok], 0)?;
    }
    let rest = detok.finish();
    on_text(&rest);
    text.push_str(&rest);
    Ok(Generated {
        tokens: out,
        text,
        decode_secs: t_first.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        stopped_by_eog,
    })
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let mut sampler = Sampler::new(a.sampling.params()?);
    let prompt = m.tokenizer.encode(&a.prompt, true, true)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty after tokenization");
    let ctx = m.model.cfg.context_len;
    anyhow::ensure!(
        prompt.len() < ctx,
        "the prompt has {} tokens; the model's context is {ctx}",
        prompt.len()
    );
    let capacity = (prompt.len() + a.max_tokens).min(ctx);
    let mut session = open_session(&m, a.device, capacity)?;
    let t0 = Instant::now();
    let logits = session.feed(&prompt, prompt.len() - 1)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    if let Some(path) = &a.dump_logits {
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes)?;
    }
    let max_new = a.max_tokens.min(capacity - prompt.len());
    let stdout = std::io::stdout();
    let g = stream(
        &m,
        &mut session,
        &mut sampler,
        logits,
        max_new,
        a.ignore_eos,
        |s| {
            let mut o = stdout.lock();
            let _ = o.write_all(s.as_bytes());
            let _ = o.flush();
        },
    )?;
    println!();
    // The first token comes from the prompt's pass; the rest from decode steps.
    let decode_tokens = g.tokens.len().saturating_sub(1) + usize::from(g.stopped_by_eog);
    let tokens_per_s = if g.decode_secs > 0.0 {
        decode_tokens as f64 / g.decode_secs
    } else {
        0.0
    };
    tracing::info!(
        prompt_tokens = prompt.len(),
        prompt_tokens_per_s = format!("{:.1}", prompt.len() as f64 / prefill_secs),
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
            "prompt_tokens_per_s": prompt.len() as f64 / prefill_secs,
            "device": session.device(),
        });
        println!("{j}");
    }
    Ok(())
}
