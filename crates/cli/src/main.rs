//! `tokenfab`: a token factory. See `tokenfab --help`.

mod args;
mod bench;
mod chat;
mod economics;
mod eval;
mod generate;
mod gpu;
mod plan;
mod serve;

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tokenfab",
    version,
    about = "An LLM inference server and toolkit for GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines on stderr are written: text (coloured only on a terminal), or json (one
    /// object a line, for log collectors). `RUST_LOG` sets the level (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion of a prompt.
    Generate(generate::Args),
    /// Chat with the model in the terminal, through its chat template.
    Chat(chat::Args),
    /// Perplexity of a text file, as llama.cpp's llama-perplexity computes it.
    Perplexity(eval::PerplexityArgs),
    /// Log-probabilities of given continuations (teacher-forced), one JSON row per input row.
    Score(eval::ScoreArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Load-test an OpenAI-compatible server: TTFT, TPOT, ITL, goodput, capacity, A/B compare.
    Bench(bench::Args),
    /// Cost per million tokens and revenue per dollar of hardware, from a throughput.
    Economics(economics::Args),
    /// Predict bench's figures on a device (this CPU, H100, H200, B200) in virtual time.
    Plan(plan::Args),
    /// Probe the CUDA device and measure its ceilings (JSON).
    #[command(name = "gpu-probe", hide = true)]
    GpuProbe(gpu::Args),
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Log lines go to stderr; ANSI colours only when it is a terminal (a file or a pipe gets plain
/// text).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => fmt.json().init(),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Perplexity(a) => eval::perplexity(a),
        Command::Score(a) => eval::score(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Economics(a) => economics::run(a),
        Command::Plan(a) => plan::run(a),
        Command::GpuProbe(a) => gpu::run(a),
    }
}
