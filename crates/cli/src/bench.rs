//! `tokenfab bench`: load-test any OpenAI-compatible server (tokenfab, llama-server, vLLM).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use tokenfab_bench::{run_bench, BenchConfig, Bound, Endpoint, Load, PromptSource, Slo};

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
    /// Closed loop: concurrent users, one run per value (`1,8,32`).
    #[arg(long, value_delimiter = ',', conflicts_with = "request_rate")]
    concurrency: Vec<usize>,
    /// Open loop: arrivals per second, one run per value (`inf` sends everything at once).
    #[arg(long, value_delimiter = ',')]
    request_rate: Vec<f64>,
    /// Shape of the gamma distribution of arrival gaps: 1 is Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Requests per run (per load, per round).
    #[arg(long)]
    num_prompts: Option<usize>,
    /// Seconds per run: stop sending after this long (in-flight requests finish).
    #[arg(long)]
    duration: Option<f64>,
    /// Prompt length in tokens (exact when the server has /tokenize).
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// JSONL of `{"prompt": "...", "output_len": N}` rows instead of synthetic prompts.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Send `ignore_eos: true` so every request generates exactly its output length.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Requests sent to each server before measuring.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Goodput objective, `ttft=MS,tpot=MS` (either part optional).
    #[arg(long)]
    slo: Option<String>,
    /// Share of requests that must meet the SLO for a load to hold (capacity search).
    #[arg(long, default_value_t = 0.9)]
    slo_attainment: f64,
    /// Search for the most concurrent users held within `--slo`.
    #[arg(long, requires = "slo")]
    capacity: bool,
    /// Upper bound of the capacity search.
    #[arg(long, default_value_t = 256)]
    capacity_max: usize,
    /// A second server: same workload, runs interleaved A B A B, ratio table A/B.
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
        let mut loads: Vec<Load> = self
            .concurrency
            .iter()
            .map(|&c| Load::Concurrency(c))
            .collect();
        if loads.contains(&Load::Concurrency(0)) {
            bail!("`--concurrency` must be >= 1. Given: 0");
        }
        for &rate in &self.request_rate {
            if rate.is_nan() || rate <= 0.0 {
                bail!("`--request-rate` must be > 0. Given: {rate}");
            }
            loads.push(Load::Rate {
                rate,
                burstiness: self.burstiness,
            });
        }
        if !(self.burstiness > 0.0 && self.burstiness.is_finite()) {
            bail!("`--burstiness` must be > 0. Given: {}", self.burstiness);
        }
        if loads.is_empty() && !self.capacity {
            loads.push(Load::Concurrency(1));
        }
        let duration = match self.duration {
            Some(d) if !(d > 0.0 && d.is_finite()) => bail!("`--duration` must be > 0. Given: {d}"),
            d => d.map(Duration::from_secs_f64),
        };
        let num_prompts = match (self.num_prompts, duration) {
            (Some(0), _) => bail!("`--num-prompts` must be >= 1. Given: 0"),
            (None, None) => Some(100),
            (n, _) => n,
        };
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            bail!("`--timeout` must be > 0. Given: {}", self.timeout);
        }
        if self.input_len == 0 || self.output_len == 0 {
            bail!("`--input-len` and `--output-len` must be >= 1");
        }
        if !(0.0..=1.0).contains(&self.slo_attainment) {
            bail!(
                "`--slo-attainment` must be in [0, 1]. Given: {}",
                self.slo_attainment
            );
        }
        let source = match &self.dataset {
            Some(path) => PromptSource::Dataset {
                path: path.clone(),
                output_len: self.output_len,
            },
            None => PromptSource::Synthetic {
                input_len: self.input_len,
                output_len: self.output_len,
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
            loads,
            bound: Bound {
                num_prompts,
                duration,
            },
            source,
            ignore_eos: self.ignore_eos,
            seed: self.seed,
            warmup: self.warmup,
            slo: self.slo.as_deref().map(Slo::parse).transpose()?,
            attainment: self.slo_attainment,
            capacity_max: self.capacity.then_some(self.capacity_max.max(1)),
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
