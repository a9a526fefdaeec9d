//! Every route through `app().oneshot(..)` on the tiny model: answers, streaming, n > 1, stop
//! strings, echo with logprobs.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn models_health_ready_metrics() {
    let t = TestApp::new();
    let (s, _, b) = t.get("/v1/models").await;
    assert_eq!(s, 200);
    let v = to_json(&b);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["max_model_len"], 256);
    let (s, _, b) = t.get(&format!("/v1/models/{MODEL}")).await;
    assert_eq!((s.as_u16(), to_json(&b)["id"].clone()), (200, json!(MODEL)));
    let (s, _, b) = t.get("/v1/models/other").await;
    assert_eq!(s, 404);
    error_message(&to_json(&b));

    let (s, _, _) = t.get("/health").await;
    assert_eq!(s, 200);
    // The engine loop beats right after start.
    let mut ready = 0;
    for _ in 0..100 {
        ready = t.get("/ready").await.0.as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200);

    t.post("/v1/completions", json!({"prompt": "hi", "max_tokens": 3}))
        .await;
    let (s, h, b) = t.get("/metrics").await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(text.contains("tokenfab:prompt_tokens_total"), "{text}");
    assert!(text.contains("vllm:num_requests_running"), "{text}");

    let (s, _, b) = t.get("/nope").await;
    assert_eq!(s, 404);
    error_message(&to_json(&b));
}

#[tokio::test]
async fn tokenize_and_detokenize() {
    let t = TestApp::new();
    let (s, v) = t.post("/tokenize", json!({"prompt": "hello"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tokens"], json!([104, 101, 108, 108, 111]));
    assert_eq!(v["count"], 5);
    assert_eq!(v["max_model_len"], 256);
    let (s, v) = t
        .post(
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let toks: Vec<u64> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    // <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n
    assert_eq!(toks[0], 256);
    assert_eq!(toks.iter().filter(|&&x| x == 256).count(), 2);
    assert_eq!(toks.iter().filter(|&&x| x == 257).count(), 1);
    let (s, v) = t.post("/detokenize", json!({"tokens": [104, 105]})).await;
    assert_eq!((s.as_u16(), v["prompt"].clone()), (200, json!("hi")));
    let (s, v) = t.post("/detokenize", json!({"tokens": [999]})).await;
    assert_eq!(s, 400);
    assert!(error_message(&v).contains("`tokens`"));
    let (s, v) = t.post("/tokenize", json!({})).await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test]
async fn chat_completion_non_streaming() {
    let t = TestApp::new();
    let (s, v) = t
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}],
                   "max_tokens": 8, "ignore_eos": true, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string());
    assert_eq!(c["finish_reason"], "length");
    assert!(c["logprobs"].is_null());
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(p > 5);
    assert_eq!(v["usage"]["total_tokens"], p + 8);
    t.wait_idle().await;
}

#[tokio::test]
async fn chat_streaming_matches_non_streaming_with_usage_and_logprobs() {
    let t = TestApp::new();
    let req = json!({"messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": [{"type": "text", "text": "hey"}]}],
                     "max_completion_tokens": 10, "ignore_eos": true,
                     "logprobs": true, "top_logprobs": 3});
    let (s, full) = t.post("/v1/chat/completions", req.clone()).await;
    assert_eq!(s, 200, "{full}");
    let lps = full["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(lps.len(), 10);
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(lps[0]["bytes"].is_array() && lps[0]["logprob"].as_f64().unwrap() <= 0.0);

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (s, h, b) = t.post_raw("/v1/chat/completions", sreq.to_string()).await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = sse_chunks(&b);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        text,
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let streamed_lps: usize = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(streamed_lps, 10);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|x| &x["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][k], full["usage"][k], "{k}");
    }
    // The second request found the first one's prompt in the prefix cache.
    assert!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    t.wait_idle().await;
}

