//! Scheduler tests with no model: a fake runner samples a deterministic token per position and
//! keeps a fake KV store (one token id per slot) to check that every attended slot holds the
//! right token, through chunking, prefix caching and preemption.

use std::collections::HashMap;

use super::*;

fn cfg(
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
    block_size: usize,
    num_blocks: usize,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens,
        max_num_seqs,
        block_size,
        num_blocks,
        enable_prefix_caching: true,
        max_model_len: 4096,
    }
}

/// The fake model's next token after position `pos` of request `id`.
fn fake_token(id: RequestId, pos: usize) -> TokenId {
    ((id * 7919 + pos as u64 * 31) % 997) as TokenId + 1
}

fn prompt(seed: u32, n: usize) -> Vec<TokenId> {
    (0..n as u32).map(|i| seed * 1000 + i).collect()
}

/// A fake runner: writes each scheduled token into its KV slot, checks that every position the
/// sequence attends to holds the right token, and samples `fake_token` where asked.
struct FakeRunner {
    /// One "KV entry" per slot: `block * block_size + offset` -> the token whose KV it holds.
    slots: Vec<Option<TokenId>>,
    block_size: usize,
}

impl FakeRunner {
    fn new(c: &SchedulerConfig) -> Self {
        Self {
            slots: vec![None; c.num_blocks * c.block_size],
            block_size: c.block_size,
        }
    }

    fn slot(&self, table: &[BlockId], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    fn execute(&mut self, s: &Scheduler, out: &SchedulerOutput) -> Vec<(RequestId, TokenId)> {
        // Like a real forward pass: all KV writes of a layer happen before its attention.
        for seq in &out.scheduled {
            assert!(!seq.tokens.is_empty());
            assert!(seq.block_table.len() * self.block_size >= seq.start + seq.tokens.len());
            for (i, &t) in seq.tokens.iter().enumerate() {
                let slot = self.slot(&seq.block_table, seq.start + i);
                self.slots[slot] = Some(fed(s, seq, i, t));
            }
        }
        let mut sampled = Vec::new();
        for seq in &out.scheduled {
            // Finished while this step was in flight (async scheduling): its row is discarded.
            let Some(req) = s.request(seq.id) else {
                continue;
            };
            let all = req.all_tokens();
            // Known tokens, then draft tokens to verify.
            let end = seq.start + seq.tokens.len() - seq.num_draft;
            let (known, draft) = seq.tokens.split_at(seq.tokens.len() - seq.num_draft);
            assert_eq!(
                seq.placeholder,
                known.last() == Some(&PLACEHOLDER),
                "placeholder flag"
            );
            let known: Vec<TokenId> = (0..known.len()).map(|i| fed(s, seq, i, known[i])).collect();
            assert_eq!(&all[seq.start..end], known);
            for (pos, &want) in all.iter().enumerate().take(end) {
                let slot = self.slot(&seq.block_table, pos);
                assert_eq!(
                    self.slots[slot],
                    Some(want),
                    "request {} position {pos}",
                    seq.id
                );
            }
            assert!(
                seq.sample || draft.is_empty(),
                "drafts only where a token is sampled"
            );
            if seq.sample {
                // The token after each position, while the draft agrees (exact verification).
                for j in 0..=draft.len() {
                    let t = fake_token(seq.id, end + j);
                    sampled.push((seq.id, t));
                    if draft.get(j) != Some(&t) {
                        break;
                    }
                }
            }
        }
        sampled
    }
}

/// Token `i` of `seq` as the runner reads it: a placeholder is the token the previous step
/// sampled, fed from its result (known to the scheduler by the time this step runs; 0 for a
/// request that finished meanwhile, whose row is discarded).
fn fed(s: &Scheduler, seq: &ScheduledSeq, i: usize, t: TokenId) -> TokenId {
    if t != PLACEHOLDER {
        return t;
    }
    s.request(seq.id)
        .map_or(0, |r| r.all_tokens()[seq.start + i])
}

/// Runs schedule -> fake execute -> update until nothing is left, checking the per-step
/// invariants. Returns the outputs of finished requests and the steps taken.
fn run_all(s: &mut Scheduler, max_steps: usize) -> (HashMap<RequestId, Vec<TokenId>>, usize) {
    let mut runner = FakeRunner::new(s.config());
    run_all_with(s, &mut runner, max_steps)
}

/// One checked step without finishing anything.
fn step(s: &mut Scheduler, runner: &mut FakeRunner) -> SchedulerOutput {
    let out = s.schedule();
    check_step(s, &out);
    let sampled = runner.execute(s, &out);
    s.update(&out, &sampled);
    out
}

fn run_all_with(
    s: &mut Scheduler,
    runner: &mut FakeRunner,
    max_steps: usize,
) -> (HashMap<RequestId, Vec<TokenId>>, usize) {
    let mut done = HashMap::new();
    let mut steps = 0;
    while s.has_unfinished() {
        steps += 1;
        assert!(
            steps <= max_steps,
            "no completion after {max_steps} steps: livelock or deadlock"
        );
        let out = s.schedule();
        check_step(s, &out);
        let sampled = runner.execute(s, &out);
        for f in s.update(&out, &sampled) {
            assert_eq!(f.reason, FinishReason::Length);
            assert!(
                s.request(f.request.id()).is_none(),
                "finished but still live"
            );
            done.insert(f.request.id(), f.request.output().to_vec());
        }
    }
    (done, steps)
}

fn check_step(s: &Scheduler, out: &SchedulerOutput) {
    let c = s.config();
    let sum: usize = out.scheduled.iter().map(|q| q.tokens.len()).sum();
    assert_eq!(out.num_batched_tokens, sum);
    assert!(sum <= c.max_num_batched_tokens, "{sum} > budget");
    assert!(s.num_running() <= c.max_num_seqs);
    assert!(
        !out.scheduled.is_empty() || !s.has_unfinished(),
        "a step with work made no progress"
    );
    let mut ids: Vec<_> = out.scheduled.iter().map(|q| q.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), out.scheduled.len(), "a request scheduled twice");
    for p in &out.preempted {
        assert!(!ids.contains(p), "request {p} both preempted and scheduled");
    }
}

