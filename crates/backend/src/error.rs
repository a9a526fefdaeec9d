//! The backend's error type.

/// What can go wrong building backend objects from caller data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A quantized matrix whose shape or byte length does not fit its type.
    #[error("quantized matrix {ty:?} ({rows}x{cols}): {reason}")]
    BadQMatrix {
        ty: crate::cpu::QType,
        rows: usize,
        cols: usize,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
