//! Constraints on the default model's tokenizer (SmolLM2, 49,152 tokens): masks allow exactly
//! the tokens that keep the output valid, random walks through masks always give valid output,
//! and bad constraints fail with errors that name what is wrong.

mod common;

use std::time::Duration;

use common::{force, grammars, text_of, tokenizer, walk, Rng};
use serde_json::{json, Value};
use tokenfab_structured::{
    compute_masks, Constraint, ConstraintKind, Error, Grammars, Limits, Stop,
};

/// Every token whose bytes keep `prefix` a prefix of some string of `language`, plus the
/// end-of-generation tokens when `prefix` is itself in the language: brute force over the
/// whole vocabulary. When only one continuation is possible, llguidance forces it in its
/// canonical tokenization (so the model sees the tokens it was trained on): then the mask is
/// that tokenization's first token.
fn expected_mask(prefix: &[u8], language: &[&str]) -> Vec<u32> {
    let tok = tokenizer();
    let longer: Vec<&[u8]> = language
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| s.len() > prefix.len() && s.starts_with(prefix))
        .collect();
    if longer.len() == 1 && !language.iter().any(|s| s.as_bytes() == prefix) {
        let rest = std::str::from_utf8(&longer[0][prefix.len()..]).unwrap();
        return vec![tok.encode(rest, false, false).unwrap()[0]];
    }
    let mut ok = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        if tok.is_eog(id) {
            if language.iter().any(|s| s.as_bytes() == prefix) {
                ok.push(id);
            }
            continue;
        }
        let piece = tok.token_piece(id);
        if tok.is_special(id) || piece.is_empty() {
            continue;
        }
        let mut cand = prefix.to_vec();
        cand.extend_from_slice(piece);
        if language.iter().any(|s| s.as_bytes().starts_with(&cand)) {
            ok.push(id);
        }
    }
    ok
}

#[test]
fn choice_masks_are_exactly_the_valid_tokens() {
    let g = grammars();
    let language = ["yes", "no", "maybe later", "café"];
    let c = g
        .compile(&Constraint::Choice(
            language.iter().map(|s| s.to_string()).collect(),
        ))
        .unwrap();
    let mut m = c.matcher();
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(b"", &language)
    );
    let ids = force(&mut m, "may");
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(text_of(&ids).as_bytes(), &language)
    );
    force(&mut m, "be later");
    // Complete: only end-of-generation tokens.
    let allowed = m.compute_mask().unwrap().allowed();
    assert_eq!(allowed, expected_mask(b"maybe later", &language));
    assert!(allowed.iter().all(|&t| tokenizer().is_eog(t)));
}

#[test]
fn boolean_schema_and_digit_regex_masks_are_exact() {
    let g = grammars();
    let c = g
        .compile(&Constraint::JsonSchema {
            schema: json!({"type": "boolean"}),
            strict: true,
        })
        .unwrap();
    let mut m = c.matcher();
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(b"", &["true", "false"])
    );
    force(&mut m, "fal");
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(b"fal", &["true", "false"])
    );

    // [0-9]{1,3}: the language is every string of one to three digits.
    let digits: Vec<String> = (0..1000)
        .flat_map(|n| [format!("{n}"), format!("{n:02}"), format!("{n:03}")])
        .collect();
    let lang: Vec<&str> = digits.iter().map(String::as_str).collect();
    let mut m = g
        .compile(&Constraint::Regex("[0-9]{1,3}".into()))
        .unwrap()
        .matcher();
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(b"", &lang)
    );
    force(&mut m, "4");
    assert_eq!(
        m.compute_mask().unwrap().allowed(),
        expected_mask(b"4", &lang)
    );
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).unwrap()
}

/// Random walks through `schema`'s masks: every finished walk is JSON that validates.
fn walks_validate(schema: Value, walks: usize, seed: u64) {
    let g = grammars();
    let c = g
        .compile(&Constraint::JsonSchema {
            schema: schema.clone(),
            strict: false,
        })
        .unwrap_or_else(|e| panic!("{schema}: {e}"));
    let v = validator(&schema);
    let mut rng = Rng::new(seed);
    let mut finished = 0;
    for _ in 0..walks {
        let mut m = c.matcher();
        let (tokens, done) = walk(&mut m, &mut rng, 300);
        if !done {
            continue;
        }
        finished += 1;
        assert_eq!(m.stop(), Stop::Complete);
        let text = text_of(&tokens);
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{schema}: {text:?} does not parse: {e}"));
        assert!(v.is_valid(&value), "{schema}: {text} does not validate");
    }
    assert!(
        finished * 2 >= walks,
        "{schema}: only {finished} of {walks} walks finished"
    );
}

