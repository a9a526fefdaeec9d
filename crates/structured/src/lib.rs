//! Structured outputs and tool calling: constrained decoding over [llguidance] (JSON schema,
//! regex, choice, Lark grammars, tool-call grammars), tool-call output parsers (Hermes/Qwen,
//! Llama 3 JSON, Mistral) and the `<think>` reasoning parser.
//!
//! # How the engine uses it
//!
//! Once per model, when it loads: `Grammars::new(tokenizer, n_vocab, Limits::default())` builds
//! the token trie (token bytes, special tokens, end-of-generation ids) and llguidance's factory;
//! share it behind an `Arc` between the server (which compiles) and the engine.
//!
//! Per request, in the server's validation: `grammars.compile(&constraint)` (cached per
//! distinct constraint), then `compiled.matcher()` gives the request its own
//! [`RequestMatcher`], carried by the request into the engine. Compiling can take
//! milliseconds: call it off the async runtime (`spawn_blocking`).
//!
//! Each step, for the rows that sample (one per constrained request in the batch):
//!
//! ```text
//! masks = compute_masks(&mut constrained_matchers)   // rayon, in parallel with the forward
//! logits = forward(batch)
//! for each constrained row: matcher.mask().apply(&mut row)   // disallowed -> -inf
//! penalties, logit_bias, temperature/top-p/top-k, sample     // as for free rows
//! for each constrained row: matcher.consume(token)
//! ```
//!
//! - The mask goes first, before penalties, `logit_bias` and sampling, so nothing can bring a
//!   disallowed token back (`-inf` stays `-inf` through all of them). Logprobs come from the
//!   masked logits (vLLM applies its grammar bitmask before its sampler computes them).
//! - A row's mask depends only on its own matcher; free rows are untouched; a batch mixes both
//!   freely. So a row's result never depends on its neighbours.
//! - `compute_masks` only reads matchers and writes their own mask buffers, so it can run on
//!   the rayon pool while the forward pass runs (`rayon::join`, or a thread started before the
//!   forward and joined before sampling). On the CPU backend both compete for the same cores;
//!   on a GPU the masks are hidden. The bench (`benches/masks.rs`: a 20-property schema over
//!   SmolLM2's 49,152 tokens) measured about 50 µs per row per step with warm lexer caches and
//!   about 200 µs with cold ones, on a loaded 2-core machine: rerun it idle for real figures.
//! - Once the grammar is complete the mask allows only end-of-generation tokens, so the
//!   request ends with `finish_reason: "stop"`; [`RequestMatcher::stop`] says so too. A
//!   matcher error (a step over llguidance's fuel, [`Error::Matcher`]) ends that request with
//!   an error, never the batch.
//! - Speculative decoding: [`RequestMatcher::try_consume`] checks draft tokens and
//!   [`RequestMatcher::rollback`] undoes rejected ones.
//! - `ignore_eos` must not apply to constrained requests: the grammar decides the end.
//!
//! # What the server maps to 400
//!
//! Every [`Error`] with [`Error::is_client_error`]: a schema, regex or grammar that does not
//! compile or uses an unsupported feature (a dangling `$ref`, a remote `$ref`, an unknown
//! `format`, a lookaround: [`Error::Compile`], whose message names it), one over the size
//! limit ([`Error::TooLarge`]) or the compile time limit ([`Error::CompileTimeout`]), and
//! malformed fields ([`Error::Invalid`]: empty `choice`, `tool_choice` naming an unknown
//! function, `required` without tools, non-function tools). [`Error::Tokenizer`] is a
//! startup error; [`Error::Matcher`] happens mid-generation.
//!
//! # Tools in the prompt and in the output
//!
//! The chat template's own format is recognised with [`ToolFormat::detect`] (or chosen by
//! `--tool-call-parser` via [`ToolFormat::from_name`]). When the template reads `tools`
//! (`ChatTemplate::takes_tools`), render with `ChatTemplate::render_with_tools`; otherwise
//! (the default model, SmolLM2, whose ChatML template ignores tools) rewrite the messages
//! with [`tools::generic_messages`] and use [`ToolFormat::Hermes`]. [`tools::tool_constraint`]
//! gives the grammar for `tool_choice`; [`ChatOutputParser`] splits the output into
//! `reasoning_content`, `content` and `tool_calls`, whole or as streamed deltas.

pub mod constraint;
pub mod error;
pub mod matcher;
pub mod output;
pub mod reasoning;
mod schema;
mod tokenizer;
pub mod toolparse;
pub mod tools;

pub use constraint::{Compiled, Constraint, Grammars, Limits, ToolGrammar};
pub use error::{ConstraintKind, Error, Result};
pub use matcher::{compute_masks, RequestMatcher, Stop, TokenMask};
pub use output::{ChatDelta, ChatOutput, ChatOutputParser};
pub use reasoning::{ReasoningFormat, ReasoningParser};
pub use toolparse::{ParsedToolOutput, ToolCall, ToolCallDelta, ToolCallParser, ToolFormat};
pub use tools::{Tool, ToolChoice};
