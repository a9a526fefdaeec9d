//! Request bodies through everything a handler does before it submits: JSON checks, typed
//! parsing, validation against the model's limits and a request's work budget, structured
//! outputs (`response_format`, `structured_outputs`: schemas, regexes, Lark grammars compiled
//! under their limits) and tools (`tools`, `tool_choice`, tool history rendered). Any body must
//! become a `ValidRequest` or a 4xx `ApiError`, never a panic or a hang; a valid request must fit
//! the limits and the budget.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tokenfab_server::budget::{work_of, WorkBudget};
use tokenfab_server::tools::ToolSetup;
use tokenfab_server::validation::Limits;
use tokenfab_structured::{Grammars, ReasoningFormat};

fn grammars() -> &'static Arc<Grammars> {
    static G: OnceLock<Arc<Grammars>> = OnceLock::new();
    G.get_or_init(|| {
        let tok = tokenfab_fuzz::shared_tokenizer();
        let n = tok.vocab_size();
        Arc::new(Grammars::new(tok, n, tokenfab_structured::Limits::default()).expect("grammars"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let m = tokenfab_fuzz::model();
    let l = Limits {
        tokenizer: &m.tokenizer,
        template: m.template.as_ref(),
        context_len: 2048,
        kv_cache_tokens: if flags & 2 != 0 { 1024 } else { 1 << 20 },
        vocab_size: m.tokenizer.vocab_size(),
        model_id: "m",
        max_tokens_limit: 512,
        max_prompt_tokens: if flags & 4 != 0 { 64 } else { usize::MAX },
        grammars: grammars(),
        tools: ToolSetup::new(
            m.template.as_ref(),
            None,
            (flags & 32 != 0).then_some(ReasoningFormat::Qwen3),
        ),
        work: if flags & 8 != 0 {
            WorkBudget {
                max_prompt_tokens_total: 256,
                max_logprob_entries: 1000,
                max_response_bytes: 100_000,
                max_choices: 8,
                ..WorkBudget::unlimited(&m.tokenizer)
            }
        } else {
            WorkBudget::unlimited(&m.tokenizer)
        },
        special_tokens_in_messages: flags & 16 != 0,
    };
    match tokenfab_server::validate_request(flags & 1 != 0, body, &l) {
        Ok(v) => {
            assert!(v.n() >= 1 && v.num_choices() >= 1);
            for p in v.prompts() {
                assert!(!p.tokens().is_empty());
                assert!(p.tokens().len() <= l.max_prompt_tokens);
                assert!(p.tokens().len() + p.max_tokens() <= l.context_len.min(l.kv_cache_tokens));
                assert!(p.max_tokens() <= l.max_tokens_limit);
                assert!(p.tokens().iter().all(|&t| (t as usize) < l.vocab_size));
            }
            let w = work_of(&v, l.work.max_token_bytes);
            assert!(w.choices <= l.work.max_choices);
            assert!(w.prompt_tokens <= l.work.max_prompt_tokens_total);
            assert!(w.logprob_entries <= l.work.max_logprob_entries);
            assert!(w.response_bytes <= l.work.max_response_bytes);
            // Every choice gets its own matcher, whose first mask exists.
            for r in v.engine_requests() {
                if let Some(g) = &r.grammar {
                    assert!(g.matcher().compute_mask().is_ok());
                }
            }
        }
        Err(e) => {
            let (status, _, _) = e.status_type_code();
            assert!(status.is_client_error(), "{status} for a request body: {e}");
        }
    }
});
