//! Chat messages -> what the chat template renders, with the rules that keep a user's text in
//! its turn: a role must be one the template knows (templates insert roles as they are), and
//! special-token spellings inside contents and names stay text (shielded, see the loader's
//! `tokenizer/shield.rs`) unless the server runs with `--special-tokens-in-messages`.

use tokenfab_loader::{ChatMessage, ChatTemplate, Tokenizer};
use tokenfab_types::TokenId;

use crate::error::{ApiError, ApiResult};
use crate::openai::{ChatMessageIn, MessageContent};
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

/// The messages as the template sees them: roles checked, content parts joined, contents and
/// names shielded unless `l.special_tokens_in_messages`.
pub fn template_messages(
    messages: &[ChatMessageIn],
    template: &ChatTemplate,
    l: &Limits,
) -> ApiResult<Vec<ChatMessage>> {
    let shield = |s: String| -> String {
        if l.special_tokens_in_messages {
            s
        } else {
            l.tokenizer.shield_specials(&s).into_owned()
        }
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            check_role(&m.role, i, template.known_roles())?;
            let mut msg = ChatMessage::new(m.role.clone(), shield(content_text(m, i)?));
            msg.name = m.name.clone().map(shield);
            Ok(msg)
        })
        .collect()
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
