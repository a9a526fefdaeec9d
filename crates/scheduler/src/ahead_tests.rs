//! Async scheduling under the fake runner: the next step is planned with
//! [`Scheduler::schedule_ahead`] while the last one is "in flight" (before its `update`), its
//! decode rows holding placeholders for the tokens in flight; outputs, finish reasons, the KV a
//! request attends to and the free pool at the end are those of synchronous runs.

use super::*;

/// What each request ended with.
type Ends = HashMap<RequestId, (Vec<TokenId>, FinishReason)>;

/// Checks a step planned ahead: budget, distinct requests, placeholders only on decode rows of
/// requests whose token is in flight, and only the last token of the row.
fn check_ahead(s: &Scheduler, out: &SchedulerOutput) {
    let c = s.config();
    let sum: usize = out.scheduled.iter().map(|q| q.tokens.len()).sum();
    assert_eq!(out.num_batched_tokens, sum);
    assert!(sum <= c.max_num_batched_tokens, "{sum} > budget");
    assert!(out.preempted.is_empty(), "nobody is preempted ahead");
    for q in &out.scheduled {
        assert_eq!(q.num_draft, 0);
        let r = s.request(q.id).unwrap();
        if q.placeholder {
            assert_eq!(q.tokens, [PLACEHOLDER], "request {}", q.id);
            assert_eq!(q.start, r.num_tokens(), "the placeholder's position");
            assert!(q.sample);
        } else {
            assert!(!q.tokens.contains(&PLACEHOLDER));
        }
        assert!(q.block_table.len() * c.block_size >= q.start + q.tokens.len());
    }
}

/// Runs until nothing is left, synchronously (`schedule`, execute, `update`) or ahead: each step
/// after the first is planned before the previous one's `update`, and executed after it (as the
/// engine launches it once the previous step's tokens are back). Returns the ends and the steps
/// planned ahead.
fn run(s: &mut Scheduler, runner: &mut FakeRunner, ahead: bool) -> (Ends, usize) {
    let mut ends = Ends::new();
    let record = |ends: &mut Ends, fs: Vec<Finished>| {
        for f in fs {
            ends.insert(f.request.id(), (f.request.output().to_vec(), f.reason));
        }
    };
    let (mut in_flight, mut planned_ahead) = (None, 0);
    for _ in 0..10_000 {
        let (out, sampled) = match in_flight.take() {
            Some(x) => x,
            None if !s.has_unfinished() => return (ends, planned_ahead),
            None => {
                let out = s.schedule();
                check_step(s, &out);
                let sampled = runner.execute(s, &out);
                (out, sampled)
            }
        };
        if !ahead || out.stalled {
            record(&mut ends, s.update(&out, &sampled));
            continue;
        }
        let next = s.schedule_ahead(&out);
        planned_ahead += 1;
        check_ahead(s, &next);
        record(&mut ends, s.update(&out, &sampled));
        if !next.scheduled.is_empty() {
            let sampled = runner.execute(s, &next);
            in_flight = Some((next, sampled));
        }
    }
    panic!("no completion: livelock or deadlock");
}

/// Many requests with shared prefixes, chunked prompts, stop tokens and length caps, on a pool
/// that is big enough: the same ends either way, and every block free at the end.
#[test]
fn planned_ahead_the_outputs_are_those_of_synchronous_steps() {
    for (budget, blocks) in [(16, 256), (40, 256), (7, 256)] {
        let mut got = Vec::new();
        for ahead in [false, true] {
            let c = cfg(budget, 8, 4, blocks);
            let mut runner = FakeRunner::new(&c);
            let mut s = Scheduler::new(c).unwrap();
            for id in 1..=12u64 {
                let mut p = prompt(1, 3 + (id as usize * 5) % 13);
                p.push(id as u32);
                let stop = fake_token(id, p.len() + 2 + id as usize % 4);
                s.add(NewRequest {
                    stop_token_ids: if id % 3 == 0 { vec![stop] } else { vec![] },
                    ..NewRequest::new(id, p, 1 + (id as usize * 7) % 11)
                })
                .unwrap();
            }
            let (ends, planned) = run(&mut s, &mut runner, ahead);
            assert_eq!(ends.len(), 12);
            assert_eq!(s.kv().num_free_blocks(), blocks, "blocks left held");
            assert!(!ahead || planned > 5, "{planned} steps planned ahead");
            got.push(ends);
        }
        assert_eq!(got[0], got[1], "budget {budget}");
        assert!(got[1].values().any(|e| e.1 == FinishReason::Stop));
    }
}

