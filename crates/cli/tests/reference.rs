//! tokenfab against llama.cpp on the real default model: teacher-forced scores, free-running greedy
//! tokens, and perplexity.

mod common;
mod llama_cpp;

use common::*;

#[test]
fn teacher_forced_scores_match_llama_cpp() {
    let a = llama_cpp::teacher_forced(&model(), &references());
    assert_eq!(a.positions, 624);
    assert!(
        a.share() >= 0.98,
        "only {:.2}% of positions agree with llama.cpp",
        a.share() * 100.0
    );
    assert!(
        a.mad <= 0.05,
        "mean absolute log-probability difference {:.4} > 0.05",
        a.mad
    );
}

#[test]
fn free_running_greedy_matches_llama_cpp_first_tokens() {
    let refs = references();
    let matched = llama_cpp::first_tokens_matching(&model(), &refs, 4);
    assert!(
        matched >= 10,
        "only {matched} of {} prompts match",
        refs.len()
    );
}

/// llama.cpp's `llama-perplexity -c 512` on the same files (shared/reference/README.md), and
/// what `tokenfab perplexity` gives (the engine and the batch must not move it by more than
/// 0.01%): 14.9660 and 11.6592 from its own loop over one sequence (commit 6ea0d29), unchanged
/// by the engine; 14.9403 and 11.6639 since attention sums its scores in blocks of 8 positions
/// (issue 17; the same bits on every x86 path); 14.9938 and 11.7168 (+0.19% and +0.28% from
/// llama.cpp's) since SiLU takes a vector exp of 1 ulp instead of libm's `expf` (the same bits
/// on every path, scalar included); 14.9726 and 11.6965 (+0.05% and +0.11%) since RMSNorm sums
/// its squares in f64 as llama.cpp does (16 lanes and a fixed tree: the same bits on every path).
#[test]
fn perplexity_is_within_two_percent_of_llama_cpp_and_unchanged_by_the_engine() {
    let model = model();
    for (file, want, before) in [
        ("GPL-2.txt", 14.9655, 14.9726),
        ("MPL-2.0.txt", 11.6840, 11.6965),
    ] {
        let path = shared().join("reference/texts").join(file);
        let ppl = llama_cpp::perplexity(&model, &path, 512);
        llama_cpp::assert_ppl_close(file, ppl, want);
        let moved = (ppl - before).abs() / before;
        assert!(
            moved <= 1e-4,
            "{file}: PPL {ppl} moved {:.4}% from {before}",
            moved * 100.0
        );
    }
}
