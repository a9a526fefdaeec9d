//! `tokenfab bench`: load-test any OpenAI-compatible server (tokenfab, llama-server, vLLM).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use tokenfab_bench::{run_bench, BenchConfig, Endpoint, PromptSource};

use crate::args::WorkloadArgs;

#[derive(Clone, Copy, ValueEnum)]
pub enum EndpointArg {
    Completions,
    Chat,
}

/// Every run is bounded: by `--num-prompts` (default 100 per load), `--duration`, or both.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the server (`http://127.0.0.1:8080`; a trailing `/v1` is fine).
    #[arg(long)]
    url: String,
    /// Model id to request (default: the first of the server's /v1/models).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: EndpointArg,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Send `ignore_eos: true` so every request generates exactly its output length.
    #[arg(long)]
    ignore_eos: bool,
    /// A second server: same workload, runs interleaved A B, B A, ... (the first alternates by round), ratio table A/B.
    #[arg(long)]
    compare: Option<String>,
    /// Model id on the `--compare` server (default: its first model).
    #[arg(long)]
    compare_model: Option<String>,
    /// Times each load runs on each server (default 2 with --compare, else 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds before one request counts as timed out.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Write every figure as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput and latency against load as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Also report where a tokenfab server's engine steps went in each run (phases, wall and CPU
    /// time), from its /metrics before and after the run.
    #[arg(long)]
    profile: bool,
}

impl Args {
    fn config(&self) -> Result<BenchConfig> {
        let w = self.workload.check()?;
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            bail!("`--timeout` must be > 0. Given: {}", self.timeout);
        }
        let source = match &self.workload.dataset {
            Some(path) => PromptSource::Dataset {
                path: path.clone(),
                output_len: self.workload.output_len,
            },
            None => PromptSource::Synthetic {
                input_len: self.workload.input_len,
                output_len: self.workload.output_len,
            },
        };
        Ok(BenchConfig {
            url: self.url.clone(),
            model: self.model.clone(),
            compare_url: self.compare.clone(),
            compare_model: self.compare_model.clone(),
            endpoint: match self.endpoint {
                EndpointArg::Completions => Endpoint::Completions,
                EndpointArg::Chat => Endpoint::Chat,
            },
            loads: w.loads,
            bound: w.bound,
            source,
            ignore_eos: self.ignore_eos,
            seed: self.workload.seed,
            warmup: self.workload.warmup,
            slo: w.slo,
            attainment: w.attainment,
            capacity_max: w.capacity_max,
            rounds: self
                .rounds
                .unwrap_or(if self.compare.is_some() { 2 } else { 1 })
                .max(1),
            timeout: Duration::from_secs_f64(self.timeout),
            progress: !self.quiet,
            profile: self.profile,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run_bench(&cfg))?;
    print!("{}", tokenfab_bench::report::render(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        tokenfab_bench::plot::plot_svg(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
