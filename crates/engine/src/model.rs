//! A model file loaded with everything that comes with it.

use std::path::{Path, PathBuf};

use tokenfab_loader::chat_template::ChatTemplate;
use tokenfab_loader::tokenizer::Tokenizer;
use tokenfab_loader::{GgmlType, Gguf, HfOptions};
use tokenfab_models::Model;

use crate::dummy::{self, DummyConfig};
use crate::error::Result;

/// Weights, tokenizer and chat template of one GGUF file or Hugging Face checkpoint.
pub struct LoadedModel {
    pub path: PathBuf,
    /// `general.name`, else the file stem.
    pub name: String,
    pub model: Model,
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

    /// Replaces the file's chat template (or gives one to a file without) with `source`, a Jinja
    /// template in the `tokenizer.chat_template` dialect.
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        let t = &self.tokenizer;
        let text = |id: Option<u32>| id.and_then(|i| t.id_to_token(i)).unwrap_or("");
        self.template = Some(ChatTemplate::new(
            source,
            text(t.bos_id()),
            text(t.eos_id()),
        )?);
        Ok(())
    }

    fn from_gguf(g: Gguf, path: &Path) -> Result<Self> {
        let model = Model::from_gguf(&g)?;
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

#[cfg(test)]
mod tests {
    use tokenfab_loader::ChatMessage;

    use super::*;

    /// Gemma 3's template (templates/gemma3.jinja) renders with the loader's minijinja setup: the
    /// system message folded into the first user turn, `assistant` turns as `model`.
    #[test]
    fn a_chat_template_file_replaces_the_models() {
        let dir = std::env::temp_dir().join(format!("tokenfab-tmpl-{}", std::process::id()));
        let path = crate::testing::write_tiny_model(&dir);
        let mut m = LoadedModel::load(&path).unwrap();
        let src = include_str!("../../../templates/gemma3.jinja");
        m.set_chat_template(src).unwrap();
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi "),
            ChatMessage::new("assistant", "Hello"),
            ChatMessage::new("user", "Again"),
        ];
        let t = m.template.as_ref().unwrap();
        let bos = m
            .tokenizer
            .id_to_token(m.tokenizer.bos_id().unwrap())
            .unwrap();
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            format!(
                "{bos}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n\
                 Hello<end_of_turn>\n<start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\n"
            )
        );
        let twice = [msgs[1].clone(), msgs[1].clone()];
        let e = t.render(&twice, false).unwrap_err().to_string();
        assert!(e.contains("must alternate"), "{e}");
        assert!(m.set_chat_template("{% if %}").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