fn expected_output(id: RequestId, prompt_len: usize, max_tokens: usize) -> Vec<TokenId> {
    (0..max_tokens)
        .map(|i| fake_token(id, prompt_len + i))
        .collect()
}

#[test]
fn config_fields_must_be_positive() {
    let mut c = cfg(8, 4, 4, 16);
    c.max_num_seqs = 0;
    assert_eq!(
        Scheduler::new(c).unwrap_err(),
        SchedulerError::InvalidConfig {
            field: "max_num_seqs"
        }
    );
    let mut c = cfg(8, 4, 4, 16);
    c.block_size = 0;
    assert_eq!(
        Scheduler::new(c).unwrap_err().to_string(),
        "`block_size` must be > 0. Given: 0"
    );
}

#[test]
fn add_request_rejects_what_can_never_run() {
    let mut c = cfg(8, 4, 4, 4); // 16 slots
    c.max_model_len = 20;
    let mut s = Scheduler::new(c).unwrap();
    assert_eq!(
        s.add_request(1, vec![], 4),
        Err(SchedulerError::EmptyPrompt)
    );
    let e = s.add_request(1, prompt(1, 15), 6).unwrap_err();
    assert_eq!(
        e,
        SchedulerError::TooLong {
            prompt_tokens: 15,
            max_tokens: 6,
            max_model_len: 20
        }
    );
    assert_eq!(
        e.to_string(),
        "prompt tokens + `max_tokens` must be <= 20. Given: 15 + 6"
    );
    // 12 + 6 - 1 = 17 slots > 16.
    assert_eq!(
        s.add_request(1, prompt(1, 12), 6),
        Err(SchedulerError::DoesNotFit {
            needed_blocks: 5,
            num_blocks: 4
        })
    );
    // 12 + 5 - 1 = 16 slots: fits exactly, and runs to completion alone.
    s.add_request(1, prompt(1, 12), 5).unwrap();
    assert_eq!(
        s.add_request(1, prompt(2, 2), 1),
        Err(SchedulerError::DuplicateId(1))
    );
    assert_eq!(s.num_waiting(), 1);
    let (done, _) = run_all(&mut s, 100);
    assert_eq!(done[&1], expected_output(1, 12, 5));
}

