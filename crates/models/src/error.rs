//! The one error type of the models crate.

use crate::config::SUPPORTED;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loader(#[from] tokenfab_loader::Error),
    #[error("architecture `{0}` is not supported (supported: {SUPPORTED})")]
    UnsupportedArch(String),
    /// Something a supported architecture's file asks for that tokenfab does not do.
    #[error("not supported: {0}")]
    Unsupported(String),
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

/// The CPU's operations cannot fail.
impl From<std::convert::Infallible> for Error {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
