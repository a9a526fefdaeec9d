//! Draft tokens (speculative decoding) under the fake runner: accepted drafts advance a request
//! by several tokens a step, rejected ones are rolled back, and neither changes any output, the
//! KV a request attends to, or what the prefix cache holds.

use super::*;

/// The fake model's next `k` tokens of request `id` after its `num_tokens` tokens.
fn right_draft(id: RequestId, num_tokens: usize, k: usize) -> Vec<TokenId> {
    (0..k).map(|j| fake_token(id, num_tokens + j)).collect()
}

/// A draft whose first `good` tokens are right and the rest wrong.
fn draft(id: RequestId, num_tokens: usize, k: usize, good: usize) -> Vec<TokenId> {
    let mut d = right_draft(id, num_tokens, k);
    for t in d.iter_mut().skip(good) {
        *t += 5000; // never a fake token (those are <= 997)
    }
    d
}

/// A scheduler and a fake runner over `c`.
fn setup(c: SchedulerConfig) -> (Scheduler, FakeRunner) {
    let runner = FakeRunner::new(&c);
    (Scheduler::new(c).unwrap(), runner)
}

/// `cfg` with prefix caching off.
fn no_cache(budget: usize, seqs: usize, block_size: usize, blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(budget, seqs, block_size, blocks)
    }
}

/// Gives every running request that is decoding a draft of `k` tokens, `good` of them right.
fn propose_all(s: &mut Scheduler, k: usize, good: usize) {
    let ids: Vec<RequestId> = s.running.clone();
    for id in ids {
        let r = s.request(id).unwrap();
        if r.num_computed_tokens() + 1 == r.num_tokens() {
            let d = draft(id, r.num_tokens(), k, good);
            s.set_draft(id, d);
        }
    }
}

#[test]
fn right_drafts_are_accepted_and_save_steps() {
    let (mut s, mut runner) = setup(cfg(64, 4, 4, 64));
    s.add_request(1, prompt(1, 5), 20).unwrap();
    let mut steps = 0;
    let mut drafted = 0;
    let done = loop {
        propose_all(&mut s, 4, 4);
        let out = s.schedule();
        check_step(&s, &out);
        drafted += out.scheduled.iter().map(|q| q.num_draft).sum::<usize>();
        let sampled = runner.execute(&s, &out);
        steps += 1;
        let done = s.update(&out, &sampled);
        if !done.is_empty() {
            break done;
        }
        let r = s.request(1).unwrap();
        assert_eq!(r.num_computed_tokens() + 1, r.num_tokens());
        assert_eq!(s.kv().num_computed_slots(1), r.num_computed_tokens());
    };
    assert_eq!(done[0].request.output(), &expected_output(1, 5, 20)[..]);
    // Prefill samples 1, then each step 4 accepted + 1: 1 + 5 * 3 + the last 4 (draft capped at 3).
    assert_eq!(steps, 5, "drafted {drafted}");
    assert_eq!(s.kv().num_free_blocks(), 64);
}

#[test]
fn wrong_drafts_are_rolled_back_and_change_nothing() {
    for good in 0..4 {
        let (mut s, mut runner) = setup(cfg(64, 4, 4, 64));
        s.add_request(1, prompt(1, 6), 12).unwrap();
        s.add_request(2, prompt(2, 9), 12).unwrap();
        let mut done = HashMap::new();
        let mut steps = 0;
        while s.has_unfinished() {
            propose_all(&mut s, 4, good);
            let out = s.schedule();
            check_step(&s, &out);
            let sampled = runner.execute(&s, &out);
            for f in s.update(&out, &sampled) {
                done.insert(f.request.id(), f.request.output().to_vec());
            }
            for id in [1, 2] {
                if let Some(r) = s.request(id) {
                    assert_eq!(s.kv().num_computed_slots(id), r.num_computed_tokens());
                }
            }
            steps += 1;
        }
        assert_eq!(done[&1], expected_output(1, 6, 12), "good {good}");
        assert_eq!(done[&2], expected_output(2, 9, 12), "good {good}");
        // Each verification yields the right prefix plus one token.
        assert_eq!(steps, 1 + 11usize.div_ceil(good + 1), "good {good}");
    }
}

#[test]
fn blocks_holding_draft_tokens_never_enter_the_prefix_cache() {
    let (mut s, mut runner) = setup(cfg(64, 4, 4, 64));
    // 6 prompt tokens: block 0 full, block 1 holds positions 4..8.
    s.add_request(1, prompt(1, 6), 10).unwrap();
    step(&mut s, &mut runner);
    // 7 known tokens; a draft of 5 wrong tokens fills block 1 and most of block 2.
    let wrong = draft(1, 7, 5, 0);
    s.set_draft(1, wrong.clone());
    let out = step(&mut s, &mut runner);
    assert_eq!(out.scheduled[0].num_draft, 5);
    // A prompt equal to request 1's tokens followed by the wrong draft finds block 0 only.
    let mut p = s.request(1).unwrap().all_tokens()[..7].to_vec();
    p.extend_from_slice(&wrong);
    s.add_request(2, p.clone(), 1).unwrap();
    let out = step(&mut s, &mut runner);
    let q = out.scheduled.iter().find(|q| q.id == 2).unwrap();
    assert_eq!(q.start, 4, "only the block of verified tokens is cached");
    // A right draft, once accepted, is cached like any output.
    let r = s.request(1).unwrap();
    let n = r.num_tokens();
    s.set_draft(1, right_draft(1, n, 4));
    step(&mut s, &mut runner);
    let known = s.request(1).unwrap().all_tokens().to_vec();
    assert_eq!(known.len(), n + 5);
    s.finish(1);
    s.add_request(3, known[..12].to_vec(), 1).unwrap();
    let out = step(&mut s, &mut runner);
    let q = out.scheduled.iter().find(|q| q.id == 3).unwrap();
    assert_eq!(q.start, 8, "blocks 0 and 1 hold verified tokens now");
}

