//! A model file loaded with everything that comes with it.

use std::path::{Path, PathBuf};

use tokenfab_loader::chat_template::ChatTemplate;
use tokenfab_loader::tokenizer::Tokenizer;
use tokenfab_loader::{GgmlType, Gguf, HfOptions};
use tokenfab_models::Llama;

use crate::dummy::{self, DummyConfig};
use crate::error::Result;

/// Weights, tokenizer and chat template of one GGUF file or Hugging Face checkpoint.
pub struct LoadedModel {
    pub path: PathBuf,
    /// `general.name`, else the file stem.
    pub name: String,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Size of the tensor data in the file.
    pub file_tensor_bytes: u64,
}

impl LoadedModel {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &HfOptions::default())
    }

    /// A GGUF file, or a Hugging Face checkpoint directory read as one with `hf`.
    pub fn load_with(path: &Path, hf: &HfOptions) -> Result<Self> {
        let g = if tokenfab_loader::hf::is_checkpoint(path) {
            tokenfab_loader::hf::open(path, hf)?
        } else {
            Gguf::open(path)?
        };
        Self::from_gguf(g, path)
    }

    /// Random weights of a preset's shape (see [`crate::dummy`]), matrices stored as `ty`.
    pub fn dummy(preset: &str, seed: u64, ty: GgmlType) -> Result<Self> {
        let cfg = DummyConfig::resolve(preset)?;
        let bytes = dummy::build_gguf(preset, &cfg, seed, ty)?;
        Self::from_gguf(
            Gguf::from_bytes(bytes)?,
            Path::new(&format!("dummy-{preset}")),
        )
    }

    fn from_gguf(g: Gguf, path: &Path) -> Result<Self> {
        let model = Llama::from_gguf(&g)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let template = ChatTemplate::from_gguf(&g, &tokenizer)?;
        let name = g
            .opt("general.name", Gguf::get_str)?
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map_or("model".into(), |s| s.to_string_lossy().into_owned())
            });
        Ok(Self {
            path: path.to_path_buf(),
            name,
            model,
            tokenizer,
            template,
            file_tensor_bytes: g.tensor_data_bytes(),
        })
    }
}

/// What the front doors need to size a request before the engine starts.
impl LoadedModel {
    /// Most tokens (prompt + output) of one sequence.
    pub fn context_len(&self) -> usize {
        self.model.cfg.context_len
    }

    /// Bytes of the weights as loaded in host memory.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }
}
