//! Hostile templates and messages: rendering must end (fuel), not recurse without bound, not grow
//! its output past the limit, and never touch files or the environment. libFuzzer's `-timeout`
//! and `-rss_limit_mb` turn a hang or a blow-up into a crash.
//!
//! Input: segments split at 0xFF. Flag byte bit 0: the first segment is a template source
//! (else the default model's template renders the messages); the rest are role/content pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenfab_loader::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xFF);
    let soup = flags & 4 != 0;
    let own;
    let template = if flags & 1 != 0 {
        let src = tokenfab_fuzz::text(parts.next().unwrap_or_default(), false);
        match ChatTemplate::new(&src, "<|im_start|>", "<|im_end|>") {
            Ok(t) => {
                own = t;
                &own
            }
            Err(_) => return,
        }
    } else {
        match &tokenfab_fuzz::model().template {
            Some(t) => t,
            None => return,
        }
    };
    let rest: Vec<&[u8]> = parts.collect();
    let messages: Vec<ChatMessage> = rest
        .chunks(2)
        .map(|p| {
            ChatMessage::new(
                tokenfab_fuzz::text(p[0], soup),
                tokenfab_fuzz::text(p.get(1).copied().unwrap_or_default(), soup),
            )
        })
        .collect();
    let _ = template.render(&messages, flags & 2 != 0);
});