#[test]
fn one_request_prefills_then_decodes_one_token_per_step() {
    let mut s = Scheduler::new(cfg(64, 4, 4, 16)).unwrap();
    s.add_request(7, prompt(1, 10), 3).unwrap();
    let out = s.schedule();
    assert_eq!(out.scheduled.len(), 1);
    let q = &out.scheduled[0];
    assert_eq!(
        (q.id, q.start, q.tokens.len(), q.sample, q.num_cached_tokens),
        (7, 0, 10, true, 0)
    );
    assert_eq!(q.block_table.len(), 3);
    s.update(&out, &[(7, 500)]);
    assert_eq!(s.request(7).unwrap().output(), &[500]);
    let out = s.schedule();
    let q = &out.scheduled[0];
    assert_eq!((q.start, &q.tokens[..], q.sample), (10, &[500][..], true));
    assert_eq!(q.block_table.len(), 3);
    s.update(&out, &[(7, 501)]);
    let out = s.schedule();
    assert_eq!(out.scheduled[0].tokens, vec![501]);
    assert_eq!(
        out.scheduled[0].block_table.len(),
        3,
        "position 11 is still in block 2"
    );
    let done = s.update(&out, &[(7, 502)]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].reason, FinishReason::Length);
    assert_eq!(done[0].request.output(), &[500, 501, 502]);
    assert!(s.schedule().scheduled.is_empty());
    assert!(s.finish(7).is_none(), "already removed");
    assert!(!s.has_unfinished());
    assert_eq!(s.kv_usage(), 0.0);
}

#[test]
fn long_prompt_is_chunked_while_decoding_continues() {
    let mut s = Scheduler::new(cfg(8, 4, 4, 64)).unwrap();
    s.add_request(1, prompt(1, 3), 50).unwrap();
    let out = s.schedule();
    s.update(&out, &[(1, 9)]);
    s.add_request(2, prompt(2, 30), 2).unwrap();
    // Request 1 gets 1 token each step, request 2 gets the remaining 7 until its prompt is done.
    let mut prefilled = 0;
    for step in 0..5 {
        let out = s.schedule();
        assert_eq!(out.scheduled[0].id, 1);
        assert_eq!(
            out.scheduled[0].tokens.len(),
            1,
            "decode stalled at step {step}"
        );
        let q = &out.scheduled[1];
        assert_eq!(q.id, 2);
        assert_eq!(q.start, prefilled);
        let n = q.tokens.len();
        assert_eq!(n, 7.min(30 - prefilled));
        prefilled += n;
        assert_eq!(q.sample, prefilled == 30);
        assert!(out.num_batched_tokens <= 8);
        let mut sampled = vec![(1, 10 + step)];
        if q.sample {
            sampled.push((2, 77));
        }
        s.update(&out, &sampled);
    }
    assert_eq!(prefilled, 30);
    assert_eq!(s.request(2).unwrap().output(), &[77]);
    let out = s.schedule();
    assert_eq!(out.num_batched_tokens, 2, "both decode now");
}

#[test]
fn new_request_joins_the_running_batch_at_the_next_step() {
    let mut s = Scheduler::new(cfg(64, 4, 4, 64)).unwrap();
    s.add_request(1, prompt(1, 5), 10).unwrap();
    let out = s.schedule();
    s.update(&out, &[(1, 1)]);
    s.add_request(2, prompt(2, 6), 10).unwrap();
    assert_eq!(s.num_waiting(), 1);
    let out = s.schedule();
    let ids: Vec<_> = out
        .scheduled
        .iter()
        .map(|q| (q.id, q.tokens.len()))
        .collect();
    assert_eq!(ids, vec![(1, 1), (2, 6)]);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 0));
}

