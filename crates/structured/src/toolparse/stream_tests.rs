//! Tool-call parsers on hand-written model outputs, whole and split at every character.

use super::*;

const SEED: u64 = 42;

/// What a client rebuilds from the streamed deltas (the OpenAI SDK's accumulation).
fn reassemble(deltas: &[ToolDelta]) -> ParsedToolOutput {
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for d in deltas {
        content.push_str(&d.content);
        for c in &d.tool_calls {
            if c.index == calls.len() {
                calls.push(ToolCall {
                    id: c.id.clone().expect("a call's first delta carries its id"),
                    name: c.name.clone().expect("and its name"),
                    arguments: String::new(),
                });
            }
            assert!(c.index < calls.len(), "deltas skip an index: {deltas:?}");
            calls[c.index].arguments.push_str(&c.arguments);
        }
    }
    ParsedToolOutput {
        content: (!content.is_empty()).then_some(content),
        tool_calls: calls,
    }
}

fn stream(format: ToolFormat, pieces: &[&str]) -> (ParsedToolOutput, ParsedToolOutput) {
    let mut p = ToolCallParser::new(format, SEED);
    let mut deltas: Vec<ToolDelta> = pieces.iter().map(|s| p.push(s)).collect();
    deltas.push(p.finish());
    (reassemble(&deltas), p.output())
}

/// Parses `text` whole, then streamed split once at every character and one character at a
/// time; all must agree. `well_formed`: the streamed deltas also reassemble to the result
/// (a call that turns out malformed may have streamed its name first).
fn check(format: ToolFormat, text: &str, well_formed: bool) -> ParsedToolOutput {
    let whole = ToolCallParser::parse(format, text, SEED);
    let mut splits: Vec<Vec<&str>> = text
        .char_indices()
        .map(|(i, _)| vec![&text[..i], &text[i..]])
        .collect();
    splits.push(
        text.char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect(),
    );
    for pieces in splits {
        let (rebuilt, collected) = stream(format, &pieces);
        assert_eq!(collected, whole, "split {pieces:?}");
        if well_formed {
            assert_eq!(rebuilt, whole, "deltas of split {pieces:?}");
        }
    }
    whole
}

fn call(index: usize, format: ToolFormat, name: &str, args: &str) -> ToolCall {
    ToolCall {
        id: call_id(format, SEED, index),
        name: name.into(),
        arguments: args.into(),
    }
}

#[test]
fn hermes_content_then_a_call() {
    let f = ToolFormat::Hermes;
    let out = check(
        f,
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": \"a </tool_call> in a string\"}}\n</tool_call>\n",
        true,
    );
    assert_eq!(out.content.as_deref(), Some("Let me check."));
    assert_eq!(
        out.tool_calls,
        [call(
            0,
            f,
            "get_weather",
            r#"{"city": "Paris", "note": "a </tool_call> in a string"}"#
        )]
    );
}

