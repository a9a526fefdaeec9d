//! Structured outputs in a request: OpenAI's `response_format` (`text`, `json_object`,
//! `json_schema` with `strict`) and vLLM's `structured_outputs` object (`json`, `regex`,
//! `choice`, `grammar` in Lark, `json_object`, with `disable_any_whitespace`,
//! `disable_additional_properties` and `whitespace_pattern`), turned into one [`Constraint`]
//! and compiled. A field that cannot be honoured is a 400 naming it, never ignored: vLLM's
//! `structural_tag`, the `guided_*` fields vLLM removed in 0.12, two constraints at once, and
//! every schema, regex or grammar that does not compile (llguidance's message names the
//! offending keyword or rule).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokenfab_structured::{Compiled, Constraint, Error as StructuredError};

use crate::error::{ApiError, ApiResult};
use crate::openai::SamplingFields;
use crate::validation::Limits;

/// vLLM's `StructuredOutputsParams`, as its OpenAI server reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StructuredOutputs {
    json: Option<Value>,
    regex: Option<String>,
    choice: Option<Vec<String>>,
    grammar: Option<String>,
    json_object: Option<bool>,
    #[serde(default)]
    disable_any_whitespace: bool,
    #[serde(default)]
    disable_additional_properties: bool,
    whitespace_pattern: Option<String>,
    structural_tag: Option<Value>,
    /// There is one backend and no fallback, so both values mean the same here.
    #[serde(default)]
    #[allow(dead_code)]
    disable_fallback: bool,
}

fn invalid(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(field, msg)
}

/// The constraint on the generated text that the request asks for, if any, with the field
/// that asked (`response_format` or `structured_outputs`), which its errors name.
pub fn constraint(f: &SamplingFields) -> ApiResult<Option<(Constraint, &'static str)>> {
    let removed = [
        ("guided_json", &f.guided_json, "{\"json\": ...}"),
        ("guided_regex", &f.guided_regex, "{\"regex\": ...}"),
        ("guided_choice", &f.guided_choice, "{\"choice\": ...}"),
        ("guided_grammar", &f.guided_grammar, "{\"grammar\": ...}"),
        (
            "guided_whitespace_pattern",
            &f.guided_whitespace_pattern,
            "{\"whitespace_pattern\": ...}",
        ),
    ];
    for (field, v, instead) in removed {
        if v.is_some() {
            return Err(invalid(
                field,
                format!(
                    "`{field}` is not supported (vLLM removed it in 0.12); \
                     send `structured_outputs: {instead}` instead."
                ),
            ));
        }
    }
    if f.guided_decoding_backend.is_some() {
        return Err(invalid(
            "guided_decoding_backend",
            "`guided_decoding_backend` is not supported: tokenfab has one backend (llguidance); \
             remove the field.",
        ));
    }
    if f.structural_tag.is_some() {
        return Err(unsupported_structural_tag("structural_tag"));
    }
    let from_format = f
        .response_format
        .as_ref()
        .map(response_format)
        .transpose()?;
    let from_outputs = f
        .structured_outputs
        .as_ref()
        .map(structured_outputs)
        .transpose()?;
    match (from_format.flatten(), from_outputs) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "Give either `response_format` or `structured_outputs`, not both.",
        )),
        (Some(c), None) => Ok(Some((c, "response_format"))),
        (None, Some(c)) => Ok(Some((c, "structured_outputs"))),
        (None, None) => Ok(None),
    }
}

fn unsupported_structural_tag(field: &str) -> ApiError {
    invalid(
        field,
        format!("`{field}` (structural tags) is not supported; use `tools` for tool calls."),
    )
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> ApiResult<Option<Constraint>> {
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            "response_format.type",
            "`response_format.type` must be one of `text`, `json_object`, `json_schema`.",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let js = v
                .get("json_schema")
                .filter(|j| j.is_object())
                .ok_or_else(|| {
                    invalid(
                        "response_format.json_schema",
                        "`response_format.json_schema` must be an object with a `schema`.",
                    )
                })?;
            if let Some(name) = js.get("name") {
                let ok = name.as_str().is_some_and(|n| {
                    (1..=64).contains(&n.len())
                        && n.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                });
                if !ok {
                    return Err(invalid(
                        "response_format.json_schema.name",
                        "`response_format.json_schema.name` must be 1 to 64 letters, digits, \
                         `_` or `-`.",
                    ));
                }
            }
            let schema = js.get("schema").ok_or_else(|| {
                invalid(
                    "response_format.json_schema.schema",
                    "`response_format.json_schema.schema` is required.",
                )
            })?;
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid(
                        "response_format.json_schema.strict",
                        "`response_format.json_schema.strict` must be a boolean.",
                    ))
                }
            };
            Ok(Some(Constraint::JsonSchema {
                schema: schema_value(schema.clone(), "response_format.json_schema.schema")?,
                strict,
            }))
        }
        "structural_tag" => Err(unsupported_structural_tag("response_format")),
        other => Err(invalid(
            "response_format.type",
            format!(
                "`response_format.type` must be one of `text`, `json_object`, `json_schema`. \
                 Given: {other:?}"
            ),
        )),
    }
}

