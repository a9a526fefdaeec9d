//! The crate's one error enum. [`Error::is_client_error`] tells the server which errors are the
//! request's fault (HTTP 400) and which happen while decoding (the request ends with an error).

/// Which kind of constraint an error is about; named in messages so a 400 says what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    JsonObject,
    JsonSchema,
    Regex,
    Choice,
    Grammar,
    Tools,
}

impl std::fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConstraintKind::JsonObject => "json_object",
            ConstraintKind::JsonSchema => "json_schema",
            ConstraintKind::Regex => "regex",
            ConstraintKind::Choice => "choice",
            ConstraintKind::Grammar => "grammar",
            ConstraintKind::Tools => "tools",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The schema, regex or grammar does not compile, or uses a feature llguidance does not
    /// support (a dangling or remote `$ref`, an unknown `format`, a lookaround...). The message
    /// is llguidance's, which names the offending keyword or rule.
    #[error("{kind} cannot be compiled: {message}")]
    Compile {
        kind: ConstraintKind,
        message: String,
    },
    /// The constraint's source text is over the size limit.
    #[error("{kind} is {size} bytes; the limit is {limit}")]
    TooLarge {
        kind: ConstraintKind,
        size: usize,
        limit: usize,
    },
    /// Compiling took longer than the wall-clock limit (fuel limits normally stop it first).
    #[error("{kind} took longer than {limit_ms} ms to compile")]
    CompileTimeout { kind: ConstraintKind, limit_ms: u64 },
    /// A request field is malformed: an empty `choice` list, a `tool_choice` naming a function
    /// that is not in `tools`, `tool_choice: "required"` without tools, a tool without a name.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// `--tool-call-parser` / `--reasoning-parser` names a parser that does not exist.
    #[error("unknown {what} `{name}`; known: {known}")]
    UnknownParser {
        what: &'static str,
        name: String,
        known: &'static str,
    },
    /// The tokenizer cannot back a token trie (no EOS token, a vocabulary larger than the logits).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The matcher failed while decoding: a step ran out of fuel, or a token the mask did not
    /// allow was fed to it. The request ends with an error; the server is not at fault.
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

impl Error {
    /// Whether the error is the client's (the server answers 400 before generating anything).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Error::Tokenizer(_) | Error::Matcher(_))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
