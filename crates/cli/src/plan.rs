//! `tokenfab plan`: predict what `tokenfab bench` would measure, on hardware you may not have.
//!
//! The real scheduler runs against a cost model of the device in virtual time; the output is
//! bench's report and JSON (so `tokenfab economics --from` reads it), plus what the prediction
//! rests on. `--device cpu` first measures this machine (a few seconds of micro-benchmarks and
//! one request on the real engine).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokenfab_bench::workload::{read_dataset, Prompt};
use tokenfab_planner::probe::{probe_cpu, Source};
use tokenfab_planner::{plan, Device, Dtype, KvMemory, ModelShape, Setup, Workload};

use crate::args::{default_model_path, WorkloadArgs};
use crate::serve::parse_size;

#[derive(clap::Args)]
pub struct Args {
    /// `cpu` (measured now), a datasheet entry (`h100`, `h200`, `b200`), or a device JSON
    /// (`--save-device` writes one).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A GGUF file, a preset (smollm2-135m, llama3-8b, llama3-70b, llama2-70b, tiny), a Hugging
    /// Face config.json or a dummy-weights JSON [default: the default model file].
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// How the weights are stored: bf16, fp8, f16, f32, q8_0, q4_1, q4_k, ... (required for a
    /// preset or JSON; overrides a GGUF's own formats).
    #[arg(long)]
    weight_dtype: Option<String>,
    /// How K and V are stored: auto (f16 on the CPU as `tokenfab serve`, else bf16), f32, f16,
    /// bf16, fp8, q8_0.
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
    /// Devices the model is split over (tensor parallelism).
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// CPU: the KV pool's size, as `tokenfab serve --kv-cache-memory`.
    #[arg(long, default_value = "1GiB")]
    kv_cache_memory: String,
    /// GPU: share of each device's memory used; the KV pool takes what the weights leave.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Token budget of one engine step.
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Most requests running at once.
    #[arg(long, default_value_t = 128)]
    max_num_seqs: usize,
    /// Most requests waiting; more are refused (429).
    #[arg(long, default_value_t = 1024)]
    max_queued_requests: usize,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long)]
    no_prefix_caching: bool,
    /// One way of the client-server round trip, milliseconds.
    #[arg(long, default_value_t = 0.5)]
    network_latency_ms: f64,
    /// Threads of the CPU probe [default: the cores this process may use, as `serve`].
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Write the device (measured or not) as JSON, to reuse with `--device FILE`.
    #[arg(long)]
    save_device: Option<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Print the report as JSON on stdout (`--json`) or write it to a file (`--json PATH`).
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
}

/// The prompts' lengths: synthetic, or a dataset's rows measured by the GGUF's tokenizer.
fn prompts(a: &WorkloadArgs, gguf: Option<&Path>) -> Result<(Vec<Prompt>, bool)> {
    let Some(path) = &a.dataset else {
        let p = Prompt {
            text: String::new(),
            token_ids: None,
            input_len: a.input_len,
            output_len: a.output_len,
        };
        return Ok((vec![p], true));
    };
    let tok = match gguf {
        Some(g) => Some(tokenfab_loader::Tokenizer::from_gguf(
            &tokenfab_loader::Gguf::open(g)?,
        )?),
        None => None,
    };
    let mut out = Vec::new();
    for row in read_dataset(path)? {
        let input_len = match &tok {
            Some(t) => t.encode(&row.prompt, false, false)?.len(),
            None => row.prompt.split_whitespace().count(),
        };
        out.push(Prompt {
            text: String::new(),
            token_ids: None,
            input_len,
            output_len: row.output_len.unwrap_or(a.output_len),
        });
    }
    Ok((out, tok.is_some()))
}

pub fn run(a: Args) -> Result<()> {
    let spec = match &a.model {
        Some(m) => m.clone(),
        None => default_model_path()?.display().to_string(),
    };
    let dtype = a
        .weight_dtype
        .as_deref()
        .map(str::parse::<Dtype>)
        .transpose()?;
    let shape = ModelShape::resolve(&spec, dtype)?;
    let gguf = spec.ends_with(".gguf").then(|| Path::new(&spec));
    let cpu = a.device.eq_ignore_ascii_case("cpu");
    let kv_dtype: Dtype = match a.kv_cache_dtype.as_str() {
        "auto" if cpu => Dtype::F16,
        "auto" => Dtype::Bf16,
        s => s.parse()?,
    };
    let device = if cpu {
        if let Some(n) = a.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .context("setting up the thread pool")?;
        }
        let kv: tokenfab_engine::KvDtype = kv_dtype
            .to_string()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e} (the CPU stores K/V as f32, f16 or q8_0)"))?;
        let src = match (gguf, dtype) {
            (Some(p), None) => Source::Gguf(p),
            _ => Source::Shape,
        };
        eprintln!("measuring this CPU for {} ...", shape.name);
        probe_cpu(&shape, &src, kv, &mut |line| eprintln!("  {line}"))?
    } else {
        Device::resolve(&a.device)?
    };
    if let Some(path) = &a.save_device {
        std::fs::write(path, serde_json::to_string_pretty(&device)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let kv_memory = if device.widens_to_f32 {
        KvMemory::Bytes(parse_size(&a.kv_cache_memory, None)? as f64)
    } else {
        if !(a.gpu_memory_utilization > 0.0 && a.gpu_memory_utilization <= 1.0) {
            bail!(
                "`--gpu-memory-utilization` must be in (0, 1]. Given: {}",
                a.gpu_memory_utilization
            );
        }
        KvMemory::Utilization(a.gpu_memory_utilization)
    };
    if !(a.network_latency_ms >= 0.0 && a.network_latency_ms.is_finite()) {
        bail!(
            "`--network-latency-ms` must be >= 0. Given: {}",
            a.network_latency_ms
        );
    }
    let setup = Setup {
        shape,
        device,
        tp: a.tp,
        kv_dtype,
        kv_memory,
        max_num_batched_tokens: a.max_num_batched_tokens,
        max_num_seqs: a.max_num_seqs,
        max_queued_requests: a.max_queued_requests,
        block_size: a.block_size,
        enable_prefix_caching: !a.no_prefix_caching,
        latency_s: a.network_latency_ms / 1e3,
    };
    let w = a.workload.check()?;
    let (prompts, exact_lengths) = prompts(&a.workload, gguf)?;
    let workload = Workload {
        loads: w.loads,
        bound: w.bound,
        prompts,
        exact_lengths,
        seed: a.workload.seed,
        warmup: a.workload.warmup,
        slo: w.slo,
        attainment: w.attainment,
        capacity_max: w.capacity_max,
    };
    let report = plan(&setup, &workload)?;
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{}", serde_json::to_string_pretty(&report)?),
        Some(p) => {
            print!("{}", tokenfab_planner::report::render(&report));
            std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{}", tokenfab_planner::report::render(&report)),
    }
    Ok(())
}