/// A schema must be an object (or `true`, any value).
fn schema_value(v: Value, field: &str) -> ApiResult<Value> {
    match v {
        Value::Object(_) => Ok(v),
        Value::Bool(true) => Ok(json!({})),
        _ => Err(invalid(
            field,
            format!("`{field}` must be a JSON schema object."),
        )),
    }
}

/// vLLM's `structured_outputs`.
fn structured_outputs(v: &Value) -> ApiResult<Constraint> {
    const FIELD: &str = "structured_outputs";
    let so: StructuredOutputs = crate::json::parse(v).map_err(|e| {
        // Name the field under its parent.
        invalid(
            FIELD,
            format!("Invalid `{FIELD}`: {e}").replace("`.", "`structured_outputs."),
        )
    })?;
    if so.structural_tag.is_some() {
        return Err(unsupported_structural_tag(
            "structured_outputs.structural_tag",
        ));
    }
    let given: Vec<&str> = [
        ("json", so.json.is_some()),
        ("regex", so.regex.is_some()),
        ("choice", so.choice.is_some()),
        ("grammar", so.grammar.is_some()),
        ("json_object", so.json_object == Some(true)),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        return Err(invalid(
            FIELD,
            format!(
                "`structured_outputs` must set exactly one of `json`, `regex`, `choice`, \
                 `grammar`, `json_object`. Given: {}",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            ),
        ));
    }
    let whitespace = whitespace_options(&so)?;
    let json_only = |c: Constraint| {
        if whitespace.is_some() || so.disable_additional_properties {
            Err(invalid(
                FIELD,
                format!(
                    "`disable_any_whitespace`, `whitespace_pattern` and \
                     `disable_additional_properties` apply to `json` and `json_object` only, \
                     not to `{}`.",
                    given[0]
                ),
            ))
        } else {
            Ok(c)
        }
    };
    if let Some(rx) = so.regex {
        return json_only(Constraint::Regex(rx));
    }
    if let Some(choice) = so.choice {
        return json_only(Constraint::Choice(choice));
    }
    if let Some(g) = so.grammar {
        return json_only(Constraint::Grammar(g));
    }
    let schema = match so.json {
        Some(Value::String(s)) => serde_json::from_str(&s).map_err(|e| {
            invalid(
                "structured_outputs.json",
                format!("`structured_outputs.json` is a string but not JSON: {e}."),
            )
        })?,
        Some(v) => v,
        None => json!({"type": "object"}),
    };
    let mut schema = schema_value(schema, "structured_outputs.json")?;
    if let (Some(ws), Value::Object(map)) = (whitespace, &mut schema) {
        map.insert("x-guidance".into(), Value::Object(ws));
    }
    Ok(Constraint::JsonSchema {
        schema,
        strict: so.disable_additional_properties,
    })
}

/// llguidance's JSON options for vLLM's whitespace fields.
fn whitespace_options(so: &StructuredOutputs) -> ApiResult<Option<Map<String, Value>>> {
    match (&so.whitespace_pattern, so.disable_any_whitespace) {
        (Some(_), true) => Err(invalid(
            "structured_outputs",
            "Give at most one of `structured_outputs.whitespace_pattern` and \
             `structured_outputs.disable_any_whitespace`.",
        )),
        (Some(p), false) => Ok(Some(
            [("whitespace_pattern".to_string(), json!(p))]
                .into_iter()
                .collect(),
        )),
        (None, true) => Ok(Some(
            [("whitespace_flexible".to_string(), json!(false))]
                .into_iter()
                .collect(),
        )),
        (None, false) => Ok(None),
    }
}

