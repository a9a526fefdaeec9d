//! Tool-calling grammars and the generic tool prompt on the default model (SmolLM2): random
//! walks under `required`, a named function and `auto` always parse into calls whose arguments
//! validate against the function's `parameters`.

mod common;

use common::{force, gguf, grammars, text_of, tokenizer, walk, walk_with, Rng};
use serde_json::{json, Value};
use tokenfab_loader::{ChatTemplate, TemplateMessage};
use tokenfab_structured::tools::{generic_messages, tool_constraint};
use tokenfab_structured::{Error, Tool, ToolCallParser, ToolChoice, ToolFormat};

fn tools() -> Vec<Tool> {
    serde_json::from_value(json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            }, "required": ["city", "unit"], "additionalProperties": false}
        }},
        {"type": "function", "function": {
            "name": "add",
            "parameters": {"$defs": {"n": {"type": "integer", "minimum": 0, "maximum": 999}},
                "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": "#/$defs/n"}},
                "required": ["a", "b"], "additionalProperties": false}
        }},
        {"type": "function", "function": {"name": "now"}}
    ]))
    .unwrap()
}

/// The tool grammar for `choice` over `tools()`.
fn grammar_for(
    g: &tokenfab_structured::Grammars,
    format: ToolFormat,
    choice: ToolChoice,
    parallel: bool,
) -> tokenfab_structured::Constraint {
    tool_constraint(g, format, &tools(), &choice, parallel)
        .unwrap()
        .expect("a grammar")
}

fn params(name: &str) -> Value {
    tools()
        .into_iter()
        .find(|t| t.function.name == name)
        .and_then(|t| t.function.parameters)
        .unwrap_or(json!({"type": "object"}))
}

/// Walks `choice`'s grammar `n` times (after `prefix`, if any); every finished walk must parse
/// into calls whose arguments validate. Returns the parsed outputs.
fn walk_calls(
    format: ToolFormat,
    choice: ToolChoice,
    parallel: bool,
    prefix: &str,
    n: usize,
) -> Vec<tokenfab_structured::ParsedToolOutput> {
    let g = grammars();
    let c = grammar_for(g, format, choice, parallel);
    let compiled = g
        .compile(&c)
        .unwrap_or_else(|e| panic!("{e}\n{}", grammar_text(&c)));
    let mut rng = Rng::new(7);
    let mut outs = Vec::new();
    for _ in 0..n {
        let mut m = compiled.matcher();
        let mut tokens = if prefix.is_empty() {
            Vec::new()
        } else {
            force(&mut m, prefix)
        };
        let (rest, done) = walk(&mut m, &mut rng, 400);
        if !done {
            continue;
        }
        tokens.extend(rest);
        let text = text_of(&tokens);
        let out = ToolCallParser::parse(format, &text, 1);
        assert!(!out.tool_calls.is_empty(), "no call in {text:?}");
        for call in &out.tool_calls {
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            let v = jsonschema::validator_for(&params(&call.name)).unwrap();
            assert!(v.is_valid(&args), "{text:?}: arguments do not validate");
        }
        outs.push(out);
    }
    assert!(
        outs.len() * 2 >= n,
        "only {} of {n} walks finished",
        outs.len()
    );
    outs
}

