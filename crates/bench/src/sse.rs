//! Server-sent events as OpenAI-compatible servers stream them, and the chunks inside.
//!
//! Two layers, each a small state machine tested on its own:
//! - [`SseDecoder`] turns bytes (split anywhere) into events: `data:` lines joined, comment lines
//!   (`: keep-alive`, as TGI and tokenfab send) skipped, `data: [DONE]` reported as [`SseEvent::Done`].
//! - [`parse_chunk`] reads one event's JSON: text of `/v1/completions` (`choices[0].text`) or chat
//!   (`choices[0].delta.content`), the usage chunk (`stream_options.include_usage`; vLLM sends it
//!   with `choices: []`, llama-server on its last chunk), and error events.

use serde_json::Value;

/// One decoded server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub enum SseEvent {
    /// The `data:` payload (several `data:` lines joined with `\n`), with its `event:` name if any.
    Data { event: Option<String>, data: String },
    /// `data: [DONE]`: the stream is complete.
    Done,
}

/// Incremental SSE decoder: feed bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes not yet ending in a blank line.
    buf: Vec<u8>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            if let Some(ev) = parse_block(&String::from_utf8_lossy(&block)) {
                out.push(ev);
            }
        }
        out
    }

    /// Events left in the buffer when the connection closes without a final blank line.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let rest = std::mem::take(&mut self.buf);
        parse_block(&String::from_utf8_lossy(&rest))
            .into_iter()
            .collect()
    }
}

/// Position and length of the first event separator (`\n\n`, `\r\n\r\n` or `\r\r`).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            Some((i, 2))
        } else {
            None
        }
    })
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut data: Option<String> = None;
    let mut event = None;
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with(':') {
            continue; // comment: keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => event = Some(value.to_string()),
            _ => {} // id:, retry: and unknown fields are ignored, as the spec says
        }
    }
    let data = data?;
    if data.trim() == "[DONE]" {
        return Some(SseEvent::Done);
    }
    Some(SseEvent::Data { event, data })
}

/// Token counts of a usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What one streamed chunk carries that the benchmark measures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Bytes of generated text in this chunk (0 for role-only, usage-only or empty chunks).
    pub text_len: usize,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// An error the server reported inside the stream.
    pub error: Option<String>,
}

/// Parses one event's JSON payload; `Err` holds a short description of what is malformed.
pub fn parse_chunk(event: Option<&str>, data: &str) -> Result<Chunk, String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bad chunk JSON: {e}"))?;
    let mut chunk = Chunk::default();
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        chunk.error = Some(msg);
        return Ok(chunk);
    }
    if event == Some("error") {
        chunk.error = Some(data.to_string());
        return Ok(chunk);
    }
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        let text = choice
            .get("text")
            .and_then(Value::as_str)
            .or_else(|| choice.pointer("/delta/content").and_then(Value::as_str))
            .unwrap_or("");
        // Reasoning models stream thought first; it is output all the same.
        let reasoning = choice
            .pointer("/delta/reasoning_content")
            .and_then(Value::as_str)
            .unwrap_or("");
        chunk.text_len = text.len() + reasoning.len();
        chunk.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
    } else if let Some(text) = v.get("content").and_then(Value::as_str) {
        // llama-server's native /completion stream.
        chunk.text_len = text.len();
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        chunk.usage = Some(Usage {
            prompt_tokens: n("prompt_tokens"),
            completion_tokens: n("completion_tokens"),
        });
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_splits_anywhere_and_skips_comments() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: error\ndata: x\ndata: y\r\n\r\ndata: [DONE]\n\n";
        // Feed one byte at a time: the result must not depend on how the bytes are split.
        let mut d = SseDecoder::new();
        let mut evs = Vec::new();
        for b in stream.iter() {
            evs.extend(d.feed(std::slice::from_ref(b)));
        }
        evs.extend(d.finish());
        assert_eq!(
            evs,
            vec![
                SseEvent::Data {
                    event: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent::Data {
                    event: Some("error".into()),
                    data: "x\ny".into()
                },
                SseEvent::Done,
            ]
        );
        // A last event without its blank line still comes out on finish.
        let mut d = SseDecoder::new();
        assert!(d.feed(b"data: {}").is_empty());
        assert_eq!(
            d.finish(),
            vec![SseEvent::Data {
                event: None,
                data: "{}".into()
            }]
        );
    }

    #[test]
    fn vllm_completion_and_usage_chunks() {
        let c = parse_chunk(None, r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#).unwrap();
        assert_eq!(c.text_len, 6);
        assert_eq!(c.usage, None);
        let u = parse_chunk(None, r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":21,"completion_tokens":16}}"#).unwrap();
        assert_eq!(u.text_len, 0);
        assert_eq!(
            u.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 16
            })
        );
    }

    #[test]
    fn chat_chunks_role_content_finish() {
        let role = parse_chunk(None, r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#).unwrap();
        assert_eq!(role.text_len, 0);
        let tok = parse_chunk(
            None,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(tok.text_len, 2);
        let fin = parse_chunk(
            None,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert_eq!(fin.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn llama_server_shapes() {
        // llama-server puts usage (and timings) on the chunk that carries finish_reason.
        let last = parse_chunk(None, r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"created":1,"model":"gpt-3.5-turbo","system_fingerprint":"b1","object":"text_completion","id":"chatcmpl-x","usage":{"completion_tokens":16,"prompt_tokens":32,"total_tokens":48},"timings":{"prompt_n":32}}"#).unwrap();
        assert_eq!(last.finish_reason.as_deref(), Some("length"));
        assert_eq!(last.usage.unwrap().completion_tokens, 16);
        let native = parse_chunk(None, r#"{"content":" the","stop":false,"id_slot":0}"#).unwrap();
        assert_eq!(native.text_len, 4);
    }

    #[test]
    fn error_events() {
        let e = parse_chunk(
            None,
            r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#,
        )
        .unwrap();
        assert_eq!(e.error.as_deref(), Some("boom"));
        let e = parse_chunk(Some("error"), r#"{"detail":"x"}"#).unwrap();
        assert!(e.error.is_some());
        assert!(parse_chunk(None, "not json").is_err());
    }
}