/// A decoding request's row ahead reads its token in flight at the next position; its blocks
/// grow for it; the request's known tokens are unchanged until the update.
#[test]
fn a_placeholder_takes_the_next_position_and_its_slot() {
    let c = cfg(64, 4, 4, 64);
    let mut runner = FakeRunner::new(&c);
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 8), 5).unwrap();
    let first = s.schedule();
    let sampled = runner.execute(&s, &first);
    assert_eq!(first.scheduled[0].block_table.len(), 2);
    let next = s.schedule_ahead(&first);
    check_ahead(&s, &next);
    let q = &next.scheduled[0];
    assert!(q.placeholder && q.sample);
    assert_eq!((q.start, q.tokens.as_slice()), (8, &[PLACEHOLDER][..]));
    assert_eq!(q.block_table.len(), 3, "position 8 takes a third block");
    assert_eq!(
        s.request(1).unwrap().num_tokens(),
        8,
        "the token is not known yet"
    );
    assert!(s.update(&first, &sampled).is_empty());
    assert_eq!(s.request(1).unwrap().num_tokens(), 9);
    let sampled = runner.execute(&s, &next);
    assert!(s.update(&next, &sampled).is_empty());
    assert_eq!(s.request(1).unwrap().output().len(), 2);
}

/// A request whose token in flight is its last (max_tokens) is not planned ahead; one whose
/// token in flight turns out to be a stop token had a row ahead, discarded: its update skips it
/// and its blocks are free.
#[test]
fn length_caps_are_not_planned_and_stops_are_discarded() {
    let c = cfg(64, 4, 4, 64);
    let mut runner = FakeRunner::new(&c);
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 5), 1).unwrap();
    s.add(NewRequest {
        stop_token_ids: vec![fake_token(2, 5)],
        ..NewRequest::new(2, prompt(2, 5), 10)
    })
    .unwrap();
    let first = s.schedule();
    let sampled = runner.execute(&s, &first);
    let next = s.schedule_ahead(&first);
    let ids: Vec<RequestId> = next.scheduled.iter().map(|q| q.id).collect();
    assert_eq!(ids, [2], "request 1 samples its last token in flight");
    let ends = s.update(&first, &sampled);
    let reasons: Vec<(RequestId, FinishReason)> =
        ends.iter().map(|f| (f.request.id(), f.reason)).collect();
    assert_eq!(
        reasons,
        [(1, FinishReason::Length), (2, FinishReason::Stop)]
    );
    assert_eq!(ends[1].request.output(), [fake_token(2, 5)]);
    // Request 2's row ahead runs (its write lands in blocks it held when planned) and is
    // discarded.
    let sampled = runner.execute(&s, &next);
    assert!(sampled.is_empty());
    assert!(s.update(&next, &sampled).is_empty());
    assert!(!s.has_unfinished());
    assert_eq!(s.kv().num_free_blocks(), 64);
}

/// An abort while a step is in flight: the request is neither planned ahead nor updated.
#[test]
fn an_abort_in_flight_is_skipped() {
    let c = cfg(64, 4, 4, 64);
    let mut runner = FakeRunner::new(&c);
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(1, prompt(1, 5), 10).unwrap();
    s.add_request(2, prompt(2, 5), 10).unwrap();
    let first = s.schedule();
    let sampled = runner.execute(&s, &first);
    assert!(s.finish(1).is_some());
    let next = s.schedule_ahead(&first);
    assert_eq!(next.scheduled.len(), 1);
    assert!(s.update(&first, &sampled).is_empty());
    assert_eq!(s.request(2).unwrap().output().len(), 1);
    let sampled = runner.execute(&s, &next);
    assert!(s.finish(2).is_some());
    assert!(s.update(&next, &sampled).is_empty());
    assert_eq!(s.kv().num_free_blocks(), 64);
}

/// A pool too small for every request to grow: planned ahead, a request that would need a
/// preemption waits and the step says `stalled`; the next step, planned synchronously,
/// preempts. Outputs are those of synchronous steps.
#[test]
fn ahead_a_full_pool_stalls_instead_of_preempting() {
    let mut got = Vec::new();
    let mut stalls = 0;
    for ahead in [false, true] {
        let c = cfg(32, 4, 2, 10);
        let mut runner = FakeRunner::new(&c);
        let mut s = Scheduler::new(c).unwrap();
        for id in 1..=3 {
            s.add_request(id, prompt(id as u32, 5), 8).unwrap();
        }
        let mut ends = Ends::new();
        let mut in_flight: Option<(SchedulerOutput, Vec<(RequestId, TokenId)>)> = None;
        while s.has_unfinished() || in_flight.is_some() {
            let (out, sampled) = in_flight.take().unwrap_or_else(|| {
                let out = s.schedule();
                let sampled = runner.execute(&s, &out);
                (out, sampled)
            });
            let next = (ahead && !out.stalled).then(|| s.schedule_ahead(&out));
            if let Some(next) = &next {
                check_ahead(&s, next);
            }
            for f in s.update(&out, &sampled) {
                ends.insert(f.request.id(), (f.request.output().to_vec(), f.reason));
            }
            if let Some(next) = next.filter(|n| !n.scheduled.is_empty() || n.stalled) {
                stalls += usize::from(next.stalled);
                let sampled = runner.execute(&s, &next);
                in_flight = Some((next, sampled));
            }
        }
        assert_eq!(s.kv().num_free_blocks(), 10);
        got.push((ends, s.num_preemptions()));
    }
    assert!(stalls > 0, "the pool never filled ahead");
    assert!(got[0].1 > 0 && got[1].1 > 0, "{:?}", (got[0].1, got[1].1));
    assert_eq!(got[0].0, got[1].0);
}
