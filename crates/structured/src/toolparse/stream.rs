//! The incremental tool-call parser: a small state machine over text deltas.

use serde_json::Value;

use super::json_scan::ObjectScanner;
use super::{call_id, ParsedToolOutput, ToolCall, ToolCallDelta, ToolDelta, ToolFormat};

/// Parses one request's output into content and tool calls, piece by piece.
#[derive(Debug)]
pub struct ToolCallParser {
    format: ToolFormat,
    seed: u64,
    /// Text received and not yet consumed (a possible partial tag, held whitespace).
    pending: String,
    state: State,
    calls: Vec<ToolCall>,
    content: String,
    /// A call just ended: whitespace after it is dropped.
    after_call: bool,
    /// Llama 3: nothing but whitespace seen yet.
    at_start: bool,
    /// Llama 3: plain text has begun, so no more calls.
    calls_closed: bool,
}

#[derive(Debug)]
enum State {
    Text,
    Section(Section),
}

/// Inside a tool-call section (after the start tag, or at Llama 3's opening `{`).
#[derive(Debug)]
struct Section {
    /// Text consumed in this section since it began or since its last complete call: what
    /// becomes content if the next call does not parse.
    raw: String,
    phase: Phase,
    /// Mistral: the calls are in a `[...]` array.
    array: bool,
}

#[derive(Debug)]
enum Phase {
    /// Mistral: before `[` (or a bare object).
    Open,
    BeforeObject,
    Object(Box<CallScan>),
    /// After a call: a separator, the closing tag or bracket, or the end.
    AfterObject,
}

/// One call object being scanned.
#[derive(Debug)]
struct CallScan {
    /// The object's text so far, from its `{`.
    text: String,
    scanner: ObjectScanner,
    /// Members already looked at.
    seen: usize,
    name: Option<String>,
    name_sent: bool,
    /// The arguments member once complete (value range in `text`).
    args: Option<std::ops::Range<usize>>,
    /// Bytes of the raw arguments object already streamed.
    args_sent: usize,
    /// The argument text streamed so far.
    args_text: String,
}

const ARG_KEYS: [&str; 2] = ["arguments", "parameters"];

fn is_args_key(format: ToolFormat, key: &str) -> bool {
    key == format.arguments_key() || ARG_KEYS.contains(&key)
}

fn decode_str(raw: &str) -> Option<String> {
    serde_json::from_str::<String>(raw).ok()
}

/// Start of the longest suffix of `s` that is a proper prefix of `tag` (`s.len()` if none).
fn partial_tag_start(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.ends_with(&tag[..k]))
        .map_or(s.len(), |k| s.len() - k)
}

impl ToolCallParser {
    /// `seed` makes the call ids (see [`call_id`]); pass a random one per request.
    pub fn new(format: ToolFormat, seed: u64) -> Self {
        ToolCallParser {
            format,
            seed,
            pending: String::new(),
            state: State::Text,
            calls: Vec::new(),
            content: String::new(),
            after_call: false,
            at_start: true,
            calls_closed: false,
        }
    }

    /// Parses a whole output (non-streaming).
    pub fn parse(format: ToolFormat, text: &str, seed: u64) -> ParsedToolOutput {
        let mut p = ToolCallParser::new(format, seed);
        p.push(text);
        p.finish();
        p.output()
    }

    /// Feeds the next piece of output; returns what it completes.
    pub fn push(&mut self, text: &str) -> ToolDelta {
        self.pending.push_str(text);
        let mut out = ToolDelta::default();
        while self.advance(&mut out, false) {}
        out
    }

    /// The output ended: flushes held text; a call cut off becomes content.
    pub fn finish(&mut self) -> ToolDelta {
        let mut out = ToolDelta::default();
        while self.advance(&mut out, true) {}
        out
    }

