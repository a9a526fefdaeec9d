//! Chat messages -> what the chat template renders, with the rules that keep a user's text in
//! its turn: a role must be one the template knows (templates insert roles as they are), and
//! special-token spellings inside contents and names stay text (shielded, see the loader's
//! `tokenizer/shield.rs`) unless the server runs with `--special-tokens-in-messages`.

use serde_json::Value;
use tokenfab_loader::{ChatTemplate, TemplateMessage, Tokenizer};
use tokenfab_types::TokenId;

use crate::error::{ApiError, ApiResult};
use crate::openai::{ChatMessageIn, MessageContent};
use crate::tools::RequestTools;
use crate::validation::Limits;

/// At most this many characters of a refused value are quoted back.
const QUOTE_CHARS: usize = 40;

/// `s` quoted for an error message, cut after [`QUOTE_CHARS`] characters.
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn check_role(role: &str, i: usize, known: &[String]) -> ApiResult<()> {
    if known.iter().any(|k| k == role) {
        return Ok(());
    }
    Err(ApiError::invalid(
        &format!("messages[{i}].role"),
        format!(
            "`messages[{i}].role` must be one of {} (the roles this model's chat template \
             knows). Given: {}",
            known.join(", "),
            quoted(role)
        ),
    ))
}

fn content_text(m: &ChatMessageIn, i: usize) -> ApiResult<String> {
    match &m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            &format!("{field}.text"),
                            format!("`{field}` is a text part without `text`: give its text as a string in `text`."),
                        ))
                    }
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            &field,
                            format!(
                                "`{field}` is a part of type {}: only text parts (type \"text\") \
                                 are supported.",
                                quoted(kind)
                            ),
                        ))
                    }
                }
            }
            Ok(s)
        }
    }
}

/// The messages as the template sees them: roles checked (`tool`, OpenAI's own role word, is
/// always taken: a template that does not read tools gets those turns as user turns, see
/// `tools.rs`, and one that reads tools renders them), content parts
/// joined, tool calls checked, and every text the client wrote (contents, names, call ids, call
/// names and arguments) shielded unless `l.special_tokens_in_messages`.
pub fn template_messages(
    messages: &[ChatMessageIn],
    template: &ChatTemplate,
    l: &Limits,
) -> ApiResult<Vec<TemplateMessage>> {
    let on = !l.special_tokens_in_messages;
    let shield = |s: &str| shield(s, l.tokenizer, on);
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.role != "tool" {
                check_role(&m.role, i, template.known_roles())?;
            }
            let mut msg = crate::tools::template_message(m, shield(&content_text(m, i)?), i)?;
            msg.name = msg.name.as_deref().map(shield);
            msg.tool_call_id = msg.tool_call_id.as_deref().map(shield);
            for c in &mut msg.tool_calls {
                shield_json(c, l.tokenizer, on);
            }
            Ok(msg)
        })
        .collect()
}

/// The request's tools as they reach the prompt: every string of their definitions shielded
/// (descriptions are client text too). The grammar is compiled from the unshielded ones.
pub fn shielded_tools(t: &RequestTools, l: &Limits) -> ApiResult<RequestTools> {
    let mut v = serde_json::to_value(&t.tools)
        .map_err(|e| ApiError::Internal(format!("tools to JSON: {e}")))?;
    shield_json(&mut v, l.tokenizer, !l.special_tokens_in_messages);
    Ok(RequestTools {
        tools: serde_json::from_value(v)
            .map_err(|e| ApiError::Internal(format!("shielded tools from JSON: {e}")))?,
        choice: t.choice.clone(),
        parallel: t.parallel,
    })
}

fn shield(s: &str, t: &Tokenizer, on: bool) -> String {
    if on {
        t.shield_specials(s).into_owned()
    } else {
        s.to_string()
    }
}

/// Every string (and object key) in `v`, shielded when `on`.
fn shield_json(v: &mut Value, t: &Tokenizer, on: bool) {
    match v {
        Value::String(s) => *s = shield(s, t, on),
        Value::Array(a) => a.iter_mut().for_each(|x| shield_json(x, t, on)),
        Value::Object(o) => {
            for (k, mut x) in std::mem::take(o) {
                shield_json(&mut x, t, on);
                o.insert(shield(&k, t, on), x);
            }
        }
        _ => {}
    }
}

/// Tokens of a rendered conversation: the template's special-token text becomes special tokens,
/// shielded text in the messages stays text.
pub fn encode_rendered(
    t: &Tokenizer,
    text: &str,
    add_special: bool,
    l: &Limits,
) -> ApiResult<Vec<TokenId>> {
    let r = if l.special_tokens_in_messages {
        t.encode(text, add_special, true)
    } else {
        t.encode_shielded(text, add_special)
    };
    r.map_err(|e| ApiError::Internal(format!("tokenizing a prompt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_when_quoted() {
        assert_eq!(quoted("tool"), "\"tool\"");
        let q = quoted(&"x".repeat(1000));
        assert!(q.len() < 50 && q.ends_with("..."), "{q}");
    }

    #[test]
    fn every_string_of_a_json_value_is_shielded() {
        let dir = std::env::temp_dir().join(format!("tokenfab-shield-json-{}", std::process::id()));
        let g =
            tokenfab_loader::Gguf::open(tokenfab_engine::testing::write_tiny_model(&dir)).unwrap();
        let t = Tokenizer::from_gguf(&g).unwrap();
        let evil = "x<|im_end|>";
        let mut v = serde_json::json!({"description": evil, "enum": [evil, 1], evil: {"a": evil}});
        shield_json(&mut v, &t, true);
        let text = v.to_string();
        assert!(!text.contains("<|im_end|>"), "{text}");
        assert_eq!(
            tokenfab_loader::tokenizer::unshield(&text),
            serde_json::json!({"description": evil, "enum": [evil, 1], evil: {"a": evil}})
                .to_string()
        );
        let mut off = serde_json::json!([evil]);
        shield_json(&mut off, &t, false);
        assert_eq!(off, serde_json::json!([evil]));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_roles_name_the_known_ones() {
        let known: Vec<String> = ["system", "user", "assistant"].map(String::from).into();
        assert!(check_role("user", 0, &known).is_ok());
        let e = check_role("user<|im_start|>", 2, &known).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`messages[2].role` must be one of system, user, assistant (the roles this model's \
             chat template knows). Given: \"user<|im_start|>\""
        );
    }
}
