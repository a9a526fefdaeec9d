//! Hugging Face checkpoints: a directory with `config.json`, `*.safetensors` (one file, or shards
//! listed by `model.safetensors.index.json`), `tokenizer.json`, and optionally
//! `tokenizer_config.json`, `generation_config.json` and `chat_template.jinja`.
//!
//! [`open`] turns one into a [`Gguf`] carrying the tensor names and metadata keys that llama.cpp's
//! `convert_hf_to_gguf.py` would write (see [`arch`]), so model code reads both formats through
//! one API. Tensors the conversion leaves alone are served from the safetensors mappings without
//! a copy; tensors it changes (the Llama Q/K row permutation, Gemma's norm offset) and those
//! quantized at load (`--quantization`) are computed once into owned buffers. The tokenizer
//! travels as the whole `tokenizer.json` under `tokenizer.huggingface.json` (the GGUF spec's key),
//! which [`crate::Tokenizer::from_gguf`] runs with the `tokenizers` crate.
//!
//! Anything this loader cannot represent faithfully (an architecture, a dtype, a RoPE scaling
//! kind, a tensor with no GGUF name, a missing file) is an [`Error`] naming it.

mod arch;
mod convert;
mod special;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value as Json;

use crate::gguf::{Segment, Storage};
use crate::safetensors::SafeTensors;
use crate::{Error, GgmlType, Gguf, Result, Value};
use arch::{Arch, Hparams};
use convert::Source;

fn unsupported(m: String) -> Error {
    Error::Checkpoint(m)
}

/// How weight matrices of a checkpoint are stored once loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantization {
    /// Q8_0 when the checkpoint's matrices are BF16 or F16 (the CPU's fast kernels read
    /// quantized blocks), else as stored.
    #[default]
    Auto,
    /// As stored (BF16, F16 or F32).
    None,
    Q8_0,
    /// Q4_0, the output matrix (or the tied embedding) Q8_0 as llama.cpp's quantizer keeps it
    /// at a higher precision.
    Q4_0,
    /// Q4_1 (a scale and a minimum per block), the output matrix Q8_0 as for Q4_0. A checkpoint
    /// exported in f32 from a Q4_1 GGUF such as the default model quantizes back to its blocks.
    Q4_1,
    /// FP8 E4M3 with one scale per tensor ([`crate::quant::fp8`], as vLLM's `--quantization
    /// fp8`): the matrices hold their FP8-rounded values as F32 (on the CPU: FP8's accuracy
    /// without its memory saving). On a GPU the layers' matrices are then stored as FP8 codes
    /// (`tokenfab_models::GpuWeights::Fp8`): a tensor uploaded alone quantizes back to exactly
    /// these codes; stacked ones (Q|K|V, gate|up) share the largest of their scales, as vLLM's
    /// `requantize_with_max_scale` does.
    Fp8,
}

impl FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Quantization::Auto,
            "none" => Quantization::None,
            "q8_0" => Quantization::Q8_0,
            "q4_0" => Quantization::Q4_0,
            "q4_1" => Quantization::Q4_1,
            "fp8" => Quantization::Fp8,
            _ => {
                return Err(format!(
                    "`--quantization` must be auto, none, q8_0, q4_0, q4_1 or fp8. Given: {s}"
                ))
            }
        })
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::Auto => "auto",
            Quantization::None => "none",
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4_0 => "q4_0",
            Quantization::Q4_1 => "q4_1",
            Quantization::Fp8 => "fp8",
        })
    }
}

/// Options of [`open`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HfOptions {
    pub quantization: Quantization,
}

/// Whether `path` is a directory to be read as a Hugging Face checkpoint.
pub fn is_checkpoint(path: &Path) -> bool {
    path.is_dir()
}

/// The JSON files of a checkpoint.
pub(crate) struct Files {
    pub config: Json,
    pub tokenizer_text: String,
    pub tokenizer: Json,
    pub tokenizer_config: Option<Json>,
    pub generation_config: Option<Json>,
    /// `chat_template.jinja` (a string) or `chat_template.json`'s `chat_template`.
    pub template: Option<Json>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn parse_json(path: &Path, text: &str) -> Result<Json> {
    serde_json::from_str(text)
        .map_err(|e| unsupported(format!("{} is not valid JSON: {e}", path.display())))
}

fn read_json(path: &Path) -> Result<Json> {
    parse_json(path, &read_text(path)?)
}

fn read_optional(path: &Path) -> Result<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        tracing::info!("checkpoint: no {}", path.display());
        Ok(None)
    }
}

impl Files {
    /// Reads the files of `dir`; `config.json` may be absent only when `!need_config`.
    fn read(dir: &Path, need_config: bool) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = if need_config || config_path.is_file() {
            read_json(&config_path)?
        } else {
            Json::Object(Default::default())
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer_text = read_text(&tok_path)?;
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(Json::String(read_text(&jinja)?))
        } else {
            read_optional(&dir.join("chat_template.json"))?
                .and_then(|j| j.get("chat_template").cloned())
        };
        Ok(Files {
            config,
            tokenizer: parse_json(&tok_path, &tokenizer_text)?,
            tokenizer_text,
            tokenizer_config: read_optional(&dir.join("tokenizer_config.json"))?,
            generation_config: read_optional(&dir.join("generation_config.json"))?,
            template,
        })
    }
}