#[tokio::test]
async fn n_choices_with_seed_stream_and_not() {
    let t = TestApp::new();
    let req = json!({"prompt": "abc", "max_tokens": 6, "n": 3, "temperature": 1.0, "seed": 7,
                     "ignore_eos": true});
    let (s, v) = t.post("/v1/completions", req.clone()).await;
    assert_eq!(s, 200, "{v}");
    let ch = v["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 3);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 18);
    // Seeded: the same request gives the same choices.
    let (_, again) = t.post("/v1/completions", req.clone()).await;
    assert_eq!(v["choices"], again["choices"]);

    let mut sreq = req;
    sreq["stream"] = json!(true);
    let (s, _, b) = t.post_raw("/v1/completions", sreq.to_string()).await;
    assert_eq!(s, 200);
    let chunks = sse_chunks(&b);
    let mut texts = vec![String::new(); 3];
    let mut finished = 0;
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        let ch = &c["choices"][0];
        texts[ch["index"].as_u64().unwrap() as usize].push_str(ch["text"].as_str().unwrap());
        finished += usize::from(!ch["finish_reason"].is_null());
    }
    assert_eq!(finished, 3);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, v["choices"][i]["text"].as_str().unwrap());
    }

    // Chat with n: one prompt counted once.
    let (s, v) = t
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2, "max_tokens": 4,
                   "ignore_eos": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    t.wait_idle().await;
}

#[tokio::test]
async fn prompts_as_text_lists_and_token_ids() {
    let t = TestApp::new();
    let base = json!({"max_tokens": 4, "ignore_eos": true});
    let with = |p: Value| {
        let mut b = base.clone();
        b["prompt"] = p;
        b
    };
    let (_, a) = t.post("/v1/completions", with(json!("hello"))).await;
    let (_, b) = t
        .post("/v1/completions", with(json!([104, 101, 108, 108, 111])))
        .await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let (s, c) = t
        .post("/v1/completions", with(json!(["hello", "abc"])))
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["choices"][0]["text"], a["choices"][0]["text"]);
    assert_eq!(c["choices"][1]["index"], 1);
    assert_eq!(c["usage"]["prompt_tokens"], 8);
    let (s, d) = t
        .post(
            "/v1/completions",
            with(json!([[104, 101, 108, 108, 111], [97]])),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["choices"][0]["text"], a["choices"][0]["text"]);
    t.wait_idle().await;
}

#[tokio::test]
async fn stop_strings_cut_the_text() {
    let t = TestApp::new();
    // Letters only (logit_bias), so that any two characters make a stop string.
    let bias: serde_json::Map<String, Value> =
        (b'a'..=b'z').map(|b| (b.to_string(), json!(100))).collect();
    let req =
        json!({"prompt": "once upon", "max_tokens": 24, "ignore_eos": true, "logit_bias": bias});
    let (_, v) = t.post("/v1/completions", req.clone()).await;
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the greedy output (whole characters).
    let chars: Vec<char> = full.chars().collect();
    assert!(
        chars.len() >= 8 && chars.iter().all(char::is_ascii_lowercase),
        "{full:?}"
    );
    let stop: String = chars[5..7].iter().collect();
    let before = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut r = req.clone();
        r["stop"] = json!([stop, "\u{1}never"]);
        r["stream"] = json!(stream);
        let (s, _, b) = t.post_raw("/v1/completions", r.to_string()).await;
        assert_eq!(s, 200);
        let (text, finish) = if stream {
            let chunks = sse_chunks(&b);
            let text: String = chunks
                .iter()
                .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
                .collect();
            (
                text,
                chunks.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let v = to_json(&b);
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, before, "stream={stream}");
        assert_eq!(finish, "stop");
    }
    t.wait_idle().await;
}

#[tokio::test]
async fn echo_with_logprobs_has_vllm_shape() {
    let t = TestApp::new();
    let (s, v) = t
        .post(
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": 1, "echo": true, "logprobs": 2,
                   "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = &v["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with("hello"));
    let l = &c["logprobs"];
    let toks = l["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 6);
    assert_eq!(
        &toks[..5],
        &[json!("h"), json!("e"), json!("l"), json!("l"), json!("o")]
    );
    let tl = l["token_logprobs"].as_array().unwrap();
    assert!(tl[0].is_null());
    assert!(tl[1..].iter().all(|x| x.as_f64().unwrap() <= 0.0));
    let top = l["top_logprobs"].as_array().unwrap();
    assert!(top[0].is_null());
    // Two alternatives plus the actual token when it is not among them.
    let n = top[1].as_object().unwrap().len();
    assert!((2..=3).contains(&n), "{}", top[1]);
    assert!(top[1].as_object().unwrap().contains_key("e"));
    assert_eq!(l["text_offset"], json!([0, 1, 2, 3, 4, 5]));
    // Greedy: the generated token is the top alternative.
    let last = top[5].as_object().unwrap();
    let best = last
        .iter()
        .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
        .unwrap()
        .0;
    assert_eq!(best, toks[5].as_str().unwrap());

    // max_tokens 0 with echo: the prompt's logprobs alone, and no decode step at all.
    t.wait_idle().await;
    let generated = || t.engine.metrics().generation_tokens.get();
    let before = generated();
    let (s, v) = t
        .post(
            "/v1/completions",
            json!({"prompt": [104, 105], "max_tokens": 0, "echo": true, "logprobs": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "hi");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let l = &v["choices"][0]["logprobs"];
    assert_eq!(l["tokens"], json!(["h", "i"]));
    assert!(l["token_logprobs"][0].is_null() && l["token_logprobs"][1].as_f64().unwrap() < 0.0);
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(generated(), before, "generation_tokens_total did not move");
    let (s, _, b) = t
        .post_raw(
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 0, "echo": true, "stream": true,
                   "stream_options": {"include_usage": true}})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200);
    let chunks = sse_chunks(&b);
    assert_eq!(chunks[0]["choices"][0]["text"], "hi");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 0);
    assert_eq!(generated(), before);

    // Streamed echo: the prompt comes first.
    let (s, _, b) = t
        .post_raw(
            "/v1/completions",
            json!({"prompt": "hey", "max_tokens": 2, "echo": true, "stream": true, "ignore_eos": true}).to_string(),
        )
        .await;
    assert_eq!(s, 200);
    let chunks = sse_chunks(&b);
    assert_eq!(chunks[0]["choices"][0]["text"], "hey");
    t.wait_idle().await;
}

