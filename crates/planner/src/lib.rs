//! `tokenfab-planner`: how many users a device holds for a model, a workload and an SLO,
//! before anyone buys the device.
//!
//! The real [`tokenfab_scheduler::Scheduler`] (and so the real KV-cache manager: the same token
//! budget, `max_num_seqs`, chunked prefill, prefix caching and preemption) plans every step
//! against a simulated executor ([`sim`]) that advances a virtual clock by a cost model
//! ([`cost`]) instead of computing: weight bytes read, KV bytes read and written, operations,
//! per-step costs, and the all-reduces of tensor parallelism. The bench's loads (closed loop,
//! Poisson or gamma arrivals, dataset lengths) replay in virtual time ([`run`]), so thousands of
//! users simulate in seconds, and the report has `tokenfab bench`'s shape.
//!
//! Devices are data ([`device`]): datasheet entries with their sources and stated efficiency
//! assumptions, or the local CPU measured by micro-benchmarks ([`probe`]). Models are shapes
//! ([`shape`]): presets, a GGUF header, or a Hugging Face `config.json`.
//!
//! Invariant: nothing is fitted to the published or measured serving results a prediction is
//! compared with; every efficiency is measured by [`probe`] or printed as an assumption.

pub mod cost;
pub mod device;
pub mod probe;
pub mod report;
pub mod run;
pub mod shape;
pub mod sim;

pub use cost::{CostModel, SeqWork, StepCost};
pub use device::Device;
pub use run::{plan, KvMemory, PlanReport, Setup, Workload};
pub use shape::{Compute, Dtype, ModelShape};

/// Every failure of the planner.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
}
