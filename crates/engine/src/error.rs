//! The one error type of the engine crate: loading failures, and why a request was refused.
//!
//! Refusals keep their kind so that a front door can answer each properly (the server maps them
//! to 400, 413, 429 and 503 in its one error table).

use tokenfab_scheduler::SchedulerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loader(#[from] tokenfab_loader::Error),
    #[error(transparent)]
    Model(#[from] tokenfab_models::Error),
    /// The scheduler refuses the request (empty, longer than the context, larger than the whole
    /// KV pool), or its configuration.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A token id outside the model's vocabulary, in the request field `field`.
    #[error("`{field}` token ids must be in [0, {vocab_size}). Given: {id}")]
    TokenOutOfRange {
        field: &'static str,
        id: i64,
        vocab_size: usize,
    },
    /// Too many requests wait already.
    #[error("the queue is full ({max} requests waiting); retry after {retry_after_secs} s")]
    QueueFull { max: usize, retry_after_secs: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the engine has stopped")]
    EngineDead,
    /// A setting or a model the engine cannot run with; the message names what.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
