//! Tools in a chat request: `tools`, `tool_choice` and `parallel_tool_calls` checked; the
//! conversation (assistant `tool_calls`, `role: "tool"` results) rendered through the chat
//! template's `tools` variable when the template reads one, else with tokenfab's generic
//! instruction and history rewriting; the grammar on the output; and how the response is parsed
//! back into `tool_calls` and `reasoning_content`.
//!
//! Decisions (README "Structured outputs and tools"):
//! - `tool_choice: "none"` with tools: the tools still reach the prompt (as OpenAI and vLLM do:
//!   the model knows them), nothing constrains or parses the output. Any `response_format`
//!   then applies to the answer as usual.
//! - tools with `response_format` (JSON): with `auto` the output is either tool calls or an
//!   answer of that format; with `required` or a named function it is the calls alone (there
//!   is no text answer for the format to apply to). A regex, choice or Lark grammar cannot be
//!   combined with tool calls: 400 unless `tool_choice` is `none`.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use serde_json::Value;
use tokenfab_loader::{ChatTemplate, TemplateMessage};
use tokenfab_structured::tools::{generic_history, generic_messages, tool_constraint_with_answer};
use tokenfab_structured::{
    ChatOutputParser, Compiled, Constraint, ReasoningFormat, Tool, ToolChoice, ToolFormat,
};

use crate::error::{ApiError, ApiResult};
use crate::openai::{
    ChatCompletionRequest, ChatDelta, ChatMessageIn, ChatMessageOut, FunctionCallOut,
    FunctionDeltaOut, ToolCallDeltaOut, ToolCallOut,
};
use crate::structured::{client_error, compile};
use crate::validation::Limits;

/// How this server writes tools into prompts and reads calls and reasoning back, decided once
/// from the chat template and the `--tool-call-parser` / `--reasoning-parser` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSetup {
    /// The tool-call format of prompts and outputs.
    pub format: ToolFormat,
    /// The template reads `tools`; otherwise tokenfab's generic (Hermes) instruction is used.
    pub template_takes_tools: bool,
    pub reasoning: Option<ReasoningFormat>,
}

impl Default for ToolSetup {
    fn default() -> Self {
        ToolSetup {
            format: ToolFormat::Hermes,
            template_takes_tools: false,
            reasoning: None,
        }
    }
}

impl ToolSetup {
    /// `parser` (`--tool-call-parser`) wins over the format detected in the template; a
    /// template that ignores `tools` gets the generic instruction, whose format is Hermes.
    pub fn new(
        template: Option<&ChatTemplate>,
        parser: Option<ToolFormat>,
        reasoning: Option<ReasoningFormat>,
    ) -> Self {
        let takes = template.is_some_and(ChatTemplate::takes_tools);
        let format = match template {
            Some(t) if takes => parser
                .or_else(|| ToolFormat::detect(t.source()))
                .unwrap_or(ToolFormat::Hermes),
            _ => ToolFormat::Hermes,
        };
        ToolSetup {
            format,
            template_takes_tools: takes,
            reasoning,
        }
    }
}

/// A request's tools, checked.
#[derive(Debug, Clone)]
pub struct RequestTools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// How a chat response is split: `tool_calls` (when the request has tools and a `tool_choice`
/// other than `none`) and `reasoning_content` (with `--reasoning-parser`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatParse {
    pub tools: Option<ToolFormat>,
    pub reasoning: Option<ReasoningFormat>,
}

impl ChatParse {
    /// A parser for one choice; `None` when the text passes through untouched.
    pub fn parser(&self) -> Option<ChatOutputParser> {
        if self.tools.is_none() && self.reasoning.is_none() {
            return None;
        }
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Some(ChatOutputParser::new(
            self.reasoning,
            self.tools.map(|f| (f, seed)),
        ))
    }
}