#[test]
fn random_walks_through_twenty_schemas_validate() {
    let schemas = [
        json!({"type": "object"}),
        json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"type": "boolean"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]}),
        json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}),
        json!({"type": "string", "enum": ["red", "green", "blue"]}),
        json!({"const": {"fixed": [1, 2]}}),
        json!({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]}),
        json!({"type": "object", "properties": {"x": {"type": ["string", "null"], "maxLength": 8}}, "required": ["x"]}),
        json!({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}),
        json!({"type": "string", "minLength": 3, "maxLength": 6}),
        json!({"type": "number", "minimum": -2.5, "maximum": 10}),
        json!({"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9}),
        json!({"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"], "additionalProperties": false}),
        json!({"type": "array", "prefixItems": [{"type": "string", "maxLength": 4}, {"type": "boolean"}], "items": false}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}, "required": ["tags"]}),
        json!({"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"], "additionalProperties": false}}, "type": "array", "items": {"$ref": "#/$defs/pt"}, "maxItems": 2}),
        json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"]}),
        json!({"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]}),
        json!({"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"], "additionalProperties": false}, {"type": "object", "properties": {"kind": {"const": "b"}, "n": {"type": "integer"}}, "required": ["kind", "n"], "additionalProperties": false}]}),
        json!({"type": "object", "properties": {"score": {"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 5}, "ok": {"type": "boolean"}}, "required": ["score", "ok"], "additionalProperties": false}),
    ];
    for (i, s) in schemas.into_iter().enumerate() {
        walks_validate(s, 6, i as u64 + 1);
    }
}

#[test]
fn json_object_and_regex_walks_always_parse() {
    let g = grammars();
    let c = g.compile(&Constraint::JsonObject).unwrap();
    let mut rng = Rng::new(99);
    for _ in 0..8 {
        let mut m = c.matcher();
        let (tokens, done) = walk(&mut m, &mut rng, 300);
        if done {
            let v: Value = serde_json::from_str(&text_of(&tokens)).unwrap();
            assert!(v.is_object());
        }
    }
    let rx = r"[a-z]{2,5}@[a-z]{2,4}\.(com|org)";
    let re = regex_lite(rx);
    let c = g.compile(&Constraint::Regex(rx.into())).unwrap();
    for _ in 0..8 {
        let mut m = c.matcher();
        let (tokens, done) = walk(&mut m, &mut rng, 100);
        assert!(done);
        let t = text_of(&tokens);
        assert!(re(&t), "{t:?} does not match {rx}");
    }
}

/// A tiny checker for the e-mail regex above (no regex crate in this workspace's tests).
fn regex_lite(_rx: &str) -> impl Fn(&str) -> bool {
    |s: &str| {
        let Some((user, host)) = s.split_once('@') else {
            return false;
        };
        let Some((name, tld)) = host.split_once('.') else {
            return false;
        };
        let lower = |x: &str, lo: usize, hi: usize| {
            (lo..=hi).contains(&x.len()) && x.bytes().all(|b| b.is_ascii_lowercase())
        };
        lower(user, 2, 5) && lower(name, 2, 4) && (tld == "com" || tld == "org")
    }
}

#[test]
fn masks_of_a_batch_match_masks_computed_alone() {
    let g = grammars();
    let a = g.compile(&Constraint::JsonObject).unwrap();
    let b = g.compile(&Constraint::Regex("[0-9]+".into())).unwrap();
    // Rows of two constraints (several sharing lexer caches) at different points, in an
    // interleaved order; one row already failed.
    let prefixes = ["", "{\"k\":", "{\"k\": [1, ", "{", "{\"a\": {\"b\": tru"];
    let mut rows = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        let mut m = a.matcher();
        force(&mut m, p);
        rows.push(m);
        let mut m = b.matcher();
        force(&mut m, &"7".repeat(i));
        rows.push(m);
    }
    let mut broken = b.matcher();
    let letter = tokenizer().encode("x", false, false).unwrap()[0];
    assert!(broken.consume(letter).is_err());
    rows.insert(3, broken);
    let alone: Vec<Option<Vec<u32>>> = rows
        .iter_mut()
        .map(|m| m.compute_mask().ok().map(|m| m.allowed()))
        .collect();
    let mut refs: Vec<_> = rows.iter_mut().collect();
    let results = compute_masks(&mut refs);
    for ((m, want), r) in rows.iter().zip(&alone).zip(&results) {
        match want {
            Some(want) => assert_eq!(&m.mask().allowed(), want),
            None => assert!(r.is_err()),
        }
    }
    assert!(results.iter().filter(|r| r.is_err()).count() == 1);
    assert_ne!(alone[0], alone[2], "rows in different states differ");
}

#[test]
fn rollback_undoes_tokens() {
    let g = grammars();
    let mut m = g
        .compile(&Constraint::Choice(vec!["alpha beta".into()]))
        .unwrap()
        .matcher();
    let start = m.compute_mask().unwrap().allowed();
    let ids = force(&mut m, "alpha");
    m.rollback(ids.len()).unwrap();
    assert_eq!(m.compute_mask().unwrap().allowed(), start);
    // Draft tokens: the grammar takes the valid prefix only.
    let good = tokenizer().encode("alpha", false, false).unwrap();
    let bad = tokenizer().encode("xyz", false, false).unwrap();
    let draft: Vec<u32> = good.iter().chain(&bad).copied().collect();
    assert_eq!(m.try_consume(&draft).unwrap(), good.len());
}

#[test]
fn a_disallowed_token_is_an_error() {
    let g = grammars();
    let mut m = g
        .compile(&Constraint::Choice(vec!["yes".into()]))
        .unwrap()
        .matcher();
    let no = tokenizer().encode("no", false, false).unwrap()[0];
    assert!(!m.compute_mask().unwrap().is_allowed(no));
    let err = m.consume(no).unwrap_err();
    assert!(matches!(err, Error::Matcher(_)) && !err.is_client_error());
}

fn compile_err(g: &Grammars, c: Constraint) -> Error {
    match g.compile(&c) {
        Ok(_) => panic!("{c:?} compiled"),
        Err(e) => e,
    }
}

#[test]
fn bad_constraints_are_client_errors_naming_the_problem() {
    let g = grammars();
    let schema = |s: Value| Constraint::JsonSchema {
        schema: s,
        strict: false,
    };
    let cases = [
        (
            schema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}})),
            ConstraintKind::JsonSchema,
            "Missing",
        ),
        (
            schema(json!({"$ref": "https://example.com/schema.json"})),
            ConstraintKind::JsonSchema,
            "example.com",
        ),
        (
            schema(json!({"type": "string", "format": "made-up-format"})),
            ConstraintKind::JsonSchema,
            "made-up-format",
        ),
        (
            schema(json!({"type": "string", "pattern": "(?=a)b"})),
            ConstraintKind::JsonSchema,
            "",
        ),
        (Constraint::Regex("(ab".into()), ConstraintKind::Regex, ""),
        (
            Constraint::Grammar("start: foo\n".into()),
            ConstraintKind::Grammar,
            "foo",
        ),
    ];
    for (c, kind, needle) in cases {
        let e = compile_err(g, c.clone());
        assert!(e.is_client_error(), "{e}");
        match &e {
            Error::Compile { kind: k, message } => {
                assert_eq!(*k, kind, "{e}");
                assert!(message.contains(needle), "{c:?}: {message}");
            }
            other => panic!("{c:?}: {other}"),
        }
        assert!(e.to_string().starts_with(&kind.to_string()), "{e}");
    }
    let e = compile_err(g, Constraint::Choice(vec![]));
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "choice",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn size_and_time_limits_hold() {
    let tok = tokenizer();
    let n = tok.vocab_size();
    let small = Grammars::new(
        tok.clone(),
        n,
        Limits {
            max_source_bytes: 100,
            ..Limits::default()
        },
    )
    .unwrap();
    let big = Constraint::Choice((0..50).map(|i| format!("option {i}")).collect());
    assert!(matches!(
        compile_err(&small, big),
        Error::TooLarge { limit: 100, .. }
    ));
    let hurried = Grammars::new(
        tok,
        n,
        Limits {
            compile_timeout: Duration::from_millis(1),
            ..Limits::default()
        },
    )
    .unwrap();
    // Hundreds of patterned properties: tens of milliseconds to compile on any machine.
    let props: serde_json::Map<String, Value> = (0..300)
        .map(|i| {
            (
                format!("p{i}"),
                json!({"type": "string", "pattern": format!("^[a-z]{{{i}}}x$")}),
            )
        })
        .collect();
    let slow = Constraint::JsonSchema {
        schema: json!({"type": "object", "properties": props}),
        strict: true,
    };
    let e = compile_err(&hurried, slow);
    assert!(
        matches!(e, Error::CompileTimeout { .. }) && e.is_client_error(),
        "{e}"
    );
}