    /// Content and complete calls so far.
    pub fn output(&self) -> ParsedToolOutput {
        ParsedToolOutput {
            content: (!self.content.is_empty()).then(|| self.content.clone()),
            tool_calls: self.calls.clone(),
        }
    }

    /// Whether any complete tool call was found (`finish_reason: "tool_calls"`).
    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// One step of the state machine; `true` when it made progress and should run again.
    fn advance(&mut self, out: &mut ToolDelta, fin: bool) -> bool {
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text => self.text(out, fin),
            State::Section(sec) => self.section(sec, out, fin),
        }
    }

    fn emit_text(&mut self, text: &str, out: &mut ToolDelta) {
        let t = if self.after_call {
            text.trim_start()
        } else {
            text
        };
        if t.is_empty() {
            return;
        }
        self.after_call = false;
        out.content.push_str(t);
        self.content.push_str(t);
    }

    fn flush_pending(&mut self, out: &mut ToolDelta) {
        let p = std::mem::take(&mut self.pending);
        self.emit_text(&p, out);
    }

    fn enter_section(&mut self, consumed: usize, phase: Phase) -> bool {
        let raw: String = self.pending.drain(..consumed).collect();
        self.at_start = false;
        self.state = State::Section(Section {
            raw,
            phase,
            array: false,
        });
        true
    }

    fn text(&mut self, out: &mut ToolDelta, fin: bool) -> bool {
        if self.format == ToolFormat::Llama3Json {
            return self.llama_text(out, fin);
        }
        let tag = self.format.start_tag();
        if let Some(i) = self.pending.find(tag) {
            let before = self.pending[..i].trim_end().to_string();
            self.emit_text(&before, out);
            self.pending.drain(..i);
            let phase = match self.format {
                ToolFormat::Mistral => Phase::Open,
                _ => Phase::BeforeObject,
            };
            return self.enter_section(tag.len(), phase);
        }
        if fin {
            self.flush_pending(out);
            return false;
        }
        // Hold a possible partial tag and the whitespace before it.
        let hold = partial_tag_start(&self.pending, tag);
        let keep = self.pending[..hold].trim_end().len();
        let ready: String = self.pending.drain(..keep).collect();
        self.emit_text(&ready, out);
        false
    }

    /// Llama 3: a call only at the very start, with or without `<|python_tag|>`.
    fn llama_text(&mut self, out: &mut ToolDelta, fin: bool) -> bool {
        if self.calls_closed || !self.at_start {
            self.flush_pending(out);
            return false;
        }
        let ws = self.pending.len() - self.pending.trim_start().len();
        let t = &self.pending[ws..];
        let tag = self.format.start_tag();
        if t.starts_with(tag) {
            return self.enter_section(ws + tag.len(), Phase::BeforeObject);
        }
        if t.starts_with('{') {
            return self.enter_section(ws, Phase::BeforeObject);
        }
        if !fin && tag.starts_with(t) {
            return false; // empty or a partial tag: wait
        }
        self.at_start = false;
        self.calls_closed = true;
        self.flush_pending(out);
        false
    }

    /// The section ended normally (after a complete call).
    fn end_section(&mut self) -> bool {
        self.state = State::Text;
        self.after_call = true;
        if self.format == ToolFormat::Llama3Json {
            self.calls_closed = true;
        }
        true
    }

    /// The section does not hold a valid call: its text becomes content.
    fn malformed(&mut self, raw: &str, out: &mut ToolDelta) -> bool {
        self.emit_text(raw, out);
        self.state = State::Text;
        if self.format == ToolFormat::Llama3Json {
            self.calls_closed = true;
        }
        true
    }

    /// Moves leading whitespace of `pending` into the section's raw text; `None` when nothing
    /// else is pending yet.
    fn skip_ws(&mut self, sec: &mut Section) -> Option<char> {
        let ws = self.pending.len() - self.pending.trim_start().len();
        sec.raw.extend(self.pending.drain(..ws));
        self.pending.chars().next()
    }

    fn section(&mut self, mut sec: Section, out: &mut ToolDelta, fin: bool) -> bool {
        match std::mem::replace(&mut sec.phase, Phase::BeforeObject) {
            Phase::Open => match self.skip_ws(&mut sec) {
                None if fin => self.malformed(&sec.raw, out),
                None => {
                    sec.phase = Phase::Open;
                    self.state = State::Section(sec);
                    false
                }
                Some('[') => {
                    sec.raw.push(self.pending.remove(0));
                    sec.array = true;
                    self.state = State::Section(sec);
                    true
                }
                Some('{') => {
                    self.state = State::Section(sec);
                    true
                }
                Some(_) => self.malformed(&sec.raw, out),
            },
            Phase::BeforeObject => match self.skip_ws(&mut sec) {
                None if fin => self.malformed(&sec.raw, out),
                None => {
                    self.state = State::Section(sec);
                    false
                }
                Some('{') => {
                    sec.phase = Phase::Object(Box::new(CallScan {
                        text: String::new(),
                        scanner: ObjectScanner::new(),
                        seen: 0,
                        name: None,
                        name_sent: false,
                        args: None,
                        args_sent: 0,
                        args_text: String::new(),
                    }));
                    self.state = State::Section(sec);
                    true
                }
                Some(_) => self.malformed(&sec.raw, out),
            },
            Phase::Object(scan) => self.object(sec, scan, out, fin),
            Phase::AfterObject => self.after_object(sec, fin),
        }
    }

    fn object(
        &mut self,
        mut sec: Section,
        mut scan: Box<CallScan>,
        out: &mut ToolDelta,
        fin: bool,
    ) -> bool {
        scan.text.push_str(&self.pending);
        self.pending.clear();
        scan.scanner.feed(&scan.text);
        if scan.scanner.is_error() {
            // The offending byte (a whole character: continuation bytes only occur inside
            // strings, where nothing is an error) and what follows are parsed again as text.
            let rest = scan.text.split_off(scan.scanner.scanned() - 1);
            self.pending = rest;
            sec.raw.push_str(&scan.text);
            return self.malformed(&sec.raw, out);
        }
        let index = self.calls.len();
        self.stream_call(&mut scan, index, out);
        if let Some(end) = scan.scanner.end {
            self.pending = scan.text.split_off(end);
            return match self.finish_call(&mut scan, index, out) {
                Some(call) => {
                    self.calls.push(call);
                    sec.raw.clear();
                    sec.phase = Phase::AfterObject;
                    self.state = State::Section(sec);
                    true
                }
                None => {
                    sec.raw.push_str(&scan.text);
                    self.malformed(&sec.raw, out)
                }
            };
        }
        if fin {
            sec.raw.push_str(&scan.text);
            return self.malformed(&sec.raw, out);
        }
        sec.phase = Phase::Object(scan);
        self.state = State::Section(sec);
        false
    }

    /// Sends the name once known (and the arguments begun), then the raw arguments text as it
    /// arrives.
    fn stream_call(&self, scan: &mut CallScan, index: usize, out: &mut ToolDelta) {
        for (k, v) in &scan.scanner.members[scan.seen..] {
            let Some(key) = decode_str(&scan.text[k.clone()]) else {
                continue;
            };
            if key == "name" {
                scan.name = decode_str(&scan.text[v.clone()]);
            } else if is_args_key(self.format, &key) && scan.args.is_none() {
                scan.args = Some(v.clone());
            }
        }
        scan.seen = scan.scanner.members.len();
        let open_args = scan.scanner.open_member().and_then(|(k, start)| {
            let key = decode_str(&scan.text[k])?;
            is_args_key(self.format, &key).then_some(start)
        });
        // Raw text of the arguments object available now.
        let raw = match (&scan.args, open_args) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(start)) => Some(start..scan.scanner.scanned()),
            (None, None) => None,
        };
        // Llama 3 output that is JSON but not a call has no `parameters`: no name is sent
        // for it.
        let begun =
            raw.is_some() || (scan.scanner.is_done() && self.format != ToolFormat::Llama3Json);
        if !scan.name_sent && begun {
            if let Some(name) = &scan.name {
                out.tool_calls.push(ToolCallDelta {
                    index,
                    id: Some(call_id(self.format, self.seed, index)),
                    name: Some(name.clone()),
                    arguments: String::new(),
                });
                scan.name_sent = true;
            }
        }
        let Some(raw) = raw else { return };
        // Only an object is streamed raw; a string or null is sent whole at the end.
        if !scan.name_sent || !scan.text[raw.clone()].starts_with('{') {
            return;
        }
        let from = raw.start + scan.args_sent;
        if from < raw.end {
            let piece = &scan.text[from..raw.end];
            scan.args_sent += piece.len();
            scan.args_text.push_str(piece);
            push_args(out, index, piece);
        }
    }

    /// The object is complete: a call when it parses and has a name (and, for Llama 3, its
    /// `parameters`); its remaining argument text is sent.
    fn finish_call(
        &self,
        scan: &mut CallScan,
        index: usize,
        out: &mut ToolDelta,
    ) -> Option<ToolCall> {
        let parsed: Value = serde_json::from_str(&scan.text).ok()?;
        if !parsed.is_object() {
            return None;
        }
        let name = scan.name.clone()?;
        let args = match &scan.args {
            None if self.format == ToolFormat::Llama3Json => return None,
            None => "{}".to_string(),
            Some(r) => {
                let raw = &scan.text[r.clone()];
                match raw.as_bytes()[0] {
                    b'{' => raw.to_string(),
                    b'"' => decode_str(raw)?,
                    b'n' => "{}".to_string(),
                    _ => return None,
                }
            }
        };
        debug_assert!(scan.name_sent, "the name is sent once the object is done");
        if scan.args_text.len() < args.len() {
            let rest = &args[scan.args_text.len()..];
            push_args(out, index, rest);
            scan.args_text.push_str(rest);
        }
        Some(ToolCall {
            id: call_id(self.format, self.seed, index),
            name,
            arguments: args,
        })
    }

    fn after_object(&mut self, mut sec: Section, fin: bool) -> bool {
        let next = self.skip_ws(&mut sec);
        let keep_waiting = |this: &mut Self, sec: Section| {
            this.state = State::Section(Section {
                phase: Phase::AfterObject,
                ..sec
            });
            false
        };
        match (self.format, next) {
            (_, None) if !fin => keep_waiting(self, sec),
            (_, None) => self.end_section(),
            (ToolFormat::Hermes, Some(_)) => {
                const CLOSE: &str = "</tool_call>";
                if self.pending.starts_with(CLOSE) {
                    self.pending.drain(..CLOSE.len());
                    self.end_section()
                } else if !fin && CLOSE.starts_with(self.pending.as_str()) {
                    keep_waiting(self, sec)
                } else {
                    // No closing tag: the call stands; what follows is text.
                    self.end_section()
                }
            }
            (ToolFormat::Mistral, Some(',')) | (ToolFormat::Llama3Json, Some(';')) => {
                self.pending.remove(0);
                sec.raw.clear();
                sec.phase = Phase::BeforeObject;
                self.state = State::Section(sec);
                true
            }
            (ToolFormat::Mistral, Some(']')) if sec.array => {
                self.pending.remove(0);
                self.end_section()
            }
            _ => self.end_section(),
        }
    }
}

fn push_args(out: &mut ToolDelta, index: usize, piece: &str) {
    if piece.is_empty() {
        return;
    }
    match out.tool_calls.last_mut() {
        Some(d) if d.index == index => d.arguments.push_str(piece),
        _ => out.tool_calls.push(ToolCallDelta {
            index,
            arguments: piece.to_string(),
            ..ToolCallDelta::default()
        }),
    }
}