#[tokio::test]
async fn default_max_tokens_fills_the_context() {
    let t = TestApp::with(small_engine_cfg(), |c| c.max_tokens_limit = 1000);
    let prompt = "a".repeat(250);
    let (s, v) = t
        .post(
            "/v1/completions",
            json!({"prompt": prompt, "ignore_eos": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    t.wait_idle().await;
}

/// lm-eval sends `max_tokens: 1` with `echo` and drops the last logprob entry as the generated
/// token's: that entry must be there even when the token is end-of-sequence.
#[tokio::test]
async fn an_end_of_sequence_token_has_its_logprob_entry() {
    let t = TestApp::new();
    let body = |stream: bool| {
        json!({"prompt": "hello", "max_tokens": 1, "echo": true, "logprobs": 1,
               "temperature": 0, "logit_bias": {"257": 100}, "stream": stream})
    };
    let (s, v) = t.post("/v1/completions", body(false)).await;
    assert_eq!(s, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["text"], "hello", "the EOS token adds no text");
    let l = &c["logprobs"];
    assert_eq!(l["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(l["tokens"][5], "<|im_end|>");
    assert!(l["token_logprobs"][5].as_f64().is_some());
    assert_eq!(v["usage"]["completion_tokens"], 1);
    let (s, _, b) = t.post_raw("/v1/completions", body(true).to_string()).await;
    assert_eq!(s, 200);
    let as_f32 = |v: &Value| v.as_f64().map(|x| x as f32);
    let streamed: Vec<Option<f32>> = sse_chunks(&b)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .cloned()
        })
        .flatten()
        .map(|v| as_f32(&v))
        .collect();
    let whole: Vec<Option<f32>> = l["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f32)
        .collect();
    assert_eq!(streamed, whole);
    // Chat: the entry is there too.
    let (s, v) = t
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                   "logprobs": true, "logit_bias": {"257": 100}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 1);
    assert_eq!(content[0]["token"], "<|im_end|>");
    assert_eq!(v["choices"][0]["message"]["content"], "");
    t.wait_idle().await;
}

#[tokio::test]
async fn tokenizer_info_answers_as_vllm_does() {
    let t = TestApp::new();
    let (s, _, b) = t.get("/tokenizer_info").await;
    assert_eq!(s, 200);
    let v = to_json(&b);
    assert_eq!(v["tokenizer_class"], "GPT2TokenizerFast");
    assert_eq!(v["eos_token"], "<|im_end|>");
    assert_eq!(v["bos_token"], "<|im_start|>");
    assert_eq!(v["add_bos_token"], false);
    assert_eq!(v["model_max_length"], 256);
    assert!(v["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(v["added_tokens_decoder"]["257"]["content"], "<|im_end|>");
    assert_eq!(v["added_tokens_decoder"]["257"]["special"], true);
    assert!(v["added_tokens_decoder"].get("65").is_none());
    // What lm-eval's remote tokenizer does with it: the EOS text back to its id.
    let (s, r) = t
        .post(
            "/tokenize",
            json!({"prompt": v["eos_token"], "add_special_tokens": false}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["tokens"], json!([257]));
}
