//! The roles a chat template knows, read from its source: the standard three plus every word it
//! compares a message's role with. A request's role outside that set is refused by the server,
//! so a role string (which templates insert as is, e.g. ChatML's `'<|im_start|>' + role`) can
//! never carry text of its own into the prompt.

use fancy_regex::Regex;

use crate::chat_template::STANDARD_ROLES;

/// A role word: what templates compare roles with (`tool`, `ipython`, `developer`...).
fn is_role_word(s: &str) -> bool {
    s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Known roles of a template `source`, standard ones first, each once.
pub fn known_roles(source: &str) -> Vec<String> {
    // `role'] == 'user'`, `role != "system"`; `'tool' == message.role`; `role in ['a', 'b']`.
    const COMPARED: &str = r#"role['"]?\s*\]?\s*(?:==|!=)\s*(['"])([^'"\n]{1,64})\1"#;
    const COMPARED_REV: &str = r#"(['"])([^'"\n]{1,64})\1\s*(?:==|!=)\s*[\w.\[\]'"]*role\b"#;
    const LISTED: &str = r#"role['"]?\s*\]?\s+(?:not\s+)?in\s+[\[(]([^\])]{0,400})[\])]"#;
    const QUOTED: &str = r#"(['"])([^'"\n]{1,64})\1"#;
    let mut roles: Vec<String> = STANDARD_ROLES.iter().map(|r| r.to_string()).collect();
    let mut add = |r: &str| {
        if is_role_word(r) && !roles.iter().any(|k| k == r) {
            roles.push(r.to_string());
        }
    };
    let (Ok(cmp), Ok(rev), Ok(listed), Ok(quoted)) = (
        Regex::new(COMPARED),
        Regex::new(COMPARED_REV),
        Regex::new(LISTED),
        Regex::new(QUOTED),
    ) else {
        return roles;
    };
    for re in [&cmp, &rev] {
        for c in re.captures_iter(source).flatten() {
            if let Some(m) = c.get(2) {
                add(m.as_str());
            }
        }
    }
    for c in listed.captures_iter(source).flatten() {
        let Some(list) = c.get(1) else { continue };
        for q in quoted.captures_iter(list.as_str()).flatten() {
            if let Some(m) = q.get(2) {
                add(m.as_str());
            }
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_compared_or_listed_in_the_source_are_known() {
        let chatml = "{% for message in messages %}{% if loop.first and messages[0]['role'] != \
                      'system' %}x{% endif %}{{'<|im_start|>' + message['role'] + '\\n'}}{% endfor %}";
        assert_eq!(known_roles(chatml), ["system", "user", "assistant"]);
        let src = r#"{% if message.role == "tool" %}{% elif 'ipython' == message['role'] %}
            {% elif message['role'] in ['developer', "function"] %}{% endif %}
            {% if m.role == '<|im_end|>' %}{% endif %}"#;
        assert_eq!(
            known_roles(src),
            [
                "system",
                "user",
                "assistant",
                "tool",
                "ipython",
                "developer",
                "function"
            ]
        );
    }
}
