//! Runs models: loads one (weights, tokenizer, chat template), samples tokens, turns them back into
//! text, and drives a sequence through the model.
//!
//! Invariant: the sampler's output depends only on the logits, the sequence's own tokens and its
//! seed, never on what else runs beside it.

pub mod detok;
pub mod error;
pub mod model;
pub mod rng;
pub mod sampler;
pub mod session;

pub use detok::IncrementalDecoder;
pub use error::{Error, Result};
pub use model::LoadedModel;
pub use sampler::Sampler;
pub use session::Session;
