//! One parser for a chat response: reasoning first (`<think>`), then tool calls in what remains.

use crate::reasoning::{ReasoningFormat, ReasoningParser};
use crate::toolparse::{ToolCall, ToolCallDelta, ToolCallParser, ToolFormat};

/// What one piece of output adds to a chat message (a streamed chunk's `delta`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatDelta {
    pub reasoning_content: String,
    pub content: String,
    pub tool_calls: Vec<ToolCallDelta>,
}

impl ChatDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning_content.is_empty() && self.content.is_empty() && self.tool_calls.is_empty()
    }
}

/// A whole chat message (non-streaming), each field `None`/empty when absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatOutput {
    pub reasoning_content: Option<String>,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// Splits one request's output; with neither parser it passes text through as content.
#[derive(Debug)]
pub struct ChatOutputParser {
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolCallParser>,
    content: String,
}

impl ChatOutputParser {
    /// `tools`: the format and the request's id seed, when the request has tools and a
    /// `tool_choice` other than `none`.
    pub fn new(reasoning: Option<ReasoningFormat>, tools: Option<(ToolFormat, u64)>) -> Self {
        ChatOutputParser {
            reasoning: reasoning.map(ReasoningParser::new),
            tools: tools.map(|(f, seed)| ToolCallParser::new(f, seed)),
            content: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> ChatDelta {
        self.step(text, false)
    }

    pub fn finish(&mut self) -> ChatDelta {
        self.step("", true)
    }

    fn step(&mut self, text: &str, fin: bool) -> ChatDelta {
        let mut out = ChatDelta::default();
        let answer = match &mut self.reasoning {
            Some(r) => {
                let mut d = r.push(text);
                if fin {
                    let f = r.finish();
                    d.reasoning.push_str(&f.reasoning);
                    d.content.push_str(&f.content);
                }
                out.reasoning_content = d.reasoning;
                d.content
            }
            None => text.to_string(),
        };
        match &mut self.tools {
            Some(t) => {
                let mut d = t.push(&answer);
                if fin {
                    let f = t.finish();
                    d.content.push_str(&f.content);
                    d.tool_calls.extend(f.tool_calls);
                }
                out.content = d.content;
                out.tool_calls = d.tool_calls;
            }
            None => {
                self.content.push_str(&answer);
                out.content = answer;
            }
        }
        out
    }

    /// The message so far.
    pub fn output(&self) -> ChatOutput {
        let reasoning_content = self.reasoning.as_ref().and_then(|r| r.output().0);
        match &self.tools {
            Some(t) => {
                let o = t.output();
                ChatOutput {
                    reasoning_content,
                    content: o.content,
                    tool_calls: o.tool_calls,
                }
            }
            None => ChatOutput {
                reasoning_content,
                content: (!self.content.is_empty()).then(|| self.content.clone()),
                tool_calls: Vec::new(),
            },
        }
    }

    /// `finish_reason` should be `tool_calls` (when generation ended on its own).
    pub fn has_tool_calls(&self) -> bool {
        self.tools.as_ref().is_some_and(ToolCallParser::has_calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_then_a_tool_call() {
        let text = "<think>The user wants weather.</think>\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": \"Rome\"}}\n</tool_call>";
        let mut p =
            ChatOutputParser::new(Some(ReasoningFormat::Qwen3), Some((ToolFormat::Hermes, 1)));
        let mut reasoning = String::new();
        let mut args = String::new();
        for piece in text.as_bytes().chunks(5) {
            let d = p.push(std::str::from_utf8(piece).unwrap());
            reasoning.push_str(&d.reasoning_content);
            assert!(d.content.is_empty(), "{d:?}");
            args.extend(d.tool_calls.iter().map(|c| c.arguments.as_str()));
        }
        assert!(p.finish().is_empty());
        assert_eq!(reasoning, "The user wants weather.");
        assert_eq!(args, r#"{"c": "Rome"}"#);
        let out = p.output();
        assert_eq!(
            out.reasoning_content.as_deref(),
            Some("The user wants weather.")
        );
        assert_eq!(out.content, None);
        assert_eq!(out.tool_calls[0].name, "w");
        assert!(p.has_tool_calls());
    }

    #[test]
    fn without_parsers_text_is_content() {
        let mut p = ChatOutputParser::new(None, None);
        assert_eq!(p.push("a<think>").content, "a<think>");
        assert!(p.finish().is_empty());
        assert_eq!(p.output().content.as_deref(), Some("a<think>"));
        assert!(!p.has_tool_calls());
    }
}