/// The safetensors files of `dir`: the shards `model.safetensors.index.json` lists, else
/// `model.safetensors`.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let j = read_json(&index)?;
        let map = j
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| unsupported(format!("{} has no `weight_map`", index.display())))?;
        let mut files: Vec<&str> = Vec::new();
        for (t, f) in map {
            let f = f
                .as_str()
                .ok_or_else(|| arch::json_err("model.safetensors.index.json", t, f))?;
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(unsupported(format!(
                    "model.safetensors.index.json names shard `{f}` outside the checkpoint"
                )));
            }
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files.sort_unstable();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(unsupported(format!(
                "shard {} listed in model.safetensors.index.json is missing",
                missing.display()
            )));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(unsupported(format!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )))
}

/// The tokenizer files of `dir` alone (`config.json` optional) as a GGUF view without tensors:
/// what [`crate::Tokenizer::from_gguf`] and [`crate::ChatTemplate::from_gguf`] read.
pub fn open_tokenizer(dir: &Path) -> Result<Gguf> {
    let files = Files::read(dir, false)?;
    let hp = Hparams::new(files.config.clone())?;
    let ids = special::TokenIds::new(&files.tokenizer)?;
    let mut meta = std::collections::BTreeMap::new();
    special::tokenizer_meta(&mut meta, &files, &ids, &hp)?;
    Gguf::from_parts(meta, Vec::new(), Vec::new(), Vec::new())
}

/// Reads the checkpoint in `dir` as a GGUF view (see the module comment).
pub fn open(dir: &Path, opts: &HfOptions) -> Result<Gguf> {
    let files = Files::read(dir, true)?;
    let hp = Hparams::new(files.config.clone())?;
    let hf_arch = files
        .config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Json::as_str)
        .ok_or_else(|| unsupported("config.json has no `architectures`".into()))?;
    let arch = Arch::from_hf(hf_arch)?;
    let ids = special::TokenIds::new(&files.tokenizer)?;
    let vocab = hp.usize_req(&["vocab_size"])?;
    // Gemma 3 checkpoints carry embedding rows past the tokenizer; llama.cpp drops them.
    let n_vocab = if arch == Arch::Gemma3 {
        vocab.min(ids.n_listed)
    } else {
        vocab
    };
    let am = arch::metadata(arch, &hp, n_vocab)?;

    let mut meta = am.meta.clone();
    meta.insert(
        "general.architecture".into(),
        Value::String(arch.gguf().into()),
    );
    let name = hp
        .get("_name_or_path")
        .and_then(Json::as_str)
        .and_then(|p| p.rsplit('/').find(|s| !s.is_empty()))
        .map(str::to_string)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    meta.insert("general.name".into(), Value::String(name));
    special::tokenizer_meta(&mut meta, &files, &ids, &hp)?;

    let shards = shard_paths(dir)?
        .iter()
        .map(|p| SafeTensors::open(p))
        .collect::<Result<Vec<_>>>()?;
    let n_shards = shards.len();
    let tied = hp.bool_of("tie_word_embeddings") == Some(true);
    let plan = convert::plan(arch, &am, &shards, tied, n_vocab, opts.quantization)?;
    let tensors = convert::run(&plan, &shards, &am.extra)?;
    drop(plan);

    // Storages: the shard mappings first, then one owned buffer per converted tensor; each
    // tensor is one segment, at offsets aligned as in a GGUF file.
    let mut storages: Vec<Storage> = shards.into_iter().map(|s| s.storage).collect();
    let mut segments = Vec::with_capacity(tensors.len());
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (mut info, src) in tensors {
        info.offset = offset;
        let (storage, start) = match src {
            Source::Shard { shard, start } => (shard, start),
            Source::Owned(bytes) => {
                storages.push(Storage::Owned(bytes));
                (storages.len() - 1, 0)
            }
        };
        segments.push(Segment {
            base: offset,
            storage,
            start,
            len: info.n_bytes,
        });
        offset = (offset + info.n_bytes as u64).div_ceil(32) * 32;
        infos.push(info);
    }
    let n_mapped = segments.iter().filter(|s| s.storage < n_shards).count();
    tracing::info!(
        tensors = infos.len(),
        mapped = n_mapped,
        converted = infos.len() - n_mapped,
        quantization = %opts.quantization,
        "checkpoint {} read as {}",
        dir.display(),
        arch.gguf()
    );
    Gguf::from_parts(meta, infos, storages, segments)
}

/// The GGML type a quantization stores matrices in, once resolved against the checkpoint.
pub(crate) fn resolve(q: Quantization, matrix_types: &[GgmlType]) -> Option<GgmlType> {
    match q {
        Quantization::Auto => matrix_types
            .iter()
            .any(|t| matches!(t, GgmlType::BF16 | GgmlType::F16))
            .then_some(GgmlType::Q8_0),
        Quantization::None => None,
        Quantization::Q8_0 => Some(GgmlType::Q8_0),
        Quantization::Q4_0 => Some(GgmlType::Q4_0),
        Quantization::Q4_1 => Some(GgmlType::Q4_1),
        Quantization::Fp8 => Some(GgmlType::F32),
    }
}
