//! Plain value types shared across tokenfab: ids, sampling parameters, finish reasons.
//!
//! Invariant: this crate depends on nothing and holds no logic beyond validation-free constructors.

pub mod profile;

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// A request's id inside the engine, unique for the engine's lifetime.
pub type RequestId = u64;

/// A physical block of the paged KV cache.
pub type BlockId = u32;

/// Parameters of one request's sampler. Defaults are greedy with no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means disabled.
    pub top_k: usize,
    /// 1.0 means disabled.
    pub top_p: f32,
    /// 0.0 means disabled.
    pub min_p: f32,
    /// 1.0 means disabled (llama.cpp / HF style multiplicative penalty).
    pub repetition_penalty: f32,
    /// 0.0 means disabled (OpenAI style, subtracted once per seen token).
    pub presence_penalty: f32,
    /// 0.0 means disabled (OpenAI style, subtracted per occurrence).
    pub frequency_penalty: f32,
    /// Seed of this request's random stream; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// True when sampling reduces to argmax over the (penalized) logits.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Why a sequence stopped generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The client went away or the request was cancelled.
    Abort,
}

impl FinishReason {
    /// The OpenAI API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}
