//! Arguments shared by several commands, and model loading.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokenfab_engine::LoadedModel;
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
        let path = match &self.model {
            Some(p) => p.clone(),
            None => default_model_path()?,
        };
        let t = std::time::Instant::now();
        let m = LoadedModel::load(&path).with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(
            model = %m.name,
            path = %path.display(),
            file_mib = m.file_tensor_bytes >> 20,
            resident_mib = m.model.weight_bytes() >> 20,
            secs = format!("{:.2}", t.elapsed().as_secs_f64()),
            threads = rayon::current_num_threads(),
            "model loaded"
        );
        Ok(m)
    }
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
