//! `<think>...</think>` in model output to `reasoning_content`, streamed or whole, as vLLM's
//! reasoning parsers do.
//!
//! - `deepseek_r1`: the output is reasoning until `</think>` (the chat template usually opens
//!   `<think>` in the prompt; a `<think>` at the start of the output is dropped). Without
//!   `</think>` the whole output is reasoning.
//! - `qwen3`: reasoning only when the output starts (after whitespace) with `<think>`; it ends
//!   at `</think>` or the end of the output. Otherwise the whole output is content.

use crate::{Error, Result};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    DeepSeekR1,
    Qwen3,
}

impl ReasoningFormat {
    /// The `--reasoning-parser` names (vLLM's).
    pub const NAMES: &'static str = "deepseek_r1, qwen3";

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "deepseek_r1" => Ok(ReasoningFormat::DeepSeekR1),
            "qwen3" => Ok(ReasoningFormat::Qwen3),
            other => Err(Error::UnknownParser {
                what: "reasoning parser",
                name: other.to_string(),
                known: Self::NAMES,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Thinking,
    Answer,
}

/// What one piece of output adds to each field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

/// Splits one request's output into reasoning and content.
#[derive(Debug)]
pub struct ReasoningParser {
    format: ReasoningFormat,
    phase: Phase,
    /// Text held back: a possible partial tag.
    pending: String,
    reasoning: String,
    content: String,
}

impl ReasoningParser {
    pub fn new(format: ReasoningFormat) -> Self {
        ReasoningParser {
            format,
            phase: Phase::Start,
            pending: String::new(),
            reasoning: String::new(),
            content: String::new(),
        }
    }

    /// Splits a whole output: (reasoning, content), each `None` when empty.
    pub fn parse(format: ReasoningFormat, text: &str) -> (Option<String>, Option<String>) {
        let mut p = ReasoningParser::new(format);
        p.push(text);
        p.finish();
        p.output()
    }

    pub fn push(&mut self, text: &str) -> ReasoningDelta {
        self.pending.push_str(text);
        let mut out = ReasoningDelta::default();
        self.run(&mut out, false);
        out
    }

    pub fn finish(&mut self) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        self.run(&mut out, true);
        out
    }

    /// (reasoning, content) so far, each `None` when empty.
    pub fn output(&self) -> (Option<String>, Option<String>) {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        (some(&self.reasoning), some(&self.content))
    }

    fn run(&mut self, out: &mut ReasoningDelta, fin: bool) {
        if self.phase == Phase::Start {
            let t = self.pending.trim_start();
            if let Some(rest) = t.strip_prefix(OPEN) {
                self.pending = rest.to_string();
                self.phase = Phase::Thinking;
            } else if !fin && OPEN.starts_with(t) {
                return; // empty or a partial `<think>`: wait
            } else {
                self.phase = match self.format {
                    ReasoningFormat::DeepSeekR1 => Phase::Thinking,
                    ReasoningFormat::Qwen3 => Phase::Answer,
                };
            }
        }
        if self.phase == Phase::Thinking {
            if let Some(i) = self.pending.find(CLOSE) {
                let r = self.pending[..i].to_string();
                self.emit_reasoning(&r, out);
                self.pending.drain(..i + CLOSE.len());
                self.phase = Phase::Answer;
            } else {
                let hold = if fin {
                    self.pending.len()
                } else {
                    (1..CLOSE.len())
                        .rev()
                        .find(|&k| self.pending.ends_with(&CLOSE[..k]))
                        .map_or(self.pending.len(), |k| self.pending.len() - k)
                };
                let r: String = self.pending.drain(..hold).collect();
                self.emit_reasoning(&r, out);
                return;
            }
        }
        let c = std::mem::take(&mut self.pending);
        out.content.push_str(&c);
        self.content.push_str(&c);
    }

    fn emit_reasoning(&mut self, r: &str, out: &mut ReasoningDelta) {
        out.reasoning.push_str(r);
        self.reasoning.push_str(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole, and streamed split at every character: all agree.
    fn check(format: ReasoningFormat, text: &str) -> (Option<String>, Option<String>) {
        let whole = ReasoningParser::parse(format, text);
        for (i, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let mut p = ReasoningParser::new(format);
            let mut r = String::new();
            let mut c = String::new();
            for d in [p.push(&text[..i]), p.push(&text[i..]), p.finish()] {
                r.push_str(&d.reasoning);
                c.push_str(&d.content);
            }
            let some = |s: String| (!s.is_empty()).then_some(s);
            assert_eq!((some(r), some(c)), whole, "split at {i}");
            assert_eq!(p.output(), whole);
        }
        whole
    }

    fn pair(r: Option<&str>, c: Option<&str>) -> (Option<String>, Option<String>) {
        (r.map(String::from), c.map(String::from))
    }

    #[test]
    fn deepseek_r1() {
        let f = ReasoningFormat::DeepSeekR1;
        assert_eq!(
            check(f, "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4."),
            pair(Some("\nLet me see: 2+2.\n"), Some("\n\nIt is 4."))
        );
        // The template opened <think> in the prompt.
        assert_eq!(
            check(f, "Hmm, é.</think>Done"),
            pair(Some("Hmm, é."), Some("Done"))
        );
        // Cut off while thinking: all reasoning, the partial tag included.
        assert_eq!(
            check(f, "still thinking </thi"),
            pair(Some("still thinking </thi"), None)
        );
    }

    #[test]
    fn qwen3() {
        let f = ReasoningFormat::Qwen3;
        assert_eq!(
            check(f, "  <think>why</think>because"),
            pair(Some("why"), Some("because"))
        );
        assert_eq!(
            check(f, "No thinking. <think>x</think>"),
            pair(None, Some("No thinking. <think>x</think>"))
        );
        assert_eq!(check(f, "<thin"), pair(None, Some("<thin")));
        assert_eq!(
            check(f, "<think>unfinished"),
            pair(Some("unfinished"), None)
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = ReasoningFormat::from_name("granite")
            .unwrap_err()
            .to_string();
        assert!(e.contains("granite") && e.contains("deepseek_r1"), "{e}");
    }
}
