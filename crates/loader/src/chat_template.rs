//! The chat template stored in GGUF metadata (`tokenizer.chat_template`), rendered with
//! minijinja the way Hugging Face transformers renders it: `trim_blocks` and `lstrip_blocks`,
//! Python string methods (`.strip()`, `.startswith()`...) through minijinja-contrib's pycompat,
//! `raise_exception`, a Python-style `tojson` and `strftime_now`.
//!
//! Invariant: a template is untrusted input. It gets no file loader and no environment access,
//! a fuel budget (instructions), a recursion limit and an output size limit, so a hostile
//! template fails with [`Error::Template`] instead of hanging or exhausting memory.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Gguf, Result, Tokenizer};

/// Instructions one render may execute; real templates need a few thousand per message.
const FUEL: u64 = 2_000_000;
/// Nesting depth of macros, loops and conditionals.
const RECURSION_LIMIT: usize = 200;
/// Longest rendered prompt, in bytes.
const MAX_OUTPUT: usize = 16 << 20;

/// One message of a conversation, as the OpenAI API and the templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// The author's name (OpenAI's `name`); templates see `message.name` only when it is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }
}

/// Roles every template is taken to know, whatever its source compares roles with.
pub const STANDARD_ROLES: [&str; 3] = ["system", "user", "assistant"];

/// A compiled chat template with its BOS/EOS token texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The Jinja text as the model file gives it (served to clients that render it themselves).
    source: String,
    bos_token: String,
    eos_token: String,
    /// [`STANDARD_ROLES`] and the roles the source compares a message's role with.
    roles: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_error(e: minijinja::Error) -> Error {
    // `raise_exception` messages are the template author's words: pass them on as they are.
    if e.kind() == ErrorKind::InvalidOperation {
        if let Some(detail) = e.detail() {
            if let Some(msg) = detail.strip_prefix("raise_exception: ") {
                return Error::Template(msg.to_string());
            }
        }
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template may insert.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_error)?,
        );
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            roles: crate::chat_roles::known_roles(source),
        })
    }

    /// The roles this template knows: system, user, assistant, and every role its source compares
    /// a message's role with (`message['role'] == 'tool'`, `role in ['ipython', ...]`).
    pub fn known_roles(&self) -> &[String] {
        &self.roles
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), `None` when it has none.
    pub fn from_gguf(g: &Gguf, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let Some(source) = g.opt("tokenizer.chat_template", Gguf::get_str)? else {
            return Ok(None);
        };
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or("");
        Self::new(source, text(tokenizer.bos_id()), text(tokenizer.eos_id())).map(Some)
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages = Value::from(minijinja::value::Serde(messages));
        self.render_value(messages, None, add_generation_prompt)
    }

    /// Renders a conversation with tools: `tools` (OpenAI function objects) is the template's
    /// `tools` variable, left undefined when `None`; assistant `tool_calls` and `role: "tool"`
    /// messages reach the template as transformers hands them over (a call's `arguments`
    /// string parsed into a mapping). Templates that never read `tools` (see
    /// [`ChatTemplate::takes_tools`]) need the tools described in a message instead.
    pub fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Vec<TemplateMessage> = messages.iter().map(parsed_arguments).collect();
        let messages = Value::from(minijinja::value::Serde(&messages));
        let tools = tools.map(|t| Value::from(minijinja::value::Serde(t)));
        self.render_value(messages, tools, add_generation_prompt)
    }

    /// Whether the template reads a `tools` variable.
    pub fn takes_tools(&self) -> bool {
        self.env
            .get_template("chat")
            .is_ok_and(|t| t.undeclared_variables(false).contains("tools"))
    }

    fn render_value(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_error)?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools.unwrap_or(Value::UNDEFINED),
        };
        let mut out = LimitedWriter(Vec::new());
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            if out.0.len() > MAX_OUTPUT {
                Error::Template(format!("rendered prompt exceeds {MAX_OUTPUT} bytes"))
            } else {
                template_error(e)
            }
        })?;
        String::from_utf8(out.0).map_err(|_| Error::Template("rendered text is not UTF-8".into()))
    }
}