fn grammar_text(c: &tokenfab_structured::Constraint) -> String {
    match c {
        tokenfab_structured::Constraint::Tools(g) => g.source().to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn required_calls_validate_in_every_format() {
    for format in [
        ToolFormat::Hermes,
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
    ] {
        for parallel in [false, true] {
            let outs = walk_calls(format, ToolChoice::Required, parallel, "", 6);
            for o in &outs {
                assert_eq!(o.content, None, "{format:?}: {o:?}");
                if !parallel {
                    assert_eq!(o.tool_calls.len(), 1, "{format:?}: {o:?}");
                }
            }
        }
    }
}

#[test]
fn a_named_function_is_the_only_call() {
    for format in [
        ToolFormat::Hermes,
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
    ] {
        let outs = walk_calls(format, ToolChoice::Function("add".into()), true, "", 6);
        for o in outs {
            assert_eq!(o.tool_calls.len(), 1);
            assert_eq!(o.tool_calls[0].name, "add");
        }
    }
    let e = tool_constraint(
        grammars(),
        ToolFormat::Hermes,
        &tools(),
        &ToolChoice::Function("nope".into()),
        true,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "tool_choice",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn auto_is_free_text_until_the_tag_then_a_valid_call() {
    let g = grammars();
    let c = grammar_for(g, ToolFormat::Hermes, ToolChoice::Auto, true);
    let compiled = g.compile(&c).unwrap();
    // Free text: any ordinary token is allowed at first.
    let mut m = compiled.matcher();
    let free = m.compute_mask().unwrap().count();
    assert!(free > 40_000, "only {free} tokens allowed in free text");
    // After the tag, free text is over: only the call's forced text.
    force(&mut m, "Let me look that up. <tool_call>");
    let after = m.compute_mask().unwrap().allowed();
    let texts: Vec<String> = after
        .iter()
        .map(|&t| String::from_utf8_lossy(tokenizer().token_piece(t)).into_owned())
        .collect();
    // The forced newline, with the whitespace JSON may start with (bounded, see schema.rs).
    assert!(
        texts
            .iter()
            .all(|t| t.starts_with('\n') && t.trim().is_empty()),
        "after the tag: {texts:?}"
    );
    let outs = walk_calls(
        ToolFormat::Hermes,
        ToolChoice::Auto,
        true,
        "Let me look that up.\n<tool_call>",
        6,
    );
    for o in outs {
        assert_eq!(o.content.as_deref(), Some("Let me look that up."));
    }
}

#[test]
fn auto_for_llama3_keeps_text_from_starting_like_a_call() {
    let g = grammars();
    let c = grammar_for(g, ToolFormat::Llama3Json, ToolChoice::Auto, false);
    let mut m = g.compile(&c).unwrap().matcher();
    force(&mut m, "{");
    let mut rng = Rng::new(3);
    let (tokens, done) = walk(&mut m, &mut rng, 400);
    if done {
        let text = format!("{{{}", text_of(&tokens));
        let out = ToolCallParser::parse(ToolFormat::Llama3Json, &text, 0);
        assert_eq!(out.tool_calls.len(), 1, "{text}");
    }
}

#[test]
fn tool_choice_and_tools_are_validated() {
    assert_eq!(
        ToolChoice::from_request(None, true).unwrap(),
        ToolChoice::Auto
    );
    assert_eq!(
        ToolChoice::from_request(None, false).unwrap(),
        ToolChoice::None
    );
    assert_eq!(
        ToolChoice::from_request(
            Some(&json!({"type": "function", "function": {"name": "add"}})),
            true
        )
        .unwrap(),
        ToolChoice::Function("add".into())
    );
    for bad in [json!("sometimes"), json!({"type": "function"}), json!(3)] {
        assert!(ToolChoice::from_request(Some(&bad), true).is_err(), "{bad}");
    }
    let e = ToolChoice::from_request(Some(&json!("required")), false).unwrap_err();
    assert!(e.to_string().contains("tools"), "{e}");
    let mut dup = tools();
    dup.push(dup[0].clone());
    let e = tool_constraint(
        grammars(),
        ToolFormat::Hermes,
        &dup,
        &ToolChoice::Auto,
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("get_weather"), "{e}");
    let none = tool_constraint(
        grammars(),
        ToolFormat::Hermes,
        &tools(),
        &ToolChoice::None,
        true,
    );
    assert!(none.unwrap().is_none());
}

/// SmolLM2's template never reads `tools`: rendering with tools changes nothing, and an
/// assistant turn with only `tool_calls` (null content) fails in it (`'\n' + none`). So the
/// server rewrites the conversation with `generic_messages` for it.
#[test]
fn smollm2_template_ignores_tools_so_the_generic_prompt_carries_them() {
    let tok = tokenizer();
    let tmpl = ChatTemplate::from_gguf(gguf(), &tok).unwrap().unwrap();
    assert!(!tmpl.takes_tools());
    assert_eq!(ToolFormat::detect(tmpl.source()), None);
    let tools_json: Vec<Value> = tools()
        .iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    let user = TemplateMessage {
        role: "user".into(),
        content: Some("Weather in Oslo?".into()),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    };
    let plain = tmpl
        .render_with_tools(std::slice::from_ref(&user), None, true)
        .unwrap();
    assert_eq!(
        tmpl.render_with_tools(std::slice::from_ref(&user), Some(&tools_json), true)
            .unwrap(),
        plain,
        "the tools vanish silently"
    );
    let call_turn = TemplateMessage {
        role: "assistant".into(),
        content: None,
        tool_calls: vec![json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"celsius\"}"}})],
        tool_call_id: None,
        name: None,
    };
    let result = TemplateMessage {
        role: "tool".into(),
        content: Some("{\"temp\": 3}".into()),
        tool_calls: Vec::new(),
        tool_call_id: Some("call_1".into()),
        name: None,
    };
    let history = [user, call_turn, result];
    assert!(tmpl.render_with_tools(&history, None, true).is_err());

    let msgs = generic_messages(&history, &tools(), &ToolChoice::Auto, true);
    let prompt = tmpl.render_with_tools(&msgs, None, true).unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\n# Tools"),
        "{prompt}"
    );
    assert!(prompt.contains("\"name\":\"get_weather\""));
    assert!(prompt.contains(
        "<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\",\"unit\":\"celsius\"}}\n</tool_call><|im_end|>"
    ));
    assert!(prompt
        .contains("<|im_start|>user\n<tool_response>\n{\"temp\": 3}\n</tool_response><|im_end|>"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    // The call written back into the history parses as the call it was.
    let hist_call =
        &prompt[prompt.rfind("<tool_call>").unwrap()..prompt.rfind("</tool_call>").unwrap() + 12];
    let parsed = ToolCallParser::parse(ToolFormat::Hermes, hist_call, 0);
    assert_eq!(parsed.tool_calls[0].name, "get_weather");
}

#[test]
fn the_tokenizer_has_no_special_tool_tags() {
    // SmolLM2 spells every format's tag as text, so the grammars use literal strings and a
    // lazy lexeme for `auto`.
    let tok = tokenizer();
    for tag in ["<tool_call>", "<|python_tag|>", "[TOOL_CALLS]"] {
        assert_eq!(tok.token_to_id(tag), None, "{tag}");
    }
}

/// A byte-level vocabulary whose tool tags are control tokens, as in Llama 3 and Mistral
/// tokenizers: the grammars must name them by id, and free text cannot spell them.
fn special_tag_grammars() -> (tokenfab_structured::Grammars, u32, u32) {
    use tokenfab_loader::byte_vocab::gpt2_byte_char;
    use tokenfab_loader::{Gguf, GgufWriter, Tokenizer, Value, ValueType};
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(gpt2_byte_char(b).to_string()))
        .collect();
    let mut types = vec![Value::I32(1); 256];
    for special in ["<|eot_id|>", "<|python_tag|>", "[TOOL_CALLS]"] {
        tokens.push(Value::String(special.into()));
        types.push(Value::I32(3));
    }
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String("gpt-2".into()))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, tokens),
        )
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )
        .meta(
            "tokenizer.ggml.merges",
            Value::Array(ValueType::String, vec![]),
        )
        .meta("tokenizer.ggml.eos_token_id", Value::U32(256));
    let gguf = Gguf::from_bytes(w.to_bytes()).unwrap();
    let tok = std::sync::Arc::new(Tokenizer::from_gguf(&gguf).unwrap());
    let n = tok.vocab_size();
    let g =
        tokenfab_structured::Grammars::new(tok, n, tokenfab_structured::Limits::default()).unwrap();
    (g, 257, 258)
}