#[test]
fn hermes_parallel_calls_unicode_and_no_closing_tag() {
    let f = ToolFormat::Hermes;
    let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"café ☕\"}}\n</tool_call>\n<tool_call>\n{\"arguments\": {}, \"name\": \"b\"}";
    let out = check(f, text, true);
    assert_eq!(out.content, None);
    assert_eq!(
        out.tool_calls,
        [
            call(0, f, "a", r#"{"q": "café ☕"}"#),
            call(1, f, "b", "{}")
        ]
    );
}

#[test]
fn hermes_plain_text_with_angle_brackets_is_content() {
    let f = ToolFormat::Hermes;
    let text = "Use <b>bold</b> or <tool not a call> and end with <tool_ca";
    let out = check(f, text, true);
    assert_eq!(out.content.as_deref(), Some(text));
    assert!(out.tool_calls.is_empty());
    // Whitespace at the end of plain content is kept.
    assert_eq!(check(f, "Hi!\n", true).content.as_deref(), Some("Hi!\n"));
}

#[test]
fn hermes_malformed_or_cut_off_calls_become_content() {
    let f = ToolFormat::Hermes;
    let bad =
        "Sure. <tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}, }\n</tool_call> after";
    let out = check(f, bad, false);
    assert!(out.tool_calls.is_empty());
    assert_eq!(
        out.content.as_deref(),
        Some(
            "Sure.<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}, }\n</tool_call> after"
        )
    );
    let cut = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": ";
    let out = check(f, cut, false);
    assert!(out.tool_calls.is_empty());
    assert_eq!(out.content.as_deref(), Some(cut));
    // A missing name is not a call.
    let out = check(f, "<tool_call>{\"arguments\": {}}</tool_call>", false);
    assert!(out.tool_calls.is_empty());
    // A later good call still counts, at index 0.
    let out = check(
        f,
        "<tool_call>oops</tool_call> <tool_call>{\"name\": \"z\", \"arguments\": {}}</tool_call>",
        false,
    );
    assert_eq!(out.tool_calls, [call(0, f, "z", "{}")]);
}

#[test]
fn llama3_json_calls_at_the_start_only() {
    let f = ToolFormat::Llama3Json;
    let out = check(
        f,
        " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        true,
    );
    assert_eq!(out.content, None);
    assert_eq!(
        out.tool_calls,
        [call(0, f, "get_weather", r#"{"city": "Oslo"}"#)]
    );
    let out = check(
        f,
        "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"n\": [1, 2]}}",
        true,
    );
    assert_eq!(
        out.tool_calls,
        [call(0, f, "a", "{}"), call(1, f, "b", r#"{"n": [1, 2]}"#)]
    );
    // Text first: no calls, even if JSON follows.
    let text = "The call would be {\"name\": \"a\", \"parameters\": {}}";
    let out = check(f, text, true);
    assert_eq!(out.content.as_deref(), Some(text));
    assert!(out.tool_calls.is_empty());
    // JSON that is not a call is content, and no name was streamed for it.
    let text = "{\"name\": \"Ada\", \"born\": 1815}";
    let out = check(f, text, true);
    assert_eq!(out.content.as_deref(), Some(text));
    assert!(out.tool_calls.is_empty());
}

#[test]
fn mistral_arrays_and_string_arguments() {
    let f = ToolFormat::Mistral;
    let out = check(
        f,
        "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": {\"y\": [1, \"]\"]}}}, {\"name\": \"b\", \"arguments\": \"{\\\"k\\\": 2}\"}]",
        true,
    );
    assert_eq!(out.content, None);
    assert_eq!(
        out.tool_calls,
        [
            call(0, f, "a", r#"{"x": {"y": [1, "]"]}}"#),
            call(1, f, "b", r#"{"k": 2}"#)
        ]
    );
    assert_eq!(out.tool_calls[0].id.len(), 9);
    let out = check(f, "No tools needed.", true);
    assert_eq!(out.content.as_deref(), Some("No tools needed."));
    let out = check(f, "[TOOL_CALLS] nope", false);
    assert_eq!(out.content.as_deref(), Some("[TOOL_CALLS] nope"));
}

#[test]
fn streaming_sends_the_name_before_the_arguments_and_arguments_in_pieces() {
    let mut p = ToolCallParser::new(ToolFormat::Hermes, SEED);
    assert!(p.push("<tool_call>\n{\"name\": \"f\", ").is_empty());
    let d = p.push("\"arguments\": {\"a\": ");
    assert_eq!(d.tool_calls.len(), 1);
    assert_eq!(d.tool_calls[0].name.as_deref(), Some("f"));
    assert_eq!(d.tool_calls[0].arguments, "{\"a\": ");
    let d = p.push("1}}\n</tool_call>");
    assert_eq!(
        d.tool_calls,
        [ToolCallDelta {
            index: 0,
            arguments: "1}".into(),
            ..Default::default()
        }]
    );
    assert!(p.finish().is_empty());
    assert!(p.has_calls());
}

/// Random outputs stitched from the formats' pieces, split at random places: no panic, and
/// streaming collects what parsing the whole text gives, for every format.
#[test]
fn random_fragments_stream_as_they_parse_whole() {
    const PIECES: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "[TOOL_CALLS]",
        "<|python_tag|>",
        "{",
        "}",
        "[",
        "]",
        "\"name\"",
        "\"arguments\"",
        "\"parameters\"",
        ":",
        ",",
        ";",
        " ",
        "\n",
        "\"f\"",
        "\"",
        "\\",
        "1",
        "null",
        "é",
        "text",
        "<tool",
        "</",
        "{}",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..3000 {
        let text: String = (0..next(24)).map(|_| PIECES[next(PIECES.len())]).collect();
        let cuts: Vec<usize> = {
            let mut c: Vec<usize> = (0..3)
                .map(|_| next(text.len() + 1))
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            c.sort_unstable();
            c
        };
        for format in [
            ToolFormat::Hermes,
            ToolFormat::Llama3Json,
            ToolFormat::Mistral,
        ] {
            let whole = ToolCallParser::parse(format, &text, SEED);
            let mut p = ToolCallParser::new(format, SEED);
            let mut last = 0;
            for &c in &cuts {
                p.push(&text[last..c]);
                last = c;
            }
            p.push(&text[last..]);
            p.finish();
            assert_eq!(p.output(), whole, "{format:?} {text:?} cut at {cuts:?}");
            for call in &whole.tool_calls {
                assert!(
                    serde_json::from_str::<serde_json::Value>(&call.arguments).is_ok(),
                    "{text:?}: {call:?}"
                );
            }
        }
    }
}
