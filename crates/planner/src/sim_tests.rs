//! The virtual-time loop against a fake device whose every step costs exactly 10 ms, so that
//! TTFT, ITL and throughput can be worked out by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use tokenfab_bench::metrics::RunMetrics;
use tokenfab_bench::runner::{Bound, Load};
use tokenfab_bench::workload::Prompt;
use tokenfab_scheduler::SchedulerConfig;

use super::SimEngine;
use crate::cost::CostModel;
use crate::device::{Device, Efficiency, Overhead};
use crate::shape::{Compute, Dtype, ModelShape};

const STEP: f64 = 0.010;

/// Bandwidth and peaks so large that only the fixed 10 ms per step is left.
fn fixed_step_device() -> Device {
    Device {
        name: "fake".into(),
        source: "test".into(),
        memory_bytes: 1e12,
        mem_bw: 1e30,
        peaks: BTreeMap::from([(Compute::Int8, 1e30), (Compute::F32, 1e30)]),
        attention_ops: 1e30,
        link_bw: None,
        efficiency: Efficiency::MEASURED,
        overhead: Overhead {
            step_s: STEP,
            ..Overhead::default()
        },
        widens_to_f32: true,
        measured: None,
        assumptions: vec![],
    }
}

fn engine(budget: usize, seqs: usize, blocks: usize, latency_s: f64) -> SimEngine {
    engine_queue(budget, seqs, blocks, latency_s, 1024)
}

fn engine_queue(
    budget: usize,
    seqs: usize,
    blocks: usize,
    latency_s: f64,
    max_queued: usize,
) -> SimEngine {
    let shape =
        ModelShape::resolve("tiny", Some(Dtype::Ggml(tokenfab_loader::GgmlType::Q8_0))).unwrap();
    let cost = CostModel::new(&shape, &fixed_step_device(), 1, Dtype::F16).unwrap();
    let cfg = SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: seqs,
        block_size: 16,
        num_blocks: blocks,
        enable_prefix_caching: true,
        max_model_len: 512,
    };
    SimEngine::new(cfg, cost, latency_s, max_queued, shape.vocab_size).unwrap()
}

fn prompts(input: usize, output: usize) -> Vec<Prompt> {
    vec![Prompt {
        text: String::new(),
        token_ids: None,
        input_len: input,
        output_len: output,
    }]
}

