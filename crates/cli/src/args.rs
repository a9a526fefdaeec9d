//! Arguments shared by several commands, model loading, and the in-process engine that
//! `generate`, `chat`, `score` and `perplexity` drive (the same engine `serve` runs).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokenfab_engine::{
    Device, EngineConfig, EngineHandle, LoadedModel, RequestStream, SpeculativeConfig, StreamEvent,
};
use tokenfab_loader::GgmlType;
use tokenfab_types::SamplingParams;

/// The default model's file name, fetched by `scripts/fetch-model.sh` into `models/`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF model file [default: models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long, short = 'm', env = "TOKENFAB_MODEL")]
    pub model: Option<PathBuf>,
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
    /// Storage type of the dummy weight matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k.
    #[arg(long, default_value = "q8_0")]
    pub dummy_dtype: String,
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
            let ty = parse_dtype(&self.dummy_dtype)?;
            let m = LoadedModel::dummy(preset, self.dummy_seed, ty)
                .with_context(|| format!("building dummy weights `{preset}`"))?;
            (m, PathBuf::from(format!("dummy:{preset}")))
        } else {
            let path = match &self.model {
                Some(p) => p.clone(),
                None => default_model_path()?,
            };
            let m =
                LoadedModel::load(&path).with_context(|| format!("loading {}", path.display()))?;
            (m, path)
        };
        tracing::info!(
            model = %m.name,
            path = %path.display(),
            file_mib = m.file_tensor_bytes >> 20,
            resident_mib = m.weight_bytes() >> 20,
            secs = format!("{:.2}", t.elapsed().as_secs_f64()),
            threads = rayon::current_num_threads(),
            "model loaded"
        );
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
        other => anyhow::bail!("--dummy-dtype must be one of f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k. Given: {other}"),
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