/// One message of a conversation with tools, with OpenAI's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMessage {
    pub role: String,
    /// `None` (null) for an assistant turn that only calls tools.
    #[serde(default)]
    pub content: Option<String>,
    /// OpenAI `tool_calls` objects: `{"id", "type": "function", "function": {"name",
    /// "arguments"}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// On `role: "tool"` messages: the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl From<ChatMessage> for TemplateMessage {
    fn from(m: ChatMessage) -> Self {
        TemplateMessage {
            role: m.role,
            content: Some(m.content),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// Templates read `tool_call.function.arguments` as a mapping (`| tojson`, `| items`); OpenAI
/// sends a JSON string. A string that is not JSON is left as it is.
fn parsed_arguments(m: &TemplateMessage) -> TemplateMessage {
    let mut m = m.clone();
    for call in &mut m.tool_calls {
        if let Some(args) = call.pointer_mut("/function/arguments") {
            if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                *args = parsed;
            }
        }
    }
    m
}

/// A writer that fails past [`MAX_OUTPUT`] bytes.
struct LimitedWriter(Vec<u8>);

impl std::io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            self.0
                .extend_from_slice(&buf[..MAX_OUTPUT.saturating_sub(self.0.len()).min(buf.len())]);
            self.0.push(0);
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn strftime(secs: u64, format: &str) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                write!(out, "{d}")
            }
            Some('B') => write!(out, "{}", MONTHS[m as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[m as usize - 1][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{:02}", rem / 3600),
            Some('M') => write!(out, "{:02}", rem / 60 % 60),
            Some('S') => write!(out, "{:02}", rem % 60),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)`, so
/// `", "` and `": "` separators, `indent=` and `sort_keys=` honoured, no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v).unwrap_or(0).min(64))),
        },
    };
    let mut out = String::new();
    dump(
        &value,
        indent.as_deref(),
        sort_keys.unwrap_or(false),
        0,
        &mut out,
    )?;
    Ok(Value::from_safe_string(out))
}

fn dump(
    v: &Value,
    indent: Option<&str>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    if level > 64 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_finite() {
                    // Python writes floats with a fractional part or an exponent.
                    let s = format!("{f:?}");
                    out.push_str(&s);
                } else if f.is_nan() {
                    out.push_str("NaN");
                } else {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                }
            }
        }
        ValueKind::String | ValueKind::Bytes => json_string(&v.to_string(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                dump(item, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                json_string(&k.to_string(), out);
                out.push_str(": ");
                dump(&v.get_item(k)?, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => json_string(&v.to_string(), out),
    }
    Ok(())
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    #[test]
    fn renders_with_trimmed_blocks_and_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{{ m.role.upper() }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t.render(&msgs(&[("user", "  hi  ")]), true).unwrap();
        assert_eq!(out, "USER: hi\nA:");
    }

    #[test]
    fn bos_and_eos_are_in_the_context() {
        let t = ChatTemplate::new("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>x</s>");
    }

    #[test]
    fn tojson_writes_python_style_json() {
        let t = ChatTemplate::new(
            r#"{{ {"a": [1, 2.5, none, true], "b": "x\"<y>"} | tojson }}|{{ [1] | tojson(indent=2) }}"#,
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": [1, 2.5, null, true], "b": "x\"<y>"}|["#.to_string() + "\n  1\n]"
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let secs = 1_709_211_909;
        assert_eq!(
            strftime(secs, "%d %b %Y %H:%M:%S %A %-d %B"),
            "29 Feb 2024 13:05:09 Thursday 29 February"
        );
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        assert!(t.render(&[], false).unwrap().starts_with("20"));
    }

    #[test]
    fn syntax_errors_are_template_errors() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{err}");
    }

    #[test]
    fn output_is_bounded() {
        let t = ChatTemplate::new(
            "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    /// A tool-aware template in the style of Hermes/Qwen ones (tools listed with `tojson`,
    /// calls written from `tool_call.function.arguments` as a mapping, tool results by id).
    const TOOLS_TEMPLATE: &str = "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }}={{ t.function.parameters | tojson }};{% endfor %}\n{% endif %}\
{% for m in messages %}{{ m.role }}:\
{% if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}\
{% elif m.role == 'tool' %}({{ m.tool_call_id }}) {{ m.content }}\
{% else %}{{ m.content }}{% endif %}\n{% endfor %}";

    #[test]
    fn tools_calls_and_results_reach_the_template() {
        let t = ChatTemplate::new(TOOLS_TEMPLATE, "", "").unwrap();
        assert!(t.takes_tools());
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}),
        ];
        let call = serde_json::json!({"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Oslo\"}"}});
        let msgs = [
            TemplateMessage::from(ChatMessage::new("user", "weather?")),
            TemplateMessage {
                role: "assistant".into(),
                content: None,
                tool_calls: vec![call],
                tool_call_id: None,
                name: None,
            },
            TemplateMessage {
                role: "tool".into(),
                content: Some("12C".into()),
                tool_calls: Vec::new(),
                tool_call_id: Some("c1".into()),
                name: None,
            },
        ];
        assert_eq!(
            t.render_with_tools(&msgs, Some(&tools), false).unwrap(),
            // (trim_blocks eats the newline after each block tag)
            "TOOLS:w={\"type\": \"object\"};user:weather?assistant:[w {\"city\": \"Oslo\"}]tool:(c1) 12C"
        );
        // Without tools the variable is undefined, and a plain conversation renders as `render`.
        let plain = [ChatMessage::new("user", "hi")];
        let as_tool_msgs: Vec<TemplateMessage> = plain.iter().cloned().map(Into::into).collect();
        assert_eq!(
            t.render_with_tools(&as_tool_msgs, None, false).unwrap(),
            t.render(&plain, false).unwrap()
        );
    }

    #[test]
    fn templates_without_tools_say_so() {
        let t = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "")
            .unwrap();
        assert!(!t.takes_tools());
        assert!(t.source().starts_with("{% for m"));
    }
}
