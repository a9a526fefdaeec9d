//! Structured outputs and tools through `app().oneshot(..)` on the tiny random model: the
//! output always matches its constraint (the random model would never get there alone), tool
//! calls come back as `tool_calls` (whole and streamed), and constraints that cannot be honoured
//! are 400s naming the field.

mod common;

use common::*;
use serde_json::{json, Value};

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 200,
        "temperature": 1.0,
        "seed": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The tiny model with a compact template that reads `tools` and writes Hermes calls (the
/// generic instruction alone is longer than its 256-token context).
fn tools_app() -> TestApp {
    const TEMPLATE: &str = "{%- if tools %}<|im_start|>system\nT:{% for t in tools %}\
        {{ t.function.name }};{% endfor %}<|im_end|>\n{% endif %}{% for m in messages %}\
        <|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}\
        <tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}\
        {{ m.content }}{% endif %}<|im_end|>\n{% endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let dir = std::env::temp_dir().join(format!("tokenfab-server-tools-{}", std::process::id()));
    let mut m =
        tokenfab_engine::LoadedModel::load(&tokenfab_engine::testing::write_tiny_model(&dir))
            .unwrap();
    m.template = Some(tokenfab_loader::ChatTemplate::new(TEMPLATE, "", "<|im_end|>").unwrap());
    let engine = tokenfab_engine::EngineHandle::start(m, small_engine_cfg()).unwrap();
    let mut sc = tokenfab_server::ServerConfig::new(MODEL);
    sc.max_tokens_limit = 200;
    TestApp {
        app: tokenfab_server::app(engine.clone(), sc),
        engine,
    }
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

/// Compact JSON keeps the random model from spending its tokens on whitespace.
fn compact(schema: Value) -> Value {
    let mut s = schema;
    s["x-guidance"] = json!({"whitespace_flexible": false});
    s
}

#[tokio::test]
async fn every_kind_of_constraint_holds_on_chat_and_completions() {
    let t = TestApp::new();
    let schema = compact(json!({"type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9},
                       "c": {"enum": ["red", "blue"]}},
        "required": ["n", "c"]}));
    for seed in 0..3 {
        let (s, v) = t
            .post(
                "/v1/chat/completions",
                chat(
                    json!({"seed": seed, "response_format": {"type": "json_schema",
                    "json_schema": {"name": "thing", "schema": schema, "strict": true}}}),
                ),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let o: Value = serde_json::from_str(content(&v)).unwrap();
        assert!((1..=9).contains(&o["n"].as_i64().unwrap()), "{o}");
        assert!(o["c"] == "red" || o["c"] == "blue", "{o}");
        assert_eq!(
            o.as_object().unwrap().len(),
            2,
            "strict: no other keys: {o}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let (s, v) = t
            .post(
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": 20, "temperature": 1.0, "seed": seed,
                    "structured_outputs": {"regex": "[0-9]{2}:[0-9]{2}"}}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let text = v["choices"][0]["text"].as_str().unwrap();
        let b = text.as_bytes();
        assert!(b.len() == 5 && b[2] == b':', "{text:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let (s, v) = t
            .post(
                "/v1/chat/completions",
                chat(json!({"seed": seed, "structured_outputs": {"choice": ["alpha", "beta"]}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(["alpha", "beta"].contains(&content(&v)), "{v}");

        let (s, v) = t
            .post(
                "/v1/chat/completions",
                chat(json!({"seed": seed, "structured_outputs": {
                    "grammar": "start: \"(\" num (\"+\" num)? \")\"\nnum: /[1-9]/"}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let c = content(&v);
        assert!(
            c.starts_with('(') && c.ends_with(')') && c.len() <= 5,
            "{c:?}"
        );

        let (s, v) = t
            .post(
                "/v1/chat/completions",
                chat(json!({"seed": seed, "max_tokens": 60,
                    "structured_outputs": {"json_object": true, "disable_any_whitespace": true}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        if v["choices"][0]["finish_reason"] == "stop" {
            assert!(serde_json::from_str::<Value>(content(&v))
                .unwrap()
                .is_object());
        } else {
            assert!(content(&v).starts_with('{'), "{v}");
        }
    }
}

#[tokio::test]
async fn what_cannot_be_honoured_is_a_400_naming_it() {
    let t = TestApp::new();
    let cases = [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"$ref": "#/$defs/missing"}}}}),
            "response_format",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: undefined_rule"}}),
            "structured_outputs",
        ),
        (
            json!({"structured_outputs": {"regex": "(?=look)ahead"}}),
            "structured_outputs",
        ),
        (json!({"structured_outputs": {"choice": []}}), "choice"),
        (json!({"guided_json": {"type": "object"}}), "guided_json"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "structured_outputs": {"regex": "a"}}),
            "tools",
        ),
    ];
    for (extra, field) in cases {
        let (s, v) = t.post("/v1/chat/completions", chat(extra.clone())).await;
        assert_eq!(s, 400, "{extra} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            v["error"]["param"] == field || msg.contains(field),
            "{extra}: {v}"
        );
    }
    t.wait_idle().await;
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object",
                "properties": {"unit": {"enum": ["c", "f"]},
                               "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["unit", "days"]}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                "required": ["zone"]}}}
    ])
}

fn check_call(name: &str, args: &str) {
    let a: Value = serde_json::from_str(args).unwrap();
    match name {
        "get_weather" => {
            assert!(a["unit"] == "c" || a["unit"] == "f", "{a}");
            assert!((1..=7).contains(&a["days"].as_i64().unwrap()), "{a}");
        }
        "get_time" => assert!(a["zone"] == "utc" || a["zone"] == "cet", "{a}"),
        other => panic!("unknown function {other}"),
    }
}

#[tokio::test]
async fn required_and_named_tool_calls_whole_and_streamed() {
    let t = tools_app();
    for seed in 0..3 {
        let (s, v) = t
            .post(
                "/v1/chat/completions",
                chat(
                    json!({"seed": seed, "tools": tools(), "tool_choice": "required",
                    "parallel_tool_calls": false}),
                ),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        assert!(choice["message"]["content"].is_null(), "{v}");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["type"], "function");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        check_call(
            calls[0]["function"]["name"].as_str().unwrap(),
            calls[0]["function"]["arguments"].as_str().unwrap(),
        );
    }

    // Named and streamed: the deltas put together are one call of that function.
    let (s, _, body) = t
        .post_raw(
            "/v1/chat/completions",
            chat(json!({"stream": true, "tools": tools(),
                "tool_choice": {"type": "function", "function": {"name": "get_time"}}}))
            .to_string(),
        )
        .await;
    assert_eq!(s, 200);
    let (mut id, mut name, mut args, mut finish) = (None, None, String::new(), None);
    for d in sse_data(&body) {
        if d == "[DONE]" {
            break;
        }
        let c: Value = serde_json::from_str(&d).unwrap();
        let ch = &c["choices"][0];
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(tc["index"], 0);
            if let Some(i) = tc["id"].as_str() {
                assert!(id.is_none(), "one id per call");
                id = Some(i.to_string());
                assert_eq!(tc["type"], "function");
                name = tc["function"]["name"].as_str().map(String::from);
            }
            args.push_str(tc["function"]["arguments"].as_str().unwrap());
        }
        assert!(
            ch["delta"]["content"].as_str().unwrap_or("").is_empty(),
            "{c}"
        );
    }
    assert!(id.is_some());
    assert_eq!(name.as_deref(), Some("get_time"));
    check_call("get_time", &args);
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn a_tool_result_round_trip_renders_and_none_leaves_text_free() {
    let t = tools_app();
    let history = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "type": "function", "function": {"name": "get_weather",
            "arguments": "{\"unit\": \"c\", \"days\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}
    ]);
    let (s, v) = t
        .post(
            "/v1/chat/completions",
            chat(
                json!({"messages": history, "tools": tools(), "tool_choice": "none",
                "max_tokens": 8}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    // The template wrote the call (arguments as a mapping) and the result.
    let prompt = prompt_of(&t, &history).await;
    assert!(
        prompt.contains(
            "<tool_call>{\"arguments\": {\"days\": 1, \"unit\": \"c\"}, \"name\": \"get_weather\"}</tool_call>"
        )
            && prompt.contains("<|im_start|>tool\n21 degrees<|im_end|>"),
        "{prompt}"
    );
    t.wait_idle().await;
    // A template without tools (ChatML) gets the history in the generic format.
    let g = TestApp::new();
    let prompt = prompt_of(&g, &history).await;
    assert!(
        prompt.contains("<tool_call>\n{\"name\":\"get_weather\"")
            && prompt.contains("<|im_start|>user\n<tool_response>\n21 degrees\n</tool_response>"),
        "{prompt}"
    );
}

async fn prompt_of(t: &TestApp, messages: &Value) -> String {
    let (s, v) = t.post("/tokenize", json!({"messages": messages})).await;
    assert_eq!(s, 200, "{v}");
    let (_, d) = t.post("/detokenize", json!({"tokens": v["tokens"]})).await;
    d["prompt"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_openapi_document_covers_the_new_fields() {
    let t = TestApp::new();
    let (s, _, b) = t.get("/openapi.json").await;
    assert_eq!(s, 200);
    let d = to_json(&b);
    let schemas = &d["components"]["schemas"];
    let sampling = &schemas["SamplingFields"]["properties"];
    assert!(sampling["response_format"].is_object() && sampling["structured_outputs"].is_object());
    let chat = &schemas["ChatCompletionRequest"]["allOf"][1]["properties"];
    for f in ["tools", "tool_choice", "parallel_tool_calls"] {
        assert!(chat[f].is_object(), "{f}");
    }
    for f in ["tool_calls", "tool_call_id"] {
        assert!(schemas["ChatMessage"]["properties"][f].is_object(), "{f}");
    }
    let so = &schemas["StructuredOutputs"]["properties"];
    for f in [
        "json",
        "regex",
        "choice",
        "grammar",
        "json_object",
        "whitespace_pattern",
    ] {
        assert!(so[f].is_object(), "{f}");
    }
    let message = &schemas["ChatCompletion"]["properties"]["choices"]["items"]["properties"]
        ["message"]["properties"];
    assert!(message["tool_calls"].is_object() && message["reasoning_content"].is_object());
    assert!(schemas["FinishReason"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("tool_calls")));
}