#[test]
fn max_num_seqs_bounds_the_running_batch() {
    let mut s = Scheduler::new(cfg(1000, 2, 4, 64)).unwrap();
    let mut runner = FakeRunner::new(s.config());
    for id in 0..5 {
        s.add_request(id, prompt(id as u32, 4), 3).unwrap();
    }
    let out = step(&mut s, &mut runner);
    assert_eq!(out.scheduled.len(), 2);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 3));
    let (done, _) = run_all_with(&mut s, &mut runner, 100);
    assert_eq!(done.len(), 5, "the rest finish once slots open");
}

#[test]
fn finished_requests_free_their_blocks() {
    let mut s = Scheduler::new(cfg(64, 8, 4, 32)).unwrap();
    for id in 0..6 {
        s.add_request(id, prompt(id as u32, 9), 4).unwrap();
    }
    let (done, _) = run_all(&mut s, 100);
    assert_eq!(done.len(), 6);
    assert_eq!((s.num_running(), s.num_waiting()), (0, 0));
    assert_eq!(s.kv_usage(), 0.0);
    assert_eq!(s.kv().num_free_blocks(), 32);
}

#[test]
fn abort_waiting_and_running_requests() {
    let mut s = Scheduler::new(cfg(64, 1, 4, 32)).unwrap();
    s.add_request(1, prompt(1, 9), 4).unwrap();
    s.add_request(2, prompt(2, 9), 4).unwrap();
    let out = s.schedule();
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    assert!(s.kv_usage() > 0.0);
    assert!(s.finish(2).is_some(), "abort a waiting request");
    assert_eq!(s.num_waiting(), 0);
    assert!(s.finish(1).is_some(), "abort a running request");
    assert_eq!(s.kv_usage(), 0.0);
    assert!(s.finish(1).is_none());
    // The step's results arriving after the abort are ignored.
    assert!(s.update(&out, &[(1, 5)]).is_empty());
    assert!(!s.has_unfinished());
    assert!(s.schedule().scheduled.is_empty());
}

#[test]
fn waiting_requests_stay_fifo_when_the_head_does_not_fit() {
    // 4 blocks of 4; request 1 holds 3 (and grows), request 2 needs 2, request 3 needs 1.
    let mut s = Scheduler::new(cfg(64, 8, 4, 4)).unwrap();
    s.add_request(1, prompt(1, 12), 2).unwrap();
    let out = s.schedule();
    s.update(&out, &[(1, 1)]);
    s.add_request(2, prompt(2, 8), 1).unwrap();
    s.add_request(3, prompt(3, 2), 1).unwrap();
    let out = s.schedule();
    let ids: Vec<_> = out.scheduled.iter().map(|q| q.id).collect();
    assert_eq!(ids, vec![1], "request 3 does not jump the queue");
    assert!(out.preempted.is_empty(), "waiting requests never preempt");
    assert_eq!(s.num_waiting(), 2);
}

#[test]
fn preemption_frees_the_newest_and_keeps_its_output() {
    // 5 blocks of 2 tokens. Two requests of 3-token prompts use 2 blocks each; decoding needs more.
    let mut c = cfg(64, 8, 2, 5);
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 3), 6).unwrap();
    s.add_request(2, prompt(2, 3), 6).unwrap();
    let out = s.schedule();
    assert_eq!(out.num_batched_tokens, 6);
    s.update(&out, &[(1, 11), (2, 21)]);
    // Position 3 fits in each one's second block.
    let out = s.schedule();
    assert_eq!(out.num_batched_tokens, 2);
    s.update(&out, &[(1, 12), (2, 22)]);
    // Position 4 needs a new block each: one is left, so request 2 (newest) is preempted.
    let out = s.schedule();
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(out.scheduled.len(), 1);
    assert_eq!(out.scheduled[0].id, 1);
    assert_eq!(s.num_preemptions(), 1);
    let r2 = s.request(2).unwrap();
    assert_eq!(
        (r2.num_computed_tokens(), r2.output(), r2.num_preemptions()),
        (0, &[21, 22][..], 1)
    );
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    s.update(&out, &[(1, 13)]);
    s.finish(1);
    // Request 2 resumes by recomputing prompt + output, then samples its third token.
    let out = s.schedule();
    let q = &out.scheduled[0];
    assert_eq!((q.id, q.start, q.sample), (2, 0, true));
    assert_eq!(q.tokens, [prompt(2, 3), vec![21, 22]].concat());
}