#[test]
fn special_token_tags_are_named_by_id() {
    let (g, python_tag, tool_calls) = special_tag_grammars();
    let text = |ids: &[u32]| -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&t| g.tokenizer().token_piece(t).to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    };
    let mut rng = Rng::new(11);
    // Mistral, required: the control token is the only way to start.
    let c = grammar_for(&g, ToolFormat::Mistral, ToolChoice::Required, true);
    let compiled = g.compile(&c).unwrap();
    assert_eq!(
        compiled.matcher().compute_mask().unwrap().allowed(),
        [tool_calls]
    );
    let mut done = 0;
    for _ in 0..6 {
        let mut m = compiled.matcher();
        let (ids, finished) = walk_with(g.tokenizer(), &mut m, &mut rng, 600);
        if !finished {
            continue;
        }
        done += 1;
        let out = ToolCallParser::parse(ToolFormat::Mistral, &text(&ids), 0);
        assert!(!out.tool_calls.is_empty(), "{:?}", text(&ids));
    }
    assert!(done >= 3);
    // Llama 3, auto: text, or the control tag (or `{`) and a call.
    let c = grammar_for(&g, ToolFormat::Llama3Json, ToolChoice::Auto, false);
    let compiled = g.compile(&c).unwrap();
    let mut m = compiled.matcher();
    let first = m.compute_mask().unwrap().clone();
    assert!(first.is_allowed(python_tag) && first.is_allowed(u32::from(b'{')));
    assert!(first.is_allowed(u32::from(b'H')) && !first.is_allowed(tool_calls));
    m.consume(python_tag).unwrap();
    assert!(!m.compute_mask().unwrap().is_allowed(u32::from(b'H')));
    let (ids, finished) = walk_with(g.tokenizer(), &mut m, &mut rng, 600);
    if finished {
        let t = format!("<|python_tag|>{}", text(&ids));
        let out = ToolCallParser::parse(ToolFormat::Llama3Json, &t, 0);
        assert_eq!(out.tool_calls.len(), 1, "{t:?}");
    }
}
