//! `tokenfab-bench`: measures any OpenAI-compatible server under load and prices its tokens.
//!
//! - [`suite::run_bench`] runs a [`suite::BenchConfig`]: closed-loop users or open-loop
//!   arrivals ([`runner`]), every request streamed and timed ([`client`], [`sse`]), figures per
//!   load ([`metrics`], [`stats`]), goodput and the capacity search under an SLO ([`slo`]), and
//!   an A/B comparison of two servers.
//! - [`report`] and [`plot`] turn a [`suite::BenchReport`] into a table and an SVG.
//! - [`economics`] turns a throughput into cost per million tokens and revenue per dollar.
//! - [`profile`] (`--profile`): a tokenfab server's own account of where its steps went, from
//!   its `/metrics` before and after each run, reported beside (never instead of) the client's
//!   figures.
//!
//! Invariant: the crate never decides what to measure from the server's own timings: every
//! load figure comes from the client's clock, so any server is measured the same way.

pub mod client;
pub mod economics;
pub mod metrics;
pub mod plot;
pub mod profile;
pub mod report;
pub mod runner;
pub mod slo;
pub mod sse;
pub mod stats;
pub mod suite;
pub mod workload;

pub use client::Endpoint;
pub use runner::{Bound, Load};
pub use slo::Slo;
pub use suite::{run_bench, BenchConfig, BenchReport};
pub use workload::PromptSource;

/// Every failure of this crate. Requests that fail during a run are not errors: they are
/// counted by kind in the results ([`metrics::ErrorKind`]).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`--{field}`: {msg}")]
    InvalidArg { field: &'static str, msg: String },
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from {url}: {msg}")]
    Protocol { url: String, msg: String },
    #[error("dataset {path}, line {line}: {msg}")]
    Dataset {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bench JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot {0}")]
    Plot(String),
}