#[test]
fn newest_is_preempted_for_the_oldest_and_resumes() {
    // 4 blocks of 2 tokens; two 4-token prompts fill it. At their first decode both need a third
    // block: request 2 (newest) is preempted for request 1; later, alone, 2 resumes.
    let mut c = cfg(64, 8, 2, 4);
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    let mut runner = FakeRunner::new(s.config());
    s.add_request(1, prompt(1, 4), 4).unwrap();
    s.add_request(2, prompt(2, 4), 4).unwrap();
    step(&mut s, &mut runner);
    let out = step(&mut s, &mut runner);
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(
        out.scheduled.iter().map(|q| q.id).collect::<Vec<_>>(),
        vec![1]
    );
    // Request 1 again needs no new block; then at position 6 it needs the fourth (free) one.
    // Request 2 waits: admitting it would need 3 blocks.
    let out = step(&mut s, &mut runner);
    assert_eq!(
        out.scheduled.iter().map(|q| q.id).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(s.request(2).unwrap().output().len(), 1);
    let (done, _) = run_all_with(&mut s, &mut runner, 100);
    assert_eq!(done[&1], expected_output(1, 4, 4));
    assert_eq!(done[&2], expected_output(2, 4, 4));
    assert_eq!(s.num_preemptions(), 1);
}

#[test]
fn a_request_that_must_preempt_itself_stops_the_step() {
    // 4 blocks of 2. Request 1 (3 tokens) decodes into its own second block; request 2 (4 tokens)
    // needs a third block, none is free, and the newest running request is itself.
    let mut c = cfg(64, 8, 2, 4);
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    let mut runner = FakeRunner::new(s.config());
    s.add_request(1, prompt(1, 3), 3).unwrap();
    s.add_request(2, prompt(2, 4), 3).unwrap();
    step(&mut s, &mut runner);
    let out = step(&mut s, &mut runner);
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(
        out.scheduled.iter().map(|q| q.id).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    let (done, _) = run_all_with(&mut s, &mut runner, 100);
    assert_eq!(done[&1], expected_output(1, 3, 3));
    assert_eq!(done[&2], expected_output(2, 4, 3));
}

/// Many requests, a pool far too small for all at once, a small budget: every request must
/// finish with exactly its `max_tokens` outputs (the fake model's tokens, so preempted outputs
/// were kept), within a bounded number of steps.
fn stress(enable_prefix_caching: bool, shared_prefix: bool) {
    let mut c = cfg(24, 6, 4, 12); // 48 slots
    c.enable_prefix_caching = enable_prefix_caching;
    let mut s = Scheduler::new(c).unwrap();
    let mut want = HashMap::new();
    let mut total_tokens = 0;
    for id in 0..20u64 {
        let len = 3 + (id as usize * 7) % 20;
        let max_tokens = 1 + (id as usize * 5) % 17;
        let mut p = prompt(id as u32 + 1, len);
        if shared_prefix {
            p[..len.min(8)].copy_from_slice(&prompt(999, 8)[..len.min(8)]);
        }
        s.add_request(id, p, max_tokens).unwrap();
        want.insert(id, expected_output(id, len, max_tokens));
        total_tokens += len + max_tokens;
    }
    let (done, steps) = run_all(&mut s, 20 * total_tokens);
    assert_eq!(done, want);
    assert!(
        s.num_preemptions() > 0,
        "the pool was meant to be too small"
    );
    assert_eq!(s.kv_usage(), 0.0);
    eprintln!(
        "steps {steps}, preemptions {}, prefix cache {:?}",
        s.num_preemptions(),
        s.prefix_cache_stats()
    );
}

#[test]
fn tiny_pool_completes_every_request_without_prefix_caching() {
    stress(false, false);
}

#[test]
fn tiny_pool_completes_every_request_with_prefix_caching() {
    stress(true, false);
}

#[test]
fn tiny_pool_completes_every_request_with_shared_prefixes() {
    stress(true, true);
}

#[test]
fn second_request_with_the_same_prompt_hits_the_prefix_cache() {
    let mut s = Scheduler::new(cfg(256, 8, 4, 64)).unwrap();
    let p = prompt(5, 37);
    s.add_request(1, p.clone(), 2).unwrap();
    let out = s.schedule();
    assert_eq!(out.scheduled[0].num_cached_tokens, 0);
    s.update(&out, &[(1, 1)]);
    s.add_request(2, p.clone(), 2).unwrap();
    let out = s.schedule();
    let q = &out.scheduled[1];
    assert_eq!(
        (q.id, q.num_cached_tokens, q.start, q.tokens.len()),
        (2, 36, 36, 1)
    );
    assert_eq!(q.block_table[..9], out.scheduled[0].block_table[..9]);
    assert!(q.sample);
    assert_eq!(s.prefix_cache_stats(), (74, 36));
    // And with the first request gone, its freed blocks still serve a third.
    s.update(&out, &[(1, 2), (2, 3)]);
    s.finish(1);
    s.finish(2);
    s.add_request(3, p, 1).unwrap();
    assert_eq!(s.schedule().scheduled[0].num_cached_tokens, 36);
}

#[test]
fn prefix_hits_are_kv_correct_under_the_fake_runner() {
    let mut s = Scheduler::new(cfg(16, 4, 4, 40)).unwrap();
    for id in 0..6 {
        let mut p = prompt(1, 21);
        p.push(id as u32); // same 21-token prefix, one distinct last token
        s.add_request(id, p, 5).unwrap();
    }
    let (done, _) = run_all(&mut s, 200);
    for id in 0..6 {
        assert_eq!(done[&id], expected_output(id, 22, 5));
    }
    let (_, hits) = s.prefix_cache_stats();
    assert!(hits >= 5 * 20, "hits {hits}");
}

#[test]
fn randomized_workloads_complete_under_many_configs() {
    // A small LCG keeps this deterministic without a dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    let (mut accepted, mut preemptions) = (0, 0);
    for round in 0..40 {
        let block_size = 1 + rand(8);
        let num_blocks = 2 + rand(24);
        let mut c = cfg(1 + rand(40), 1 + rand(6), block_size, num_blocks);
        c.enable_prefix_caching = rand(2) == 0;
        c.max_model_len = block_size * num_blocks + 1;
        let mut s = Scheduler::new(c).unwrap();
        let mut want = HashMap::new();
        let mut total = 0;
        for id in 0..(1 + rand(12)) as u64 {
            let len = 1 + rand(3 * block_size + 2);
            // 0 now and then: prefill-only requests mixed in.
            let max_tokens = rand(2 * block_size + 3);
            // Few distinct prompt seeds, so prefixes repeat.
            let mut p = prompt(rand(3) as u32, len);
            *p.last_mut().unwrap() += rand(2) as u32;
            match s.add_request(id, p, max_tokens) {
                Ok(()) => {
                    want.insert(id, expected_output(id, len, max_tokens));
                    total += len + max_tokens;
                }
                Err(SchedulerError::DoesNotFit { .. } | SchedulerError::TooLong { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let (done, _) = run_all(&mut s, 4 * total + 10);
        assert_eq!(done, want, "round {round}");
        assert_eq!(s.kv().num_free_blocks(), num_blocks);
        accepted += done.len();
        preemptions += s.num_preemptions();
    }
    eprintln!("accepted {accepted}, preemptions {preemptions}");
    assert!(
        accepted > 100 && preemptions > 10,
        "accepted {accepted}, preemptions {preemptions}"
    );
}

#[test]
fn a_request_filling_the_whole_pool_still_runs_among_others() {
    let mut c = cfg(5, 4, 2, 6);
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 3), 4).unwrap();
    s.add_request(2, prompt(2, 8), 5).unwrap(); // 12 slots = the whole pool
    s.add_request(3, prompt(3, 2), 6).unwrap();
    let (done, steps) = run_all(&mut s, 200);
    assert_eq!(done[&2], expected_output(2, 8, 5));
    assert_eq!(done.len(), 3);
    assert!(steps < 200);
}

#[test]
fn a_prefill_only_request_computes_its_prompt_in_chunks_and_samples_nothing() {
    let mut s = Scheduler::new(cfg(8, 4, 4, 16)).unwrap();
    let mut runner = FakeRunner::new(s.config());
    s.add_request(1, prompt(1, 20), 0).unwrap();
    let mut computed = 0;
    let done = loop {
        let out = s.schedule();
        check_step(&s, &out);
        let q = &out.scheduled[0];
        assert_eq!((q.start, q.tokens.len()), (computed, 8.min(20 - computed)));
        assert!(!q.sample, "a prefill-only request never samples");
        computed += q.tokens.len();
        assert!(runner.execute(&s, &out).is_empty());
        let done = s.update(&out, &[]);
        if computed < 20 {
            assert!(done.is_empty() && s.request(1).is_some());
        } else {
            break done;
        }
    };
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].reason, FinishReason::Length);
    assert_eq!(
        (done[0].request.prompt().len(), done[0].request.output()),
        (20, &[][..])
    );
    assert!(!s.has_unfinished());
    assert_eq!(s.kv_usage(), 0.0);
    // A prompt that fills the context exactly is fine when nothing is generated.
    let mut c = cfg(64, 4, 4, 16);
    c.max_model_len = 20;
    let mut s = Scheduler::new(c).unwrap();
    assert!(s.add_request(2, prompt(2, 20), 0).is_ok());
    assert!(s.add_request(3, prompt(3, 20), 1).is_err());
}

#[test]
fn a_sampled_stop_token_ends_the_request_and_is_kept() {
    let mut s = Scheduler::new(cfg(64, 4, 4, 16)).unwrap();
    s.add(NewRequest {
        stop_token_ids: vec![2, 9],
        ..NewRequest::new(1, prompt(1, 5), 10)
    })
    .unwrap();
    s.add_request(2, prompt(2, 5), 10).unwrap();
    let out = s.schedule();
    assert!(
        s.update(&out, &[(1, 4), (2, 9)]).is_empty(),
        "9 stops only 1"
    );
    let out = s.schedule();
    let done = s.update(&out, &[(1, 9), (2, 2)]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].reason, FinishReason::Stop);
    assert_eq!(done[0].request.output(), &[4, 9]);
    assert_eq!(s.request(2).unwrap().output(), &[9, 2]);
    assert_eq!(s.num_running(), 1);
}

#[test]
fn the_context_length_caps_a_request_before_max_tokens() {
    let mut c = cfg(64, 4, 4, 16);
    c.max_model_len = 8;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 6), 2).unwrap();
    let (done, _) = run_all(&mut s, 10);
    assert_eq!(done[&1].len(), 2);
    let e = s.config().check_request(6, 3).unwrap_err();
    assert!(matches!(e, SchedulerError::TooLong { .. }), "{e}");
    assert_eq!(
        s.config().check_request(0, 3),
        Err(SchedulerError::EmptyPrompt)
    );
}

#[path = "draft_tests.rs"]
mod drafts;

#[path = "ahead_tests.rs"]
mod ahead;
