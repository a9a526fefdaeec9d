//! Arguments shared by several commands, model loading, and the in-process engine that
//! `generate`, `chat`, `score` and `perplexity` drive (the same engine `serve` runs).

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokenfab_bench::{Bound, Load, Slo};
use tokenfab_engine::{
    Device, EngineConfig, EngineHandle, LoadedModel, RequestStream, SpeculativeConfig, StreamEvent,
};
use tokenfab_loader::{GgmlType, HfOptions, Quantization};
use tokenfab_types::SamplingParams;

/// The default model's file name, fetched by `scripts/fetch-model.sh` into `models/`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF model file or Hugging Face checkpoint directory [default:
    /// models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long, short = 'm', env = "TOKENFAB_MODEL")]
    pub model: Option<PathBuf>,
    /// Checkpoint directories: how weight matrices are stored once loaded: auto (q8_0 for
    /// bf16/f16 checkpoints, for the CPU's quantized kernels), none (as stored), q8_0, q4_0, q4_1,
    /// fp8 (E4M3 with a scale per tensor: on CUDA (sm_89/sm_90) the layers' matrices are stored
    /// as FP8 and multiplied by cuBLASLt; on the CPU rounded and kept as f32, FP8's accuracy).
    #[arg(long, default_value = "auto")]
    pub quantization: Quantization,
    /// Worker threads [default: the cores this process may use].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Instead of a file, deterministic random weights of a preset's shape: smollm2-135m,
    /// llama3-8b, llama3-70b, tiny, or a JSON config. Byte-level tokenizer.
    #[arg(long, conflicts_with = "model")]
    pub dummy_weights: Option<String>,
    /// Seed of the dummy weights (the same seed gives the same weights on every backend).
    #[arg(long, default_value_t = 0)]
    pub dummy_seed: u64,
    /// Storage type of the dummy weight matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k,
    /// or fp8 (E4M3 layers generated on the GPU, sm_89/sm_90: no host copy, so llama3-70b fits).
    #[arg(long, default_value = "q8_0")]
    pub dummy_dtype: String,
    /// Generate the dummy weights on the GPU from the seed instead of building them in host
    /// memory (bf16 layers; implied by `--dummy-dtype fp8`). CUDA only.
    #[arg(long)]
    pub dummy_on_device: bool,
    /// A chat template file (Jinja, as `tokenizer.chat_template`) to use instead of the model
    /// file's own, e.g. `templates/gemma3.jinja` for a GGUF that carries none.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

impl ModelArgs {
    /// Sets up the thread pool and loads the model, logging its size and load time.
    pub fn load(&self) -> Result<LoadedModel> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .context("setting up the thread pool")?;
        }
        let t = std::time::Instant::now();
        let (m, path) = if let Some(preset) = &self.dummy_weights {
            let fp8 = self.dummy_dtype.eq_ignore_ascii_case("fp8");
            let m = if fp8 || self.dummy_on_device {
                use tokenfab_engine::GpuWeights;
                anyhow::ensure!(
                    fp8 || self.dummy_dtype.eq_ignore_ascii_case("bf16"),
                    "--dummy-on-device makes bf16 or fp8 weights (--dummy-dtype bf16 or fp8). Given: {}",
                    self.dummy_dtype
                );
                let w = if fp8 { GpuWeights::Fp8 } else { GpuWeights::Bf16 };
                tokenfab_engine::dummy::device_model(preset, self.dummy_seed, w)
            } else {
                LoadedModel::dummy(preset, self.dummy_seed, parse_dtype(&self.dummy_dtype)?)
            }
            .with_context(|| format!("building dummy weights `{preset}`"))?;
            (m, PathBuf::from(format!("dummy:{preset}")))
        } else {
            let path = match &self.model {
                Some(p) => p.clone(),
                None => default_model_path()?,
            };
            anyhow::ensure!(
                self.quantization == Quantization::Auto || path.is_dir(),
                "--quantization applies to Hugging Face checkpoint directories; {} is a file \
                 (a GGUF file's tensors are used as stored)",
                path.display()
            );
            let hf = HfOptions {
                quantization: self.quantization,
            };
            let mut m = LoadedModel::load_with(&path, &hf)
                .with_context(|| format!("loading {}", path.display()))?;
            if self.quantization == Quantization::Fp8 {
                m.model.gpu_weights = tokenfab_engine::GpuWeights::Fp8;
            }
            (m, path)
        };
        let mut m = m;
        if let Some(t) = &self.chat_template {
            let source = std::fs::read_to_string(t)
                .with_context(|| format!("reading the chat template {}", t.display()))?;
            m.set_chat_template(&source)
                .with_context(|| format!("the chat template {}", t.display()))?;
        }
        tracing::info!(
            model = %m.name,
            path = %path.display(),
            file_mib = m.file_tensor_bytes >> 20,
            resident_mib = m.weight_bytes() >> 20,
            secs = format!("{:.2}", t.elapsed().as_secs_f64()),
            threads = rayon::current_num_threads(),
            "model loaded"
        );
        // The processor and the CPU kernels' parameters chosen for it (see cpu::tuning).
        let cpu = tokenfab_engine::device::describe_cpu();
        tracing::info!(%cpu, "cpu kernels");
        Ok(m)
    }
}

/// n-gram speculative decoding, as vLLM configures it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Speculative decoding as vLLM's JSON, e.g. `{"method": "ngram",
    /// "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}` (prompt
    /// lookup: drafts copied from the request's own text, verified in one forward pass; output
    /// unchanged). Off without it.
    #[arg(long, value_name = "JSON")]
    pub speculative_config: Option<String>,
}

