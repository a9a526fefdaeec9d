//! `tokenfab chat`: a terminal conversation through the model's chat template, streamed. Each turn
//! is one engine request holding the whole conversation; the engine's prefix cache keeps the KV
//! of what earlier turns computed, so a turn computes only what is new.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use tokenfab_engine::EngineRequest;
use tokenfab_loader::chat_template::ChatMessage;

use crate::args::{start_engine, ModelArgs, SamplingArgs, SpecArgs};
use crate::generate::generate;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Where the model runs: auto (a CUDA device when one is usable, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: tokenfab_engine::Device,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    anyhow::ensure!(
        m.template.is_some(),
        "this model has no chat template (tokenizer.chat_template)"
    );
    let name = m.name.clone();
    let ctx = m.context_len();
    let params = a.sampling.params()?;
    // One conversation at a time, as long as the context.
    let engine = start_engine(m, a.device, 1, ctx, a.spec.config()?)?;
    let template = engine.chat_template().context("no chat template")?;
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("Chatting with {name}. /reset starts over, /exit or Ctrl-D ends.");
    for turn in 0u64.. {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = engine
            .tokenizer()
            .encode(&template.render(&messages, true)?, true, true)?;
        if prompt.len() >= ctx {
            eprintln!("(the conversation fills the context; /reset to start over)");
            messages.pop();
            continue;
        }
        let mut sampling = params.clone();
        // A fresh stream of random numbers per answer, still reproducible from --seed.
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(turn));
        let req = EngineRequest {
            prompt_tokens: prompt.clone(),
            sampling,
            max_tokens: a.max_tokens.min(ctx - prompt.len()),
            ..Default::default()
        };
        let g = generate(&engine, req, |s, _| {
            print!("{s}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        tracing::debug!(
            prompt_tokens = g.usage.prompt_tokens,
            cached_tokens = g.usage.cached_tokens,
            completion_tokens = g.usage.completion_tokens,
            "turn"
        );
        messages.push(ChatMessage::new("assistant", g.text.trim()));
    }
    Ok(())
}
