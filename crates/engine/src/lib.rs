//! Runs models: loads one (weights, tokenizer, chat template), and drives requests through it
//! under the scheduler on one engine thread (`EngineHandle`): sampling, detokenization, stop
//! rules, prompt log-probabilities. Every front door (the server, `generate`, `chat`, `score`,
//! `perplexity`) submits `EngineRequest`s to it.
//!
//! Invariant: the sampler's output depends only on the logits, the sequence's own tokens and its
//! seed, never on what else runs beside it.

mod constrained;
pub mod detok;
pub mod device;
pub mod device_sampling;
mod drain;
pub mod dummy;
mod engine_core;
pub mod error;
pub mod gpu_probe;
pub mod handle;
mod host;
pub mod kv_events;
pub mod metrics;
pub mod model;
mod outbox;
pub mod profile;
pub mod request;
pub mod rng;
mod runner;
pub mod sampler;
pub mod spec;
pub mod stop;
pub mod testing;

pub use detok::IncrementalDecoder;
pub use device::Device;
pub use error::{Error, Result};
pub use handle::{EngineConfig, EngineHandle, EngineInfo, KvDtype, RequestStream};
pub use kv_events::{KvEventsConfig, KvEventsSettings, WireFormat};
pub use metrics::Metrics;
pub use model::LoadedModel;
pub use profile::{EnginePhase, ForwardProfile, HttpTimer};
pub use request::{check_token_id, EngineRequest, StreamEvent, TokenLogprob, Usage};
pub use sampler::{LogitsProcessor, Sampler};
pub use spec::SpeculativeConfig;
pub use tokenfab_models::GpuWeights;
pub use tokenfab_scheduler::HashAlgo;
pub use tokenfab_scheduler::SchedulerError;