#[test]
fn wider_logits_rows_mask_the_padding() {
    let tok = tokenizer();
    let n = tok.vocab_size();
    let g = Grammars::new(tok.clone(), n + 64, Limits::default()).unwrap();
    let mut m = g.compile(&Constraint::JsonObject).unwrap().matcher();
    let mask = m.compute_mask().unwrap();
    assert_eq!(mask.vocab_size(), n + 64);
    assert!((n as u32..n as u32 + 64).all(|t| !mask.is_allowed(t)));
    let mut logits = vec![0.0f32; n + 64];
    mask.apply(&mut logits);
    assert_eq!(
        logits.iter().filter(|l| l.is_finite()).count(),
        mask.count()
    );
    assert!(matches!(
        Grammars::new(tok, n - 1, Limits::default()),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn strict_schemas_forbid_extra_keys() {
    let g = grammars();
    let schema =
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    for (strict, extra_allowed) in [(false, true), (true, false)] {
        let mut m = g
            .compile(&Constraint::JsonSchema {
                schema: schema.clone(),
                strict,
            })
            .unwrap()
            .matcher();
        force(&mut m, "{\"a\": 1");
        let comma = tokenizer().encode(",", false, false).unwrap()[0];
        assert_eq!(
            m.compute_mask().unwrap().is_allowed(comma),
            extra_allowed,
            "strict {strict}"
        );
    }
}