fn bound(n: usize) -> Bound {
    Bound {
        num_prompts: Some(n),
        duration: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn one_user_by_hand() {
    // 32 prompt tokens fit one step: the first token at 10 ms, then one per step: 20, 30,
    // 40 ms. Three requests one after the other: 120 ms for 12 tokens = 100 tok/s.
    let mut e = engine(512, 8, 64, 0.0);
    let (recs, secs) = e
        .run_load(&prompts(32, 4), Load::Concurrency(1), bound(3), 0, 0)
        .unwrap();
    assert_eq!(recs.len(), 3);
    for (i, r) in recs.iter().enumerate() {
        assert!(close(r.sent_at_ms, 40.0 * i as f64), "{r:?}");
        assert!(close(r.ttft_ms.unwrap(), 10.0));
        assert!(close(r.e2e_ms, 40.0));
        assert_eq!(r.itl_ms.len(), 3);
        assert!(r.itl_ms.iter().all(|&x| close(x, 10.0)));
        assert_eq!(r.output_tokens, 4);
    }
    assert!(close(secs, 0.120));
    let m = RunMetrics::from_records(&recs, secs, None);
    assert!(close(m.output_tokens_per_s, 100.0));
    assert!(close(m.tpot.p50, 10.0));
    assert_eq!(e.stats.steps, 12);
}

#[test]
fn chunked_prefill_and_latency() {
    // A 16-token budget splits 32 prompt tokens over two steps: the first token at 20 ms.
    let mut e = engine(16, 8, 64, 0.0);
    let (recs, _) = e
        .run_load(&prompts(32, 2), Load::Concurrency(1), bound(1), 0, 0)
        .unwrap();
    assert!(close(recs[0].ttft_ms.unwrap(), 20.0));
    assert!(close(recs[0].e2e_ms, 30.0));
    // 1 ms each way: the engine sees the request at 1 ms, the client its first token at
    // 1 + 10 + 1 = 12 ms and the second 10 ms later; the next request goes out at 22 ms.
    let mut e = engine(512, 8, 64, 0.001);
    let (recs, secs) = e
        .run_load(&prompts(8, 2), Load::Concurrency(1), bound(2), 0, 0)
        .unwrap();
    assert!(close(recs[0].ttft_ms.unwrap(), 12.0), "{recs:?}");
    assert!(close(recs[0].e2e_ms, 22.0));
    assert!(close(recs[1].sent_at_ms, 22.0));
    assert!(close(secs, 0.044));
}

#[test]
fn max_num_seqs_queues_the_rest() {
    // Four users, two sequences at a time: two requests prefill together and finish at 40 ms;
    // the two waiting ones start at the step from 40 to 50 ms (TTFT 50 ms), and the first two
    // users' next requests, sent at 40 ms, wait behind them until 80 ms (TTFT 50 ms as well).
    let mut e = engine(512, 2, 64, 0.0);
    let (recs, secs) = e
        .run_load(&prompts(8, 4), Load::Concurrency(4), bound(6), 0, 0)
        .unwrap();
    let ttft: Vec<f64> = recs.iter().map(|r| r.ttft_ms.unwrap()).collect();
    assert_eq!(recs.len(), 6);
    assert_eq!(
        ttft.iter().filter(|&&t| close(t, 10.0)).count(),
        2,
        "{ttft:?}"
    );
    assert_eq!(
        ttft.iter().filter(|&&t| close(t, 50.0)).count(),
        4,
        "{ttft:?}"
    );
    // Three rounds of 40 ms: 24 tokens in 120 ms.
    assert!(close(secs, 0.120));
}

#[test]
fn a_full_pool_preempts_and_everything_finishes() {
    // 6 blocks of 16 tokens: each request needs 2 blocks at its longest (8 + 24 - 1 tokens),
    // four running ones outgrow the pool and the newest is preempted and recomputed.
    let mut e = engine(512, 8, 6, 0.0);
    let (recs, _) = e
        .run_load(&prompts(8, 24), Load::Concurrency(4), bound(8), 0, 0)
        .unwrap();
    assert_eq!(recs.len(), 8);
    assert!(recs.iter().all(|r| r.ok() && r.output_tokens == 24));
    assert!(e.stats.preemptions > 0, "{:?}", e.stats);
}

#[test]
fn a_full_queue_refuses_and_users_send_again() {
    // One waiting request at most: of four users arriving together one is queued and three get
    // 429; they send again after each step, so the run still ends after 12 requests.
    let mut e = engine_queue(512, 8, 64, 0.0, 1);
    let (recs, _) = e
        .run_load(&prompts(8, 4), Load::Concurrency(4), bound(12), 0, 0)
        .unwrap();
    assert_eq!(recs.len(), 12);
    let refused = recs
        .iter()
        .filter(|r| r.error == Some(tokenfab_bench::metrics::ErrorKind::Http(429)))
        .count();
    assert!(refused >= 3, "{refused}");
    assert!(recs
        .iter()
        .filter(|r| r.ok())
        .all(|r| r.output_tokens == 4 && r.ttft_ms.is_some()));
}

#[test]
fn open_loop_arrivals_and_refusals() {
    // Poisson arrivals at 10/s for 2 s: about 20 requests, all served (each takes 40 ms).
    let mut e = engine(512, 8, 64, 0.0);
    let b = Bound {
        num_prompts: None,
        duration: Some(Duration::from_secs(2)),
    };
    let load = Load::Rate {
        rate: 10.0,
        burstiness: 1.0,
    };
    let (recs, _) = e.run_load(&prompts(8, 4), load, b, 0, 7).unwrap();
    assert!((10..=35).contains(&recs.len()), "{}", recs.len());
    assert!(recs.iter().all(|r| r.ok()));
    assert!(recs.iter().all(|r| r.sent_at_ms < 2000.0));
    // A prompt longer than the context is refused like the server's 400.
    let (recs, _) = e
        .run_load(&prompts(600, 4), Load::Concurrency(1), bound(1), 0, 0)
        .unwrap();
    assert_eq!(
        recs[0].error,
        Some(tokenfab_bench::metrics::ErrorKind::Http(400))
    );
    // Everything at once needs a count.
    let inf = Load::Rate {
        rate: f64::INFINITY,
        burstiness: 1.0,
    };
    assert!(e.run_load(&prompts(8, 4), inf, b, 0, 0).is_err());
}

#[test]
fn thousands_of_users_in_seconds() {
    // Llama 3 8B in FP8 on one H200: 2,000 users sending 4,000 requests of 128 in, 128 out.
    let shape = ModelShape::resolve("llama3-8b", Some(Dtype::Fp8)).unwrap();
    let dev = Device::resolve("h200").unwrap();
    let cost = CostModel::new(&shape, &dev, 1, Dtype::Fp8).unwrap();
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 8192,
        max_num_seqs: 2048,
        block_size: 32,
        num_blocks: 100_000,
        enable_prefix_caching: true,
        max_model_len: 8192,
    };
    let mut e = SimEngine::new(cfg, cost, 0.0, 100_000, shape.vocab_size).unwrap();
    let t = std::time::Instant::now();
    let (recs, secs) = e
        .run_load(
            &prompts(128, 128),
            Load::Concurrency(2000),
            bound(4000),
            0,
            0,
        )
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(recs.len(), 4000);
    assert!(recs.iter().all(|r| r.ok()));
    let m = RunMetrics::from_records(&recs, secs, None);
    assert!(m.output_tokens_per_s > 1000.0, "{}", m.output_tokens_per_s);
    assert!(wall < 60.0, "took {wall} s");
}
