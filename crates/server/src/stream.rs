//! Streaming as a small state machine over the engine's events (habit 11): each machine takes
//! `(choice index, StreamEvent)` and returns the SSE frames to send, and knows when the response
//! is complete. No I/O here; `sse.rs` drives a machine over the merged engine streams.

use serde::Serialize;
use serde_json::Value;
use tokenfab_engine::{StreamEvent, Usage};

use tokenfab_structured::ChatOutputParser;

use crate::error::ApiError;
use crate::logprobs::{chat_token, CompletionLogprobsBuilder, Vocab};
use crate::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, Completion, CompletionChoice,
    CompletionLogprobs, UsageOut,
};
use crate::validation::ValidRequest;

/// One SSE `data:` payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Chunk(Value),
    /// `{"error": {...}}`; the stream ends after it.
    Error(Value),
    /// `[DONE]`.
    Done,
}

/// What every response carries.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A machine `sse.rs` can drive.
pub trait StreamMachine: Send + 'static {
    /// Frames sent before any engine event (chat: the role of every choice).
    fn start(&mut self) -> Vec<Frame>;
    fn on_event(&mut self, choice: usize, ev: StreamEvent) -> Vec<Frame>;
    /// True once `[DONE]` was produced.
    fn is_done(&self) -> bool;
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Which choices are still open, and the token counts of those that ended.
#[derive(Debug)]
pub struct Tally {
    n: usize,
    open: Vec<bool>,
    /// Per prompt: (prompt tokens, cached tokens), counted once however many choices it has.
    prompts: Vec<Option<(usize, usize)>>,
    completion: usize,
}

impl Tally {
    pub fn new(num_prompts: usize, n: usize) -> Self {
        Self {
            n,
            open: vec![true; num_prompts * n],
            prompts: vec![None; num_prompts],
            completion: 0,
        }
    }

    pub fn end(&mut self, choice: usize, u: &Usage) {
        if let Some(o) = self.open.get_mut(choice) {
            *o = false;
        }
        if let Some(p) = self.prompts.get_mut(choice / self.n.max(1)) {
            p.get_or_insert((u.prompt_tokens, u.cached_tokens));
        }
        self.completion += u.completion_tokens;
    }

    pub fn all_ended(&self) -> bool {
        self.open.iter().all(|o| !o)
    }

    pub fn usage(&self) -> UsageOut {
        let (p, c) = self
            .prompts
            .iter()
            .flatten()
            .fold((0, 0), |(p, c), &(pp, cc)| (p + pp, c + cc));
        UsageOut::new(p, self.completion, c)
    }
}

/// The frames that end a stream in error; `None` for the events that are not errors.
fn error_frames(ev: &StreamEvent) -> Option<Vec<Frame>> {
    let e = match ev {
        StreamEvent::Error(msg) => ApiError::Engine(msg.clone()),
        StreamEvent::ClientTimeout { after } => ApiError::StreamTimeout {
            secs: after.as_secs_f64(),
        },
        _ => return None,
    };
    Some(vec![Frame::Error(json(&e.body())), Frame::Done])
}

/// `chat.completion.chunk` frames.
pub struct ChatStream {
    meta: Meta,
    include_usage: bool,
    logprobs: bool,
    vocab: Vocab,
    tally: Tally,
    done: bool,
    /// (choices,) each choice's split into content, reasoning and tool calls; `None`: text
    /// passes through as content.
    parsers: Vec<Option<ChatOutputParser>>,
}

impl ChatStream {
    pub fn new(meta: Meta, v: &ValidRequest, vocab: Vocab) -> Self {
        Self {
            meta,
            include_usage: v.include_usage(),
            logprobs: v.logprobs().is_some(),
            vocab,
            tally: Tally::new(v.prompts().len(), v.n()),
            done: false,
            parsers: (0..v.num_choices())
                .map(|_| v.chat_parse().parser())
                .collect(),
        }
    }

