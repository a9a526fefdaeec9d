//! Tools: OpenAI's `tools` / `tool_choice` / `parallel_tool_calls` turned into the grammar that
//! constrains the output, and, for chat templates that ignore tools, the instruction text and
//! history rewriting that teach the model tokenfab's generic (Hermes) format.
//!
//! - `none`: no grammar, no parsing.
//! - `auto`: free text, but once the format's start tag appears a lazy grammar forces valid
//!   calls (llguidance's lazy lexemes; vLLM's structural tags do the same).
//! - `required`: at least one call (exactly one without `parallel_tool_calls`), nothing else.
//! - a named function: exactly one call of it.
//!
//! Each function's call object is its own `%json` rule, so its arguments validate against its
//! `parameters` (with its `$defs` kept resolvable) whatever the other functions define.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokenfab_loader::TemplateMessage;

use crate::constraint::{Constraint, Grammars, ToolGrammar};
use crate::schema::{close_objects, WHITESPACE};
use crate::toolparse::ToolFormat;
use crate::{Error, Result};

/// One entry of `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema for the arguments object; absent means any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode: objects get `additionalProperties: false` unless they say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

impl ToolChoice {
    /// Parses `tool_choice` (absent: `auto` with tools, `none` without, as OpenAI).
    pub fn from_request(value: Option<&Value>, has_tools: bool) -> Result<Self> {
        let invalid = |message: String| Error::Invalid {
            field: "tool_choice",
            message,
        };
        let choice = match value {
            None | Some(Value::Null) if has_tools => ToolChoice::Auto,
            None | Some(Value::Null) => ToolChoice::None,
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(invalid(format!(
                        "`{other}` is not one of `none`, `auto`, `required` or a function object"
                    )))
                }
            },
            Some(v) => {
                let name = v
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| {
                        invalid(
                            r#"expected {"type": "function", "function": {"name": ...}}"#.into(),
                        )
                    })?;
                ToolChoice::Function(name.to_string())
            }
        };
        if choice != ToolChoice::None && !has_tools {
            return Err(invalid("needs a non-empty `tools` list".into()));
        }
        Ok(choice)
    }
}

/// Checks `tools`: functions only, named, names unique, `parameters` an object schema.
pub fn validate_tools(tools: &[Tool]) -> Result<()> {
    let invalid = |message: String| Error::Invalid {
        field: "tools",
        message,
    };
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(invalid(format!(
                "tools[{i}].type `{}` is not supported; only `function` is",
                t.kind
            )));
        }
        let name = &t.function.name;
        if name.is_empty() || name.len() > 64 {
            return Err(invalid(format!(
                "tools[{i}].function.name must be 1 to 64 characters"
            )));
        }
        if tools[..i].iter().any(|o| &o.function.name == name) {
            return Err(invalid(format!("function `{name}` is listed twice")));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(invalid(format!(
                    "tools[{i}].function.parameters must be a JSON schema object"
                )));
            }
        }
    }
    Ok(())
}

/// The JSON schema of one call object: `{"name": <const>, <arguments key>: parameters}`, the
/// parameters' `$defs` moved to the root so their `#/$defs/..` references still resolve.
fn call_schema(f: &FunctionDef, format: ToolFormat) -> Value {
    let mut params = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    if f.strict == Some(true) {
        close_objects(&mut params, 0);
    }
    let mut root = serde_json::Map::new();
    if let Value::Object(p) = &mut params {
        for key in ["$defs", "definitions"] {
            if let Some(defs) = p.remove(key) {
                root.insert(key.into(), defs);
            }
        }
        p.remove("$schema");
    }
    let args_key = format.arguments_key();
    root.insert("type".into(), json!("object"));
    root.insert(
        "properties".into(),
        json!({ "name": {"const": f.name}, args_key: params }),
    );
    root.insert("required".into(), json!(["name", args_key]));
    root.insert("additionalProperties".into(), json!(false));
    root.insert(
        "x-guidance".into(),
        json!({ "whitespace_pattern": WHITESPACE }),
    );
    Value::Object(root)
}

