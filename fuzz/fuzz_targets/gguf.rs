//! A model file is untrusted input: any bytes must parse or fail with an error, never panic,
//! hang or allocate without bound. Files that parse are read on: tensor bytes, the tokenizer and
//! the chat template.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenfab_loader::{ChatMessage, ChatTemplate, Gguf, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = g.architecture();
    for t in &g.tensors {
        let _ = g.tensor_bytes(t).len();
        let _ = t.n_elements();
    }
    let Ok(tok) = Tokenizer::from_gguf(&g) else {
        return;
    };
    if let Ok(ids) = tok.encode("Hello <|im_start|>world é 😀", true, true) {
        let _ = tok.decode(&ids, false);
    }
    if let Ok(Some(t)) = ChatTemplate::from_gguf(&g, &tok) {
        let _ = t.render(&[ChatMessage::new("user", "hi")], true);
    }
});
