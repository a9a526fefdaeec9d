//! HTTP side: one OpenAI-compatible server, its model list and tokenizer routes, and one
//! streamed request measured chunk by chunk.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::metrics::{ErrorKind, RequestRecord};
use crate::sse::{parse_chunk, SseDecoder, SseEvent};
use crate::workload::Prompt;
use crate::BenchError;

/// Which OpenAI route carries the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/completions` (prompts may be sent as token ids).
    Completions,
    /// `/v1/chat/completions` (one user message).
    Chat,
}

/// Per-request options shared by a whole run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendOptions {
    pub endpoint: Endpoint,
    /// Ask the server to generate exactly `max_tokens` (vLLM and llama-server accept it).
    pub ignore_eos: bool,
    pub timeout: Duration,
}

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL without a trailing `/` or `/v1`.
    pub base: String,
    pub model: String,
    client: reqwest::Client,
    /// Which `/tokenize` body the server understood (see [`Target::tokenize`]).
    tokenize_style: Arc<AtomicU8>,
}

impl Target {
    /// Connects to `url`; asks `/v1/models` for the model when none is given.
    pub async fn connect(url: &str, model: Option<String>) -> Result<Target, BenchError> {
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|source| BenchError::Http {
                url: base.clone(),
                source,
            })?;
        let mut t = Target {
            base,
            model: model.unwrap_or_default(),
            client,
            tokenize_style: Arc::new(AtomicU8::new(0)),
        };
        if t.model.is_empty() {
            let url = format!("{}/v1/models", t.base);
            let v = t.get_json(&url).await?;
            t.model = v
                .pointer("/data/0/id")
                .and_then(Value::as_str)
                .ok_or_else(|| BenchError::Protocol {
                    url,
                    msg: "no `data[0].id` in the model list; pass --model".into(),
                })?
                .to_string();
        }
        Ok(t)
    }

    /// The server's `/metrics` (Prometheus text); `None` when it has no such route.
    pub async fn metrics_text(&self) -> Result<Option<String>, BenchError> {
        let url = format!("{}/metrics", self.base);
        let http = |source| BenchError::Http {
            url: url.clone(),
            source,
        };
        let r = self
            .client
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(http)?;
        if !r.status().is_success() {
            return Ok(None);
        }
        r.text().await.map(Some).map_err(http)
    }

    async fn get_json(&self, url: &str) -> Result<Value, BenchError> {
        let r = self
            .client
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        read_json(url, r).await
    }

    /// POSTs `body`; `Ok(None)` when the route does not exist or rejects this body's shape.
    async fn post_optional(&self, path: &str, body: Value) -> Result<Option<Value>, BenchError> {
        let url = format!("{}{}", self.base, path);
        let r = self
            .client
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match read_json(&url, r).await {
            Ok(v) => Ok(Some(v)),
            Err(BenchError::Status { status, .. }) if (400..500).contains(&status) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Token ids of `text` from the server's `/tokenize`, or `None` if it has none. Tries
    /// tokenfab's and vLLM's body (`{"model", "prompt"}`), then llama-server's (`{"content"}`);
    /// both answer `{"tokens": [...]}` (llama-server may give `{"id", "piece"}` objects).
    pub async fn tokenize(&self, text: &str) -> Result<Option<Vec<u32>>, BenchError> {
        let bodies = [
            json!({"model": self.model, "prompt": text, "add_special_tokens": false}),
            json!({"content": text, "add_special": false}),
        ];
        // Remember the shape that worked: 0 unknown, 1 or 2 = bodies[0 or 1], 3 none.
        let known = self.tokenize_style.load(Ordering::Relaxed);
        if known == 3 {
            return Ok(None);
        }
        for (i, body) in bodies.into_iter().enumerate() {
            if known != 0 && known as usize != i + 1 {
                continue;
            }
            if let Some(v) = self.post_optional("/tokenize", body).await? {
                // llama-server answers an unknown body with `{"tokens": []}`: not understood.
                if let Some(ids) = token_ids(&v).filter(|t| !t.is_empty() || text.is_empty()) {
                    self.tokenize_style.store(i as u8 + 1, Ordering::Relaxed);
                    return Ok(Some(ids));
                }
            }
        }
        if known == 0 {
            self.tokenize_style.store(3, Ordering::Relaxed);
        }
        Ok(None)
    }

    /// Text of `ids` from `/detokenize` (`{"prompt"}` or llama-server's `{"content"}`).
    pub async fn detokenize(&self, ids: &[u32]) -> Result<Option<String>, BenchError> {
        let body = json!({"model": self.model, "tokens": ids});
        let Some(v) = self.post_optional("/detokenize", body).await? else {
            return Ok(None);
        };
        Ok(["prompt", "content", "text"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_string))
    }

    /// The JSON body of one streamed request.
    pub fn request_body(&self, prompt: &Prompt, opts: &SendOptions) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": prompt.output_len,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        match opts.endpoint {
            Endpoint::Completions => {
                body["prompt"] = match &prompt.token_ids {
                    Some(ids) => json!(ids),
                    None => json!(prompt.text),
                };
            }
            Endpoint::Chat => body["messages"] = json!([{"role": "user", "content": prompt.text}]),
        }
        if opts.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }

    /// Sends `prompt`, streams the answer and measures it. Never fails: errors are recorded.
    /// `run_start` is the run's time origin for `sent_at_ms`.
    pub async fn send(
        &self,
        prompt: &Prompt,
        opts: &SendOptions,
        run_start: Instant,
    ) -> RequestRecord {
        let start = Instant::now();
        let mut rec = RequestRecord {
            sent_at_ms: ms(start - run_start),
            input_tokens: prompt.input_len,
            ..Default::default()
        };
        let measured =
            tokio::time::timeout(opts.timeout, self.stream(prompt, opts, start, &mut rec)).await;
        rec.e2e_ms = ms(start.elapsed());
        match measured {
            Err(_) => rec.error = Some(ErrorKind::Timeout),
            Ok(Err(kind)) => rec.error = Some(kind),
            Ok(Ok(())) => {}
        }
        rec
    }

    async fn stream(
        &self,
        prompt: &Prompt,
        opts: &SendOptions,
        start: Instant,
        rec: &mut RequestRecord,
    ) -> Result<(), ErrorKind> {
        let path = match opts.endpoint {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        };
        let url = format!("{}{}", self.base, path);
        let body = self.request_body(prompt, opts);
        // One retry when the connection fails before any response: a pooled keep-alive
        // connection the server already closed (llama-server does) is not the server's latency.
        let mut resp = self.client.post(&url).json(&body).send().await;
        if matches!(&resp, Err(e) if e.is_connect() || e.is_request()) {
            resp = self.client.post(&url).json(&body).send().await;
        }
        let resp = resp.map_err(|_| ErrorKind::Connect)?;
        if !resp.status().is_success() {
            return Err(ErrorKind::Http(resp.status().as_u16()));
        }
        let mut decoder = SseDecoder::new();
        let mut bytes = resp.bytes_stream();
        let mut last: Option<Instant> = None;
        let mut text_chunks = 0usize;
        let mut usage = None;
        'read: loop {
            let (events, end) = match bytes.next().await {
                Some(Ok(b)) => (decoder.feed(&b), false),
                Some(Err(_)) => return Err(ErrorKind::Stream),
                None => (decoder.finish(), true),
            };
            let now = Instant::now();
            for ev in events {
                let (event, data) = match ev {
                    SseEvent::Done => break 'read,
                    SseEvent::Data { event, data } => (event, data),
                };
                let chunk = parse_chunk(event.as_deref(), &data).map_err(|_| ErrorKind::Stream)?;
                if chunk.error.is_some() {
                    return Err(ErrorKind::Server);
                }
                if chunk.text_len > 0 {
                    match last {
                        None => rec.ttft_ms = Some(ms(now - start)),
                        Some(prev) => rec.itl_ms.push(ms(now - prev)),
                    }
                    last = Some(now);
                    text_chunks += 1;
                }
                usage = chunk.usage.or(usage);
            }
            if end {
                break;
            }
        }
        rec.output_tokens = usage.map_or(text_chunks, |u| u.completion_tokens);
        if let Some(u) = usage.filter(|u| u.prompt_tokens > 0) {
            rec.input_tokens = u.prompt_tokens;
        }
        if text_chunks == 0 {
            return Err(ErrorKind::Empty);
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `tokens` as ids, whether plain numbers or llama-server's `{"id", "piece"}` objects.
fn token_ids(v: &Value) -> Option<Vec<u32>> {
    v.get("tokens")?
        .as_array()?
        .iter()
        .map(|t| {
            t.as_u64()
                .or_else(|| t.get("id")?.as_u64())
                .map(|x| x as u32)
        })
        .collect()
}

async fn read_json(
    url: &str,
    r: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, BenchError> {
    let resp = r.map_err(|source| BenchError::Http {
        url: url.into(),
        source,
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|source| BenchError::Http {
        url: url.into(),
        source,
    })?;
    if !status.is_success() {
        let body: String = text.chars().take(300).collect();
        return Err(BenchError::Status {
            url: url.into(),
            status: status.as_u16(),
            body,
        });
    }
    serde_json::from_str(&text).map_err(|e| BenchError::Protocol {
        url: url.into(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_id_shapes() {
        assert_eq!(
            token_ids(&json!({"tokens": [1, 2, 3], "count": 3})),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            token_ids(&json!({"tokens": [{"id": 504, "piece": "The"}, {"id": 7, "piece": "x"}]})),
            Some(vec![504, 7])
        );
        assert_eq!(token_ids(&json!({"error": "no"})), None);
    }
}
