//! `tokenfab chat`: a terminal conversation through the model's chat template, streamed.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use tokenfab_engine::{Sampler, Session};
use tokenfab_loader::chat_template::ChatMessage;

use crate::args::{ModelArgs, SamplingArgs};
use crate::generate::stream;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let template = m
        .template
        .as_ref()
        .context("this model has no chat template (tokenizer.chat_template)")?;
    let mut sampler = Sampler::new(a.sampling.params()?);
    let mut session = Session::new(&m.model, m.model.cfg.context_len)?;
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "Chatting with {}. /reset starts over, /exit or Ctrl-D ends.",
        m.name
    );
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.retain(|m| m.role == "system");
                session.truncate(0);
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = m
            .tokenizer
            .encode(&template.render(&messages, true)?, true, true)?;
        // Reuse the K/V of the part of the conversation the session already holds.
        let common = session
            .tokens()
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        session.truncate(common);
        let room = session.capacity().saturating_sub(prompt.len());
        if room == 0 {
            eprintln!("(the conversation fills the context; /reset to start over)");
            messages.pop();
            continue;
        }
        let logits = session.feed(&prompt[common..], prompt.len() - common - 1)?;
        let g = stream(
            &m,
            &mut session,
            &mut sampler,
            logits,
            a.max_tokens.min(room),
            false,
            |s| {
                print!("{s}");
                let _ = std::io::stdout().flush();
            },
        )?;
        println!();
        messages.push(ChatMessage::new("assistant", g.text.trim()));
    }
}
