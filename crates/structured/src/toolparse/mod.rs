//! Tool calls in model output: the formats models are trained on, parsed whole (non-streaming)
//! or incrementally into OpenAI-style deltas (index, id, name, argument fragments).
//!
//! - `hermes` (Hermes, Qwen 2.5/3, and tokenfab's generic format for templates without tools):
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, repeated for parallel calls.
//! - `llama3_json` (Llama 3.1-3.3): the whole output is `{"name": ..., "parameters": {...}}`,
//!   optionally after `<|python_tag|>`, several separated by `;`. Only at the start of the
//!   output: text that starts otherwise is content.
//! - `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
//!
//! Text outside calls is content; whitespace between content and a call is dropped. A call
//! that does not parse (or is cut off by the end of output) is returned as content, as vLLM's
//! parsers do, and is not among the tool calls. Streaming and non-streaming give the same
//! result for every split of the text (tested at every byte).

mod json_scan;
mod stream;
#[cfg(test)]
mod stream_tests;

pub use stream::ToolCallParser;

use crate::{Error, Result};

/// A tool-call output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

impl ToolFormat {
    /// The `--tool-call-parser` names (vLLM's).
    pub const NAMES: &'static str = "hermes, llama3_json, mistral";

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "hermes" | "qwen" | "qwen2_5" | "qwen3" => Ok(ToolFormat::Hermes),
            "llama3_json" | "llama3" | "llama" => Ok(ToolFormat::Llama3Json),
            "mistral" => Ok(ToolFormat::Mistral),
            other => Err(Error::UnknownParser {
                what: "tool-call parser",
                name: other.to_string(),
                known: Self::NAMES,
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// The format a chat template writes tool calls in, from its text; `None` when the
    /// template shows none (then tokenfab uses [`ToolFormat::Hermes`] with a generic
    /// instruction, see [`crate::tools::generic_instructions`]).
    pub fn detect(template_source: &str) -> Option<Self> {
        if template_source.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if template_source.contains("[TOOL_CALLS]") {
            Some(ToolFormat::Mistral)
        } else if template_source.contains("<|python_tag|>")
            || template_source.contains("\"parameters\": ")
        {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The text that opens a tool-call section (Llama 3's is optional).
    pub fn start_tag(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "<tool_call>",
            ToolFormat::Llama3Json => "<|python_tag|>",
            ToolFormat::Mistral => "[TOOL_CALLS]",
        }
    }

    /// The key holding the arguments in the format's call object.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

/// One complete tool call, as `message.tool_calls[i]` (`type` is always `function`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (an object), as the model wrote it.
    pub arguments: String,
}

/// One streamed piece of a tool call, as `delta.tool_calls[i]` of a chunk: the first piece of a
/// call carries `id` and `name`, later ones argument text to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What one piece of model output adds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolDelta {
    pub content: String,
    pub tool_calls: Vec<ToolCallDelta>,
}

impl ToolDelta {
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.tool_calls.is_empty()
    }
}

/// A whole output split into content and tool calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolOutput {
    /// `None` when there is no text besides the calls.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// A call id: `call_` and 24 letters/digits, or 9 for Mistral, whose templates require that.
/// Derived from the request's seed and the call's index, so ids are unique per request when
/// seeds are (the server passes a random one).
pub fn call_id(format: ToolFormat, seed: u64, index: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (prefix, len) = match format {
        ToolFormat::Mistral => ("", 9),
        _ => ("call_", 24),
    };
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_detection() {
        assert_eq!(ToolFormat::from_name("hermes").unwrap(), ToolFormat::Hermes);
        assert_eq!(
            ToolFormat::from_name("llama3_json").unwrap(),
            ToolFormat::Llama3Json
        );
        let err = ToolFormat::from_name("pythonic").unwrap_err();
        assert!(err.to_string().contains("pythonic") && err.to_string().contains("hermes"));
        assert_eq!(
            ToolFormat::detect("{{- '<tool_call>\\n' }}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::detect("{{ '[TOOL_CALLS]' }}"),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(
            ToolFormat::detect("{{- \"<|python_tag|>\" }}"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(ToolFormat::detect("{{ message['content'] }}"), None);
    }

    #[test]
    fn ids_are_unique_and_shaped_per_format() {
        let a = call_id(ToolFormat::Hermes, 7, 0);
        let b = call_id(ToolFormat::Hermes, 7, 1);
        let c = call_id(ToolFormat::Hermes, 8, 0);
        assert!(a.starts_with("call_") && a.len() == 29);
        assert!(a != b && a != c);
        let m = call_id(ToolFormat::Mistral, 7, 0);
        assert_eq!(m.len(), 9);
        assert!(m.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a, call_id(ToolFormat::Hermes, 7, 0));
    }
}