/// Compiles `c` for this model (cached per distinct constraint). A schema, regex or grammar
/// that does not compile is a 400 naming `field` and what failed.
pub fn compile(c: &Constraint, field: &str, l: &Limits) -> ApiResult<Arc<Compiled>> {
    let grammars = l.grammars.grammars().map_err(|e| {
        invalid(
            field,
            format!("Constrained decoding is not available for this model: {e}"),
        )
    })?;
    grammars.compile(c).map_err(|e| client_error(e, field))
}

/// A structured-outputs error as the request's fault (400), naming `field`.
pub fn client_error(e: StructuredError, field: &str) -> ApiError {
    if e.is_client_error() {
        let param = match &e {
            StructuredError::Invalid { field, .. } => field.to_string(),
            _ => field.to_string(),
        };
        invalid(&param, format!("`{field}`: {e}"))
    } else {
        ApiError::Internal(format!("structured outputs: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn c_of(v: Value) -> Option<Constraint> {
        constraint(&fields(v)).unwrap().map(|(c, _)| c)
    }

    fn err(v: Value) -> String {
        constraint(&fields(v)).unwrap_err().to_string()
    }

    #[test]
    fn response_formats() {
        assert_eq!(c_of(json!({"response_format": {"type": "text"}})), None);
        assert_eq!(
            c_of(json!({"response_format": {"type": "json_object"}})),
            Some(Constraint::JsonObject)
        );
        let c = c_of(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "p", "schema": {"type": "integer"}, "strict": true}}}));
        assert_eq!(
            c,
            Some(Constraint::JsonSchema {
                schema: json!({"type": "integer"}),
                strict: true
            })
        );
        assert!(err(json!({"response_format": {"type": "xml"}})).contains("\"xml\""));
        assert!(err(json!({"response_format": {"type": "json_schema"}})).contains("json_schema"));
        assert!(err(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "a b", "schema": {}}}}))
        .contains("name"));
        assert!(err(json!({"response_format": {"type": "json_schema",
            "json_schema": {"schema": 3}}}))
        .contains("schema object"));
    }

    #[test]
    fn vllm_structured_outputs() {
        let c = |v: Value| c_of(json!({ "structured_outputs": v })).unwrap();
        assert_eq!(
            c(json!({"regex": "[a-z]+"})),
            Constraint::Regex("[a-z]+".into())
        );
        assert_eq!(
            c(json!({"choice": ["a", "b"]})),
            Constraint::Choice(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            c(json!({"grammar": "start: \"x\""})),
            Constraint::Grammar("start: \"x\"".into())
        );
        assert_eq!(
            c(json!({"json": "{\"type\": \"string\"}", "disable_additional_properties": true})),
            Constraint::JsonSchema {
                schema: json!({"type": "string"}),
                strict: true
            }
        );
        let Constraint::JsonSchema { schema, .. } =
            c(json!({"json_object": true, "disable_any_whitespace": true}))
        else {
            panic!()
        };
        assert_eq!(schema["x-guidance"]["whitespace_flexible"], false);
        assert_eq!(schema["type"], "object");
        assert!(err(json!({"structured_outputs": {}})).contains("exactly one"));
        assert!(
            err(json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}))
                .contains("regex, choice")
        );
        assert!(
            err(json!({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}}))
                .contains("apply to `json`")
        );
        assert!(
            err(json!({"structured_outputs": {"regex": "a", "backend": "x"}})).contains("backend")
        );
        assert!(
            err(json!({"structured_outputs": {"structural_tag": "{}"}})).contains("not supported")
        );
        assert!(err(json!({"structured_outputs": {"json": "{oops"}})).contains("not JSON"));
    }

    #[test]
    fn removed_and_conflicting_fields_are_refused_by_name() {
        let e = err(json!({"guided_json": {}}));
        assert!(
            e.contains("guided_json") && e.contains("structured_outputs: {\"json\""),
            "{e}"
        );
        assert!(err(json!({"guided_decoding_backend": "xgrammar"})).contains("llguidance"));
        assert!(err(json!({"response_format": {"type": "json_object"},
            "structured_outputs": {"regex": "a"}}))
        .contains("not both"));
        // `text` is no constraint, so it combines with anything.
        let (_, field) = constraint(&fields(json!({"response_format": {"type": "text"},
            "structured_outputs": {"regex": "a"}})))
        .unwrap()
        .unwrap();
        assert_eq!(field, "structured_outputs");
    }
}
