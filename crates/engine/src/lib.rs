//! Runs models: loads one (weights, tokenizer, chat template), samples tokens, turns them back into
//! text, and drives sequences through the model: one alone (`Session`) or many at once under the
//! scheduler (`EngineHandle`, the serving engine's thread).
//!
//! Invariant: the sampler's output depends only on the logits, the sequence's own tokens and its
//! seed, never on what else runs beside it.

pub mod detok;
pub mod device;
mod drain;
pub mod dummy;
mod engine_core;
pub mod error;
pub mod handle;
pub mod metrics;
pub mod model;
mod outbox;
pub mod request;
pub mod rng;
mod runner;
pub mod sampler;
pub mod session;
pub mod stop;
pub mod testing;

pub use detok::IncrementalDecoder;
pub use device::Device;
pub use error::{Error, Result};
pub use handle::{EngineConfig, EngineHandle, EngineInfo, KvDtype, RequestStream, SubmitError};
pub use metrics::Metrics;
pub use model::LoadedModel;
pub use request::{EngineRequest, StreamEvent, TokenLogprob, Usage};
pub use sampler::Sampler;
pub use session::Session;