    /// What `text` adds to choice `i`'s message; `None` when nothing (yet).
    fn split(&mut self, i: usize, text: String) -> Option<ChatDelta> {
        match self.parsers.get_mut(i).and_then(Option::as_mut) {
            Some(p) => crate::tools::delta(p.push(&text)),
            None => (!text.is_empty()).then(|| ChatDelta {
                content: Some(text),
                ..Default::default()
            }),
        }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<UsageOut>) -> Frame {
        Frame::Chunk(json(&ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }))
    }

    fn delta(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> Frame {
        self.chunk(
            vec![ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            None,
        )
    }
}

impl StreamMachine for ChatStream {
    fn start(&mut self) -> Vec<Frame> {
        (0..self.tally.open.len())
            .map(|i| {
                let d = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Default::default()
                };
                self.delta(i, d, None, None)
            })
            .collect()
    }

    fn on_event(&mut self, i: usize, ev: StreamEvent) -> Vec<Frame> {
        if self.done {
            return vec![];
        }
        match ev {
            StreamEvent::PromptLogprobs(_) => vec![],
            StreamEvent::Token { text, logprob, .. } => {
                let lp = match (self.logprobs, logprob) {
                    (true, Some(l)) => Some(ChatLogprobs {
                        content: vec![chat_token(&self.vocab, &l)],
                    }),
                    _ => None,
                };
                match (self.split(i, text), lp) {
                    (None, None) => vec![],
                    (d, lp) => {
                        let d = d.unwrap_or_else(|| ChatDelta {
                            content: Some(String::new()),
                            ..Default::default()
                        });
                        vec![self.delta(i, d, lp, None)]
                    }
                }
            }
            StreamEvent::Text(t) => match self.split(i, t) {
                Some(d) => vec![self.delta(i, d, None, None)],
                None => vec![],
            },
            StreamEvent::End { reason, usage } => {
                self.tally.end(i, &usage);
                let mut out = Vec::new();
                let mut has_calls = false;
                if let Some(p) = self.parsers.get_mut(i).and_then(Option::as_mut) {
                    let d = crate::tools::delta(p.finish());
                    has_calls = p.has_tool_calls();
                    out.extend(d.map(|d| self.delta(i, d, None, None)));
                }
                let finish = crate::tools::finish_reason(reason, has_calls);
                out.push(self.delta(i, ChatDelta::default(), None, Some(finish)));
                if self.tally.all_ended() {
                    if self.include_usage {
                        out.push(self.chunk(vec![], Some(self.tally.usage())));
                    }
                    out.push(Frame::Done);
                    self.done = true;
                }
                out
            }
            ev @ (StreamEvent::Error(_) | StreamEvent::ClientTimeout { .. }) => {
                self.done = true;
                error_frames(&ev).unwrap_or_default()
            }
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// `text_completion` frames, with echo and legacy logprobs.
pub struct CompletionStream {
    meta: Meta,
    include_usage: bool,
    n: usize,
    /// Per prompt: its text and tokens (for echo).
    prompts: Vec<(String, Vec<u32>)>,
    echo: bool,
    logprobs: bool,
    echoed: Vec<bool>,
    builders: Vec<CompletionLogprobsBuilder>,
    tally: Tally,
    done: bool,
}

impl CompletionStream {
    pub fn new(meta: Meta, v: &ValidRequest, vocab: Vocab) -> Self {
        let choices = v.num_choices();
        Self {
            meta,
            include_usage: v.include_usage(),
            n: v.n(),
            prompts: v
                .prompts()
                .iter()
                .map(|p| (p.text().to_string(), p.tokens().to_vec()))
                .collect(),
            echo: v.echo(),
            logprobs: v.logprobs().is_some(),
            echoed: vec![!v.echo(); choices],
            builders: (0..choices)
                .map(|_| CompletionLogprobsBuilder::new(vocab.clone(), v.tokens_as_ids()))
                .collect(),
            tally: Tally::new(v.prompts().len(), v.n()),
            done: false,
        }
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<UsageOut>) -> Frame {
        Frame::Chunk(json(&Completion {
            id: self.meta.id.clone(),
            object: "text_completion",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }))
    }

    fn text(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
    ) -> Frame {
        self.chunk(
            vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// The echo chunk of choice `i`, with the prompt's logprobs when given.
    fn echo(
        &mut self,
        i: usize,
        lps: Option<&[Option<tokenfab_engine::TokenLogprob>]>,
    ) -> Vec<Frame> {
        if self.echoed[i] {
            return vec![];
        }
        self.echoed[i] = true;
        let (text, tokens) = self.prompts[i / self.n].clone();
        let lp = self.logprobs.then(|| {
            let mut out = CompletionLogprobs::default();
            self.builders[i].push_prompt(&mut out, &tokens, lps.unwrap_or(&[]));
            out
        });
        vec![self.text(i, text, lp, None)]
    }
}

impl StreamMachine for CompletionStream {
    fn start(&mut self) -> Vec<Frame> {
        if !self.echo || self.logprobs {
            return vec![];
        }
        (0..self.echoed.len())
            .flat_map(|i| self.echo(i, None))
            .collect()
    }

    fn on_event(&mut self, i: usize, ev: StreamEvent) -> Vec<Frame> {
        if self.done || i >= self.echoed.len() {
            return vec![];
        }
        if let StreamEvent::PromptLogprobs(lps) = &ev {
            return self.echo(i, Some(lps));
        }
        let mut out = self.echo(i, None);
        match ev {
            StreamEvent::PromptLogprobs(_) => {}
            StreamEvent::Token {
                token,
                text,
                logprob,
            } => {
                let lp = self.logprobs.then(|| {
                    let mut o = CompletionLogprobs::default();
                    self.builders[i].push(&mut o, token, logprob.as_ref());
                    o
                });
                out.push(self.text(i, text, lp, None));
            }
            StreamEvent::Text(t) => {
                if !t.is_empty() {
                    let lp = self.logprobs.then(CompletionLogprobs::default);
                    out.push(self.text(i, t, lp, None));
                }
            }
            StreamEvent::End { reason, usage } => {
                self.tally.end(i, &usage);
                out.push(self.text(i, String::new(), None, Some(reason.as_str())));
                if self.tally.all_ended() {
                    if self.include_usage {
                        out.push(self.chunk(vec![], Some(self.tally.usage())));
                    }
                    out.push(Frame::Done);
                    self.done = true;
                }
            }
            ev @ (StreamEvent::Error(_) | StreamEvent::ClientTimeout { .. }) => {
                self.done = true;
                out.extend(error_frames(&ev).unwrap_or_default());
            }
        }
        out
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokenfab_engine::TokenLogprob;
    use tokenfab_types::FinishReason;

    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "x".into(),
            created: 1,
            model: "m".into(),
        }
    }

    fn vocab() -> Vocab {
        Arc::new(|id| format!("<{id}>").into_bytes())
    }

    fn valid(n: usize, echo: bool, logprobs: Option<usize>, usage: bool) -> ValidRequest {
        ValidRequest::for_tests(n, echo, logprobs, usage)
    }

    fn tok(token: u32, text: &str) -> StreamEvent {
        StreamEvent::Token {
            token,
            text: text.into(),
            logprob: Some(TokenLogprob {
                token,
                logprob: -1.0,
                top: vec![(token, -1.0)],
            }),
        }
    }

    fn end(c: usize) -> StreamEvent {
        StreamEvent::End {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: c,
                cached_tokens: 0,
            },
        }
    }

    #[test]
    fn chat_role_first_then_content_finish_usage_done() {
        let mut m = ChatStream::new(meta(), &valid(2, false, Some(1), true), vocab());
        let start = m.start();
        assert_eq!(start.len(), 2);
        let Frame::Chunk(c) = &start[1] else { panic!() };
        assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c["choices"][0]["index"], 1);
        assert!(c["usage"].is_null() && c.get("usage").is_some());

        let f = m.on_event(0, tok(5, "ab"));
        let Frame::Chunk(c) = &f[0] else { panic!() };
        assert_eq!(c["choices"][0]["delta"]["content"], "ab");
        assert_eq!(c["choices"][0]["logprobs"]["content"][0]["token"], "<5>");
        assert!(c["choices"][0]["delta"].get("role").is_none());

        let f = m.on_event(0, end(1));
        assert_eq!(f.len(), 1);
        assert!(!m.is_done());
        m.on_event(1, tok(6, "c"));
        let f = m.on_event(1, end(3));
        assert_eq!(f.len(), 3);
        let Frame::Chunk(u) = &f[1] else { panic!() };
        assert_eq!(u["choices"].as_array().unwrap().len(), 0);
        assert_eq!(u["usage"]["prompt_tokens"], 2);
        assert_eq!(u["usage"]["completion_tokens"], 4);
        assert_eq!(u["usage"]["total_tokens"], 6);
        assert_eq!(f[2], Frame::Done);
        assert!(m.is_done());
        assert!(m.on_event(0, tok(1, "late")).is_empty());
    }

    #[test]
    fn chat_without_usage_omits_the_field() {
        let mut m = ChatStream::new(meta(), &valid(1, false, None, false), vocab());
        let Frame::Chunk(c) = &m.start()[0] else {
            panic!()
        };
        assert!(c.get("usage").is_none());
        let f = m.on_event(0, tok(5, "a"));
        let Frame::Chunk(c) = &f[0] else { panic!() };
        assert!(c["choices"][0]["logprobs"].is_null());
        assert_eq!(m.on_event(0, end(1)).last(), Some(&Frame::Done));
    }

    #[test]
    fn an_engine_error_ends_the_stream_with_an_error_event() {
        let mut m = ChatStream::new(meta(), &valid(1, false, None, false), vocab());
        let f = m.on_event(0, StreamEvent::Error("boom".into()));
        let Frame::Error(e) = &f[0] else { panic!() };
        assert_eq!(e["error"]["message"], "boom");
        assert_eq!(f[1], Frame::Done);
        assert!(m.is_done());
    }

    fn text_tok(text: &str) -> StreamEvent {
        StreamEvent::Token {
            token: 1,
            text: text.into(),
            logprob: None,
        }
    }

    fn stop() -> StreamEvent {
        StreamEvent::End {
            reason: FinishReason::Stop,
            usage: Usage::default(),
        }
    }

    #[test]
    fn chat_tool_calls_and_reasoning_stream_as_openai_deltas() {
        use tokenfab_structured::{ReasoningFormat, ToolFormat};
        let parse = crate::tools::ChatParse {
            tools: Some(ToolFormat::Hermes),
            reasoning: Some(ReasoningFormat::Qwen3),
        };
        let v = valid(1, false, None, false).with_parse(parse);
        let mut m = ChatStream::new(meta(), &v, vocab());
        m.start();
        let out = "<think>hm</think><tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let mut frames = Vec::new();
        for piece in out.as_bytes().chunks(3) {
            frames.extend(m.on_event(0, text_tok(std::str::from_utf8(piece).unwrap())));
        }
        frames.extend(m.on_event(0, stop()));
        let (mut reasoning, mut args, mut name, mut finish) =
            (String::new(), String::new(), None, None);
        for f in &frames {
            let Frame::Chunk(c) = f else { continue };
            let ch = &c["choices"][0];
            reasoning.push_str(ch["delta"]["reasoning_content"].as_str().unwrap_or(""));
            assert!(ch["delta"].get("content").is_none(), "{c}");
            for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                if tc.get("id").is_some() {
                    assert_eq!(tc["type"], "function");
                    name = tc["function"]["name"].as_str().map(String::from);
                }
                args.push_str(tc["function"]["arguments"].as_str().unwrap());
            }
            finish = ch["finish_reason"].as_str().map(String::from).or(finish);
        }
        assert_eq!(reasoning, "hm");
        assert_eq!(name.as_deref(), Some("f"));
        assert_eq!(args, r#"{"a": 1}"#);
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(frames.last(), Some(&Frame::Done));
    }

    #[test]
    fn chat_text_without_calls_is_content_with_a_parser() {
        let parse = crate::tools::ChatParse {
            tools: Some(tokenfab_structured::ToolFormat::Hermes),
            reasoning: None,
        };
        let v = valid(1, false, None, false).with_parse(parse);
        let mut m = ChatStream::new(meta(), &v, vocab());
        let mut text = String::new();
        let mut frames = m.on_event(0, text_tok("Hello <"));
        frames.extend(m.on_event(0, text_tok("b>")));
        frames.extend(m.on_event(0, stop()));
        for f in &frames {
            if let Frame::Chunk(c) = f {
                text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(r) = c["choices"][0]["finish_reason"].as_str() {
                    assert_eq!(r, "stop");
                }
            }
        }
        assert_eq!(text, "Hello <b>");
    }

    #[test]
    fn completion_echo_with_logprobs_waits_for_prompt_logprobs() {
        let mut m = CompletionStream::new(meta(), &valid(1, true, Some(1), false), vocab());
        assert!(m.start().is_empty());
        let lp = TokenLogprob {
            token: 2,
            logprob: -0.25,
            top: vec![],
        };
        let f = m.on_event(0, StreamEvent::PromptLogprobs(vec![None, Some(lp)]));
        let Frame::Chunk(c) = &f[0] else { panic!() };
        assert_eq!(c["choices"][0]["text"], "hi");
        let l = &c["choices"][0]["logprobs"];
        assert_eq!(l["tokens"], serde_json::json!(["<1>", "<2>"]));
        assert_eq!(l["token_logprobs"], serde_json::json!([null, -0.25]));
        assert!(l["top_logprobs"][0].is_null());
        assert_eq!(l["text_offset"], serde_json::json!([0, 3]));
        let f = m.on_event(0, tok(9, "z"));
        let Frame::Chunk(c) = &f[0] else { panic!() };
        assert_eq!(
            c["choices"][0]["logprobs"]["text_offset"],
            serde_json::json!([6])
        );
        let f = m.on_event(0, end(1));
        let Frame::Chunk(c) = &f[0] else { panic!() };
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(f[1], Frame::Done);
    }

    #[test]
    fn completion_echo_without_logprobs_comes_first() {
        let mut m = CompletionStream::new(meta(), &valid(2, true, None, true), vocab());
        let s = m.start();
        assert_eq!(s.len(), 2);
        let f = m.on_event(1, tok(9, "z"));
        assert_eq!(f.len(), 1);
        m.on_event(0, end(1));
        let f = m.on_event(1, end(1));
        let Frame::Chunk(u) = &f[1] else { panic!() };
        assert_eq!(u["usage"]["completion_tokens"], 2);
        assert_eq!(u["usage"]["prompt_tokens"], 2);
    }
}
