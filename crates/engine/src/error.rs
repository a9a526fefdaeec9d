//! The one error type of the engine crate.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loader(#[from] tokenfab_loader::Error),
    #[error(transparent)]
    Model(#[from] tokenfab_models::Error),
    /// A request the model cannot take (too long, empty...). The message names the limit.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
