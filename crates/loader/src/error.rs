//! The one error type of the loader crate.

/// Everything that can go wrong while reading a model file, its tokenizer or its template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF file, or its header is unsupported.
    #[error("not a supported GGUF file: {0}")]
    BadHeader(String),
    /// The file ends before a structure it declares.
    #[error("GGUF file truncated: {what} needs {need} bytes at offset {offset}, file has {len}")]
    Truncated {
        what: String,
        offset: usize,
        need: usize,
        len: usize,
    },
    /// A structurally invalid value (bad type tag, invalid UTF-8, absurd count...).
    #[error("corrupt GGUF file: {0}")]
    Corrupt(String),
    /// A tensor whose declared shape, type or offset cannot be honoured.
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    /// A tensor type this build does not implement.
    #[error("tensor `{name}` has unsupported type {ty}")]
    UnsupportedType { name: String, ty: String },
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Special-token text in a chat message that the tokenizer cannot keep as text
    /// (`Tokenizer::encode_shielded`).
    #[error("special-token text in a message: {0}")]
    Unshieldable(String),
    /// A Hugging Face checkpoint this loader cannot represent faithfully (architecture, RoPE
    /// scaling kind, tensor, missing shard...).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