impl SpecArgs {
    pub fn config(&self) -> Result<Option<SpeculativeConfig>> {
        self.speculative_config
            .as_deref()
            .map(SpeculativeConfig::from_json)
            .transpose()
            .map_err(Into::into)
    }
}

/// Starts an engine for one command: `seqs` requests at once over a KV pool of `pool_tokens`
/// tokens (rounded up to whole blocks), on `device`, with speculative decoding when given.
pub fn start_engine(
    m: LoadedModel,
    device: Device,
    seqs: usize,
    pool_tokens: usize,
    speculative: Option<SpeculativeConfig>,
) -> Result<EngineHandle> {
    let base = EngineConfig::default();
    let cfg = EngineConfig {
        device,
        speculative,
        max_num_seqs: seqs.max(1),
        max_kv_blocks: Some(pool_tokens.max(1).div_ceil(base.block_size)),
        // The pool is sized by `max_kv_blocks`, whatever memory that takes.
        kv_cache_bytes: usize::MAX,
        ..base
    };
    EngineHandle::start(m, cfg).context("starting the engine")
}

/// The next event of a request, an engine error as an error.
pub fn next_event(s: &mut RequestStream) -> Result<StreamEvent> {
    match s.blocking_recv() {
        Some(StreamEvent::Error(e)) => bail!("the engine failed the request: {e}"),
        Some(StreamEvent::ClientTimeout { after }) => {
            bail!("the engine aborted the request: its events waited {after:?} unread")
        }
        Some(ev) => Ok(ev),
        None => bail!("the engine stopped before the request finished"),
    }
}

fn parse_dtype(s: &str) -> Result<GgmlType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q8_0" => GgmlType::Q8_0,
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q4_k" => GgmlType::Q4K,
        "q6_k" => GgmlType::Q6K,
        other => anyhow::bail!("--dummy-dtype must be one of f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k, fp8. Given: {other}"),
    })
}

/// `models/<default>` under the working directory or the checkout the binary was built in.
pub fn default_model_path() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("models").join(DEFAULT_MODEL)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/tokenfab -> the checkout's models/.
        if let Some(root) = exe.ancestors().nth(3) {
            candidates.push(root.join("models").join(DEFAULT_MODEL));
        }
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(DEFAULT_MODEL),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no --model given and the default model {DEFAULT_MODEL} is missing; \
             fetch it with `scripts/fetch-model.sh` (looked in: {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// 1.0 disables.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed of the sampler; random when omitted.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        anyhow::ensure!(
            self.temperature >= 0.0,
            "--temperature must be >= 0. Given: {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]. Given: {}",
            self.top_p
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_p),
            "--min-p must be in [0, 1]. Given: {}",
            self.min_p
        );
        anyhow::ensure!(
            self.repeat_penalty > 0.0,
            "--repeat-penalty must be > 0. Given: {}",
            self.repeat_penalty
        );
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        })
    }
}

/// The load a run offers and the objective it is judged by: shared by `bench` (on a server)
/// and `plan` (in virtual time). Every run is bounded: by `--num-prompts` (default 100 per
/// load), `--duration`, or both.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Closed loop: concurrent users, one run per value (`1,8,32`).
    #[arg(long, value_delimiter = ',', conflicts_with = "request_rate")]
    pub concurrency: Vec<usize>,
    /// Open loop: arrivals per second, one run per value (`inf` sends everything at once).
    #[arg(long, value_delimiter = ',')]
    pub request_rate: Vec<f64>,
    /// Shape of the gamma distribution of arrival gaps: 1 is Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Requests per run (per load, per round).
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Seconds per run (virtual ones in `plan`): stop sending after this long (in-flight
    /// requests finish).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Prompt length in tokens (exact when the server has /tokenize).
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// JSONL of `{"prompt": "...", "output_len": N}` rows instead of synthetic prompts.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests sent before measuring.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Goodput objective, `ttft=MS,tpot=MS` (either part optional).
    #[arg(long)]
    pub slo: Option<String>,
    /// Share of requests that must meet the SLO for a load to hold (capacity search).
    #[arg(long, default_value_t = 0.9)]
    pub slo_attainment: f64,
    /// Search for the most concurrent users held within `--slo`.
    #[arg(long, requires = "slo")]
    pub capacity: bool,
    /// Upper bound of the capacity search.
    #[arg(long, default_value_t = 256)]
    pub capacity_max: usize,
}

/// [`WorkloadArgs`] checked.
pub struct Workload {
    pub loads: Vec<Load>,
    pub bound: Bound,
    pub slo: Option<Slo>,
    pub attainment: f64,
    pub capacity_max: Option<usize>,
}

impl WorkloadArgs {
    /// The loads (one closed-loop user when none is given and no capacity search), the bound
    /// and the objective; every value out of range is an error naming its flag.
    pub fn check(&self) -> Result<Workload> {
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
        if self.input_len == 0 || self.output_len == 0 {
            bail!("`--input-len` and `--output-len` must be >= 1");
        }
        if !(0.0..=1.0).contains(&self.slo_attainment) {
            bail!(
                "`--slo-attainment` must be in [0, 1]. Given: {}",
                self.slo_attainment
            );
        }
        Ok(Workload {
            loads,
            bound: Bound {
                num_prompts,
                duration,
            },
            slo: self.slo.as_deref().map(Slo::parse).transpose()?,
            attainment: self.slo_attainment,
            capacity_max: self.capacity.then_some(self.capacity_max.max(1)),
        })
    }
}