/// A Lark string literal.
fn lark_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Builds the grammar for `choice` (`None` for `tool_choice: "none"`). `format` is the
/// template's (or `--tool-call-parser`'s), [`ToolFormat::Hermes`] for the generic one.
pub fn tool_constraint(
    grammars: &Grammars,
    format: ToolFormat,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Result<Option<Constraint>> {
    validate_tools(tools)?;
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Function(name) => {
            let t = tools
                .iter()
                .find(|t| &t.function.name == name)
                .ok_or_else(|| Error::Invalid {
                    field: "tool_choice",
                    message: format!("function `{name}` is not in `tools`"),
                })?;
            vec![t]
        }
        _ => tools.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(Error::Invalid {
            field: "tools",
            message: "is empty".into(),
        });
    }
    // One call at most for a named function or without parallel calls.
    let many = parallel && !matches!(choice, ToolChoice::Function(_));
    // The start tag, inline: a special token is named by id (free text cannot spell it).
    let special_id = grammars.special_token(format.start_tag());
    let special = special_id.is_some();
    let tag = special_id.map_or_else(|| lark_str(format.start_tag()), |id| format!("<[{id}]>"));
    let mut rules = Vec::new();
    // `after_tag`: the calls once their opening tag is written.
    let after_tag = match format {
        ToolFormat::Hermes => {
            rules.push(r#"body: "\n" call "\n" "</tool_call>""#.to_string());
            if many {
                format!(r#"body ("\n" {tag} body)*"#)
            } else {
                "body".to_string()
            }
        }
        ToolFormat::Mistral if many => r#""[" call (", " call)* "]""#.to_string(),
        ToolFormat::Mistral => r#""[" call "]""#.to_string(),
        ToolFormat::Llama3Json if many => r#"call ("; " call)*"#.to_string(),
        ToolFormat::Llama3Json => "call".to_string(),
    };
    let calls = match format {
        ToolFormat::Llama3Json => "after_tag".to_string(),
        _ => format!("{tag} after_tag"),
    };
    let start = match (choice, format) {
        (ToolChoice::Auto, ToolFormat::Llama3Json) => {
            // Text that does not open with `{` or whitespace, or calls (alone, optionally after
            // <|python_tag|>).
            rules.push(r"TEXT: /([^{ \t\n\r](.|\n)*)?/".to_string());
            if special {
                format!("TEXT | {tag}? calls")
            } else {
                "TEXT | calls".to_string()
            }
        }
        (ToolChoice::Auto, _) => {
            rules.push(r"TEXT: /(.|\n)*/".to_string());
            if special {
                // A special tag ends free text by itself.
                "TEXT calls?".to_string()
            } else {
                // A text tag: the lazy lexeme ends at the tag's first occurrence.
                rules.push(format!("lead[lazy]: TEXT {tag}"));
                "TEXT | lead after_tag".to_string()
            }
        }
        _ => "calls".to_string(),
    };
    let names: Vec<String> = (0..chosen.len()).map(|i| format!("fn_{i}")).collect();
    let mut g = format!(
        "%llguidance {{}}\nstart: {start}\ncalls: {calls}\nafter_tag: {after_tag}\ncall: {}\n",
        names.join(" | ")
    );
    for r in rules {
        g.push_str(&r);
        g.push('\n');
    }
    for (name, t) in names.iter().zip(&chosen) {
        g.push_str(&format!(
            "{name}: %json {}\n",
            call_schema(&t.function, format)
        ));
    }
    Ok(Some(Constraint::Tools(ToolGrammar(g))))
}

/// The instruction a template that ignores `tools` gets (append it to the system message, see
/// [`generic_messages`]): the functions as JSON and tokenfab's generic call format, which is
/// [`ToolFormat::Hermes`]'s, so the same grammar and parser apply.
pub fn generic_instructions(tools: &[Tool], choice: &ToolChoice, parallel: bool) -> String {
    let mut s = String::from(
        "# Tools\n\nYou can call functions to help answer the user. \
         The functions are described as JSON inside <tools></tools>:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(
        "</tools>\n\nTo call a function, write a JSON object with its name and arguments \
         between <tool_call> and </tool_call>:\n<tool_call>\n\
         {\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n</tool_call>\n",
    );
    s.push_str(match choice {
        ToolChoice::Required => "You must call at least one function.",
        ToolChoice::Function(_) => "You must call the function named below.",
        _ => "If no function helps, answer in plain text.",
    });
    if let ToolChoice::Function(name) = choice {
        s.push_str(&format!(" Function: {name}."));
    }
    if !parallel {
        s.push_str(" Call at most one function.");
    }
    s
}

/// Rewrites a conversation for a template that ignores tools: the instruction joins the
/// system message (or opens the conversation as one), assistant `tool_calls` become
/// `<tool_call>` text, and `tool` messages become user messages wrapped in
/// `<tool_response>` (consecutive results joined), so every template can render them.
pub fn generic_messages(
    messages: &[TemplateMessage],
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Vec<TemplateMessage> {
    let text = |role: &str, content: String| TemplateMessage {
        role: role.to_string(),
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    };
    let mut out: Vec<TemplateMessage> = Vec::with_capacity(messages.len() + 1);
    let instructions = generic_instructions(tools, choice, parallel);
    match messages.first() {
        Some(m) if m.role == "system" => {
            let sys = m.content.clone().unwrap_or_default();
            out.push(text("system", format!("{sys}\n\n{instructions}")));
        }
        _ => out.push(text("system", instructions)),
    }
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut last_was_tool = false;
    for m in &messages[skip..] {
        if m.role == "tool" {
            let block = format!(
                "<tool_response>\n{}\n</tool_response>",
                m.content.as_deref().unwrap_or("")
            );
            match out.last_mut() {
                Some(prev) if last_was_tool => {
                    let c = prev.content.get_or_insert_with(String::new);
                    c.push('\n');
                    c.push_str(&block);
                }
                _ => out.push(text("user", block)),
            }
            last_was_tool = true;
            continue;
        }
        last_was_tool = false;
        if m.tool_calls.is_empty() {
            out.push(text(&m.role, m.content.clone().unwrap_or_default()));
            continue;
        }
        let mut c = m.content.clone().unwrap_or_default();
        for call in &m.tool_calls {
            let name = call
                .pointer("/function/name")
                .cloned()
                .unwrap_or(Value::Null);
            let args = match call.pointer("/function/arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                }
                Some(v) => v.clone(),
                None => json!({}),
            };
            if !c.is_empty() {
                c.push('\n');
            }
            let obj = json!({"name": name, "arguments": args});
            c.push_str(&format!("<tool_call>\n{obj}\n</tool_call>"));
        }
        out.push(text(&m.role, c));
    }
    out
}
