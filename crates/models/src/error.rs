//! The one error type of the models crate.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loader(#[from] tokenfab_loader::Error),
    #[error(
        "architecture `{0}` is not supported (llama, mistral, qwen2 and their GGUF variants are)"
    )]
    UnsupportedArch(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The CUDA backend could not start or failed on the device.
    #[error(transparent)]
    Device(#[from] tokenfab_backend::cuda::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