#[test]
fn drafts_fit_max_tokens_and_the_budget_and_never_preempt() {
    // max_tokens: 2 outputs so far of 4, so at most 1 draft (it and the token after make 4).
    let (mut s, mut runner) = setup(cfg(64, 4, 4, 64));
    s.add_request(1, prompt(1, 3), 4).unwrap();
    step(&mut s, &mut runner);
    step(&mut s, &mut runner);
    s.set_draft(1, right_draft(1, 5, 5));
    let out = step(&mut s, &mut runner);
    assert_eq!(out.scheduled[0].num_draft, 1);
    assert!(s.request(1).is_none(), "4 outputs: done");

    // Budget 3 with one decode: 2 drafts at most.
    let (mut s, mut runner) = setup(cfg(3, 4, 4, 64));
    s.add_request(1, prompt(1, 2), 20).unwrap();
    step(&mut s, &mut runner);
    s.set_draft(1, right_draft(1, 3, 5));
    let out = step(&mut s, &mut runner);
    assert_eq!((out.scheduled[0].num_draft, out.num_batched_tokens), (2, 3));

    // No free block for the draft: it is dropped, nobody is preempted.
    let (mut s, mut runner) = setup(no_cache(64, 4, 2, 3));
    s.add_request(1, prompt(1, 3), 3).unwrap();
    s.add_request(2, prompt(2, 1), 3).unwrap();
    step(&mut s, &mut runner); // blocks: 1 -> 2 of them, 2 -> 1
    s.set_draft(1, right_draft(1, 4, 2));
    let out = step(&mut s, &mut runner);
    assert!(out.preempted.is_empty());
    assert_eq!(out.scheduled[0].num_draft, 0);
}

#[test]
fn drafts_wait_while_a_request_waits() {
    let (mut s, mut runner) = setup(cfg(64, 1, 4, 64));
    s.add_request(1, prompt(1, 3), 20).unwrap();
    step(&mut s, &mut runner);
    s.add_request(2, prompt(2, 3), 20).unwrap();
    s.set_draft(1, right_draft(1, 4, 3));
    let out = step(&mut s, &mut runner);
    assert_eq!((s.num_waiting(), out.scheduled[0].num_draft), (1, 0));
}

#[test]
fn preemption_drops_the_draft() {
    let (mut s, mut runner) = setup(no_cache(64, 8, 2, 4));
    s.add_request(1, prompt(1, 4), 4).unwrap();
    s.add_request(2, prompt(2, 4), 4).unwrap();
    step(&mut s, &mut runner);
    s.set_draft(2, right_draft(2, 5, 1));
    let out = step(&mut s, &mut runner);
    assert_eq!(out.preempted, vec![2]);
    assert!(s.request(2).unwrap().draft.is_empty());
    let (done, _) = run_all_with(&mut s, &mut runner, 100);
    assert_eq!(done[&2], expected_output(2, 4, 4));
}

#[test]
fn randomized_drafts_under_preemption_and_prefix_caching_change_no_output() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    let (mut accepted, mut drafted, mut preemptions) = (0, 0, 0);
    for round in 0..40 {
        let block_size = 1 + rand(6);
        let num_blocks = 3 + rand(24);
        let mut c = cfg(1 + rand(40), 1 + rand(6), block_size, num_blocks);
        c.enable_prefix_caching = rand(2) == 0;
        c.max_model_len = block_size * num_blocks + 1;
        let mut s = Scheduler::new(c).unwrap();
        let mut runner = FakeRunner::new(s.config());
        let mut want = HashMap::new();
        for id in 0..(1 + rand(10)) as u64 {
            let len = 1 + rand(3 * block_size + 2);
            let max_tokens = rand(3 * block_size + 4);
            let p = prompt(rand(3) as u32, len);
            if s.add_request(id, p, max_tokens).is_ok() {
                want.insert(id, expected_output(id, len, max_tokens));
            }
        }
        let mut done = HashMap::new();
        let mut steps = 0;
        while s.has_unfinished() {
            steps += 1;
            assert!(steps < 2000, "round {round}: no progress");
            let ids: Vec<RequestId> = s.running.clone();
            for id in ids {
                let r = s.request(id).unwrap();
                if r.num_computed_tokens() + 1 == r.num_tokens() && rand(3) > 0 {
                    let k = 1 + rand(6);
                    s.set_draft(id, draft(id, r.num_tokens(), k, rand(k + 1)));
                }
            }
            let out = s.schedule();
            check_step(&s, &out);
            let sampled = runner.execute(&s, &out);
            for q in &out.scheduled {
                let n = sampled.iter().filter(|t| t.0 == q.id).count();
                drafted += q.num_draft;
                accepted += n.saturating_sub(1);
            }
            for f in s.update(&out, &sampled) {
                done.insert(f.request.id(), f.request.output().to_vec());
            }
        }
        assert_eq!(done, want, "round {round}");
        assert_eq!(s.kv().num_free_blocks(), num_blocks);
        preemptions += s.num_preemptions();
    }
    assert!(
        accepted > 100 && drafted > accepted && preemptions > 10,
        "accepted {accepted} of {drafted}, preemptions {preemptions}"
    );
}