/// A choice's whole message: content, `reasoning_content` and `tool_calls` as the request's
/// parse splits `text`, and its `finish_reason` (`tool_calls` when calls were made and the
/// output ended on its own).
pub fn message(
    parse: &ChatParse,
    text: String,
    finish: tokenfab_types::FinishReason,
) -> (ChatMessageOut, &'static str) {
    let Some(mut p) = parse.parser() else {
        let m = ChatMessageOut {
            role: "assistant",
            content: Some(text),
            reasoning_content: None,
            tool_calls: vec![],
        };
        return (m, finish.as_str());
    };
    p.push(&text);
    p.finish();
    let out = p.output();
    let m = ChatMessageOut {
        role: "assistant",
        content: match out.content {
            None if out.tool_calls.is_empty() => Some(String::new()),
            c => c,
        },
        reasoning_content: out.reasoning_content,
        tool_calls: out
            .tool_calls
            .into_iter()
            .map(|c| ToolCallOut {
                id: c.id,
                kind: "function",
                function: FunctionCallOut {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect(),
    };
    (m, finish_reason(finish, p.has_tool_calls()))
}

/// `tool_calls` when the output made calls and ended on its own; otherwise the engine's reason.
pub fn finish_reason(finish: tokenfab_types::FinishReason, has_calls: bool) -> &'static str {
    if has_calls && finish == tokenfab_types::FinishReason::Stop {
        "tool_calls"
    } else {
        finish.as_str()
    }
}

/// A parser's delta in OpenAI's chunk shape; `None` when it adds nothing.
pub fn delta(d: tokenfab_structured::ChatDelta) -> Option<ChatDelta> {
    if d.is_empty() {
        return None;
    }
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    Some(ChatDelta {
        role: None,
        content: nonempty(d.content),
        reasoning_content: nonempty(d.reasoning_content),
        tool_calls: (!d.tool_calls.is_empty()).then(|| {
            d.tool_calls
                .into_iter()
                .map(|c| ToolCallDeltaOut {
                    index: c.index,
                    kind: c.id.as_ref().map(|_| "function"),
                    id: c.id,
                    function: FunctionDeltaOut {
                        name: c.name,
                        arguments: c.arguments,
                    },
                })
                .collect()
        }),
    })
}

/// `tools`, `tool_choice`, `parallel_tool_calls`; `None` when the request has no tools (an
/// empty list counts as none).
pub fn parse(req: &ChatCompletionRequest) -> ApiResult<Option<RequestTools>> {
    let mut tools = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        let field = format!("tools[{i}]");
        tools.push(
            crate::json::parse::<Tool>(t)
                .map_err(|e| ApiError::invalid(&field, format!("`{field}`: {e}")))?,
        );
    }
    let choice = ToolChoice::from_request(req.tool_choice.as_ref(), !tools.is_empty())
        .map_err(|e| client_error(e, "tool_choice"))?;
    if tools.is_empty() {
        return Ok(None);
    }
    tokenfab_structured::tools::validate_tools(&tools).map_err(|e| client_error(e, "tools"))?;
    Ok(Some(RequestTools {
        tools,
        choice,
        parallel: req.parallel_tool_calls.unwrap_or(true),
    }))
}

/// A message as the template sees it, `content` already flattened to text. Assistant
/// `tool_calls` must be function calls with a name and arguments (a JSON string or object);
/// a `tool` message must have content.
pub fn template_message(m: &ChatMessageIn, text: String, i: usize) -> ApiResult<TemplateMessage> {
    let calls = m.tool_calls.clone().unwrap_or_default();
    for (j, c) in calls.iter().enumerate() {
        let name_ok = c.pointer("/function/name").is_some_and(Value::is_string);
        let args_ok = matches!(
            c.pointer("/function/arguments"),
            Some(Value::String(_) | Value::Object(_))
        );
        if !(name_ok && args_ok) {
            let field = format!("messages[{i}].tool_calls[{j}]");
            return Err(ApiError::invalid(
                &field,
                format!(
                    "`{field}` must be {{\"type\": \"function\", \"function\": {{\"name\": \
                     <string>, \"arguments\": <JSON string>}}}}."
                ),
            ));
        }
    }
    if !calls.is_empty() && m.role != "assistant" {
        return Err(ApiError::invalid(
            &format!("messages[{i}].tool_calls"),
            format!(
                "Only assistant messages carry `tool_calls`. Given role {:?}",
                m.role
            ),
        ));
    }
    if m.role == "tool" && m.content.is_none() {
        return Err(ApiError::invalid(
            &format!("messages[{i}].content"),
            "A `tool` message must have `content` (the tool's result).",
        ));
    }
    Ok(TemplateMessage {
        role: m.role.clone(),
        content: (m.content.is_some() || calls.is_empty()).then_some(text),
        tool_calls: calls,
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    })
}

/// Renders the conversation: tools through the template's `tools` variable when it reads one;
/// otherwise the generic instruction joins the system message and tool traffic in the history
/// is rewritten as text, so every template renders it.
pub fn render(
    template: &ChatTemplate,
    messages: &[TemplateMessage],
    tools: Option<&RequestTools>,
    setup: &ToolSetup,
    add_generation_prompt: bool,
) -> tokenfab_loader::Result<String> {
    let has_traffic = messages
        .iter()
        .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
    match tools {
        Some(t) if setup.template_takes_tools => {
            let values: Vec<Value> = t
                .tools
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
                .collect();
            template.render_with_tools(messages, Some(&values), add_generation_prompt)
        }
        Some(t) => {
            let msgs = generic_messages(messages, &t.tools, &t.choice, t.parallel);
            template.render_with_tools(&msgs, None, add_generation_prompt)
        }
        None if has_traffic && !setup.template_takes_tools => {
            template.render_with_tools(&generic_history(messages), None, add_generation_prompt)
        }
        None => template.render_with_tools(messages, None, add_generation_prompt),
    }
}

/// The compiled constraint on a chat request's output: the tool grammar (`auto`, `required`,
/// a named function; combined with a JSON answer format under `auto`), or the answer format
/// alone (no tools, or `tool_choice: "none"`).
pub fn output_constraint(
    tools: Option<&RequestTools>,
    answer: Option<(Constraint, &'static str)>,
    l: &Limits,
) -> ApiResult<Option<Arc<Compiled>>> {
    let Some(t) = tools.filter(|t| t.choice != ToolChoice::None) else {
        return answer.map(|(c, field)| compile(&c, field, l)).transpose();
    };
    let grammars = l.grammars.grammars().map_err(|e| {
        ApiError::invalid(
            "tools",
            format!("Tool calling is not available for this model: {e}"),
        )
    })?;
    let c = tool_constraint_with_answer(
        &grammars,
        l.tools.format,
        &t.tools,
        &t.choice,
        t.parallel,
        answer.as_ref().map(|(c, _)| c),
    )
    .map_err(|e| client_error(e, "tools"))?;
    c.map(|c| compile(&c, "tools", l)).transpose()
}

/// How the response of a chat request is parsed.
pub fn chat_parse(tools: Option<&RequestTools>, l: &Limits) -> ChatParse {
    ChatParse {
        tools: tools
            .filter(|t| t.choice != ToolChoice::None)
            .map(|_| l.tools.format),
        reasoning: l.tools.reasoning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    }

    #[test]
    fn tools_and_choices_parse_or_name_the_field() {
        let r = request(
            json!({"messages": [], "tools": weather(), "tool_choice": "required",
            "parallel_tool_calls": false}),
        );
        let t = parse(&r).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Required);
        assert!(!t.parallel);
        assert_eq!(t.tools[0].function.name, "weather");
        // Defaults: auto, parallel.
        let t = parse(&request(json!({"messages": [], "tools": weather()})))
            .unwrap()
            .unwrap();
        assert_eq!((t.choice, t.parallel), (ToolChoice::Auto, true));
        assert!(parse(&request(json!({"messages": []}))).unwrap().is_none());
        assert!(
            parse(&request(json!({"messages": [], "tool_choice": "none"})))
                .unwrap()
                .is_none()
        );
        let e = parse(&request(json!({"messages": [], "tool_choice": "required"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tool_choice"), "{e}");
        let e = parse(&request(
            json!({"messages": [], "tools": [{"type": "function"}]}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("tools[0]") && e.contains("function"), "{e}");
        let e = parse(&request(json!({"messages": [], "tools": weather(),
            "tool_choice": {"type": "function", "function": {"name": "nope"}}})));
        // A named function that is not listed is refused when the grammar is built.
        assert!(e.is_ok());
    }

    #[test]
    fn messages_with_tool_traffic() {
        let m: ChatMessageIn = serde_json::from_value(json!({"role": "assistant",
            "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]}))
        .unwrap();
        let t = template_message(&m, String::new(), 1).unwrap();
        assert_eq!(t.content, None);
        assert_eq!(t.tool_calls.len(), 1);
        let bad: ChatMessageIn = serde_json::from_value(json!({"role": "assistant",
            "tool_calls": [{"function": {"name": 3}}]}))
        .unwrap();
        let e = template_message(&bad, String::new(), 2).unwrap_err();
        assert!(e.to_string().contains("messages[2].tool_calls[0]"), "{e}");
        let tool: ChatMessageIn =
            serde_json::from_value(json!({"role": "tool", "tool_call_id": "c1"})).unwrap();
        assert!(template_message(&tool, String::new(), 3)
            .unwrap_err()
            .to_string()
            .contains("tool"));
    }

    #[test]
    fn setup_follows_the_template_and_the_flag() {
        let plain = ChatTemplate::new("{{ messages[0].content }}", "", "").unwrap();
        let s = ToolSetup::new(Some(&plain), Some(ToolFormat::Mistral), None);
        assert_eq!(s.format, ToolFormat::Hermes);
        assert!(!s.template_takes_tools);
        let mistral = ChatTemplate::new(
            "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}[TOOL_CALLS]",
            "",
            "",
        )
        .unwrap();
        let s = ToolSetup::new(Some(&mistral), None, None);
        assert_eq!(
            (s.format, s.template_takes_tools),
            (ToolFormat::Mistral, true)
        );
        let s = ToolSetup::new(Some(&mistral), Some(ToolFormat::Hermes), None);
        assert_eq!(s.format, ToolFormat::Hermes);
    }
}
