//! What KV-cache events cost one engine step at 64 streams, next to the step itself.
//!
//! - `bookkeeping/events_off` and `bookkeeping/events_on`: the KV manager's work for one step of
//!   64 decoding streams (one token each; a stream that reaches 1,024 tokens finishes and a new
//!   one is admitted with a 512-token prompt, so blocks fill, are registered and are evicted all
//!   the time), without events, and with events recorded (vLLM hashes, sha256_cbor), drained
//!   and encoded into one msgpack batch as the publisher thread would. The difference is the
//!   events' cost; the encoding runs on the publisher thread in the server, so counting it here
//!   overstates the engine thread's share.
//! - `model_step/decode_64`: one forward pass of the default model over 64 sequences of one
//!   token each at context 256 on the CPU (skipped when models/ has no model).
//!
//! The last lines print the events' cost as a share of the model step, from plain timing loops.
//! Run on a quiet machine: `cargo bench -p tokenfab-engine --bench kv_events`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tokenfab_engine::device::{build_executor, Device, ExecutorOptions};
use tokenfab_engine::kv_events::{encode_batch, WireFormat};
use tokenfab_engine::{KvDtype, LoadedModel};
use tokenfab_kv_cache::{HashAlgo, KvCacheManager, KvEvent, VllmHasher};
use tokenfab_models::{Executor, ForwardBatch, SeqSlice};

const STREAMS: usize = 64;
const BS: usize = 16;
const PROMPT: usize = 512;
const MAX_LEN: usize = 1024;

/// 64 streams decoding under a KV manager, one token each per step.
struct Sim {
    m: KvCacheManager,
    /// (request id, tokens) per stream.
    reqs: Vec<(u64, Vec<u32>)>,
    next_id: u64,
    rng: u64,
    events: Vec<KvEvent>,
    payload: Vec<u8>,
    with_events: bool,
}

impl Sim {
    fn new(with_events: bool) -> Self {
        // Room for every stream at full length, plus a margin: finished streams' blocks stay
        // cached and are evicted as new ones are admitted.
        let mut m = KvCacheManager::new(STREAMS * MAX_LEN / BS + 256, BS, true);
        if with_events {
            m.enable_events(VllmHasher::with_seed(HashAlgo::Sha256Cbor, "0"));
        }
        let mut s = Self {
            m,
            reqs: Vec::new(),
            next_id: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            events: Vec::new(),
            payload: Vec::new(),
            with_events,
        };
        // Staggered lengths, so that blocks fill and streams finish on different steps.
        for i in 0..STREAMS {
            let (id, mut t) = s.admit();
            let extra = i * (MAX_LEN - PROMPT) / STREAMS;
            for _ in 0..extra {
                t.push(s.token());
                s.m.allocate_slots(id, &t, 1, None).expect("room");
            }
            s.reqs.push((id, t));
        }
        s.drain();
        s
    }

    fn token(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 49_152) as u32
    }

    fn admit(&mut self) -> (u64, Vec<u32>) {
        let id = self.next_id;
        self.next_id += 1;
        let t: Vec<u32> = (0..PROMPT).map(|_| self.token()).collect();
        let c = self.m.get_computed_blocks(&t);
        self.m
            .allocate_slots(id, &t, t.len() - c.num_computed_tokens, Some(&c))
            .expect("room");
        (id, t)
    }

    /// One engine step's KV bookkeeping, then (with events) drain and encode.
    fn step(&mut self) {
        for i in 0..STREAMS {
            if self.reqs[i].1.len() >= MAX_LEN {
                self.m.free(self.reqs[i].0);
                self.reqs[i] = self.admit();
            } else {
                let tok = self.token();
                let (id, t) = &mut self.reqs[i];
                t.push(tok);
                self.m.allocate_slots(*id, t, 1, None).expect("room");
            }
        }
        if self.with_events {
            self.drain();
        }
    }

    fn drain(&mut self) {
        self.m.drain_events(&mut self.events);
        self.payload.clear();
        encode_batch(&mut self.payload, 1.0, &self.events, WireFormat::Map, "GPU");
        black_box(&self.payload);
        self.events.clear();
    }
}

/// The default model with a pool for 64 sequences at context 256, and a decode batch.
struct ModelStep {
    exec: Box<dyn Executor>,
    tables: Vec<Vec<u32>>,
}

const CTX: usize = 256;

impl ModelStep {
    fn load() -> Option<Self> {
        let path = std::env::var("TOKENFAB_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        if !path.exists() {
            eprintln!("model_step skipped: no model at {}", path.display());
            return None;
        }
        let m = LoadedModel::load(&path).expect("loading the model");
        let per_seq = CTX / BS;
        let o = ExecutorOptions {
            device: Device::Cpu,
            block_size: BS,
            // The pool is sized by `max_blocks`.
            kv_cache_bytes: usize::MAX / 2,
            kv_dtype: KvDtype::default(),
            gpu_memory_utilization: 0.9,
            max_batch_tokens: STREAMS,
            max_graph_batch: 0,
            max_blocks: Some(STREAMS * per_seq),
        };
        let exec = build_executor(m.model, &o).expect("executor");
        let tables = (0..STREAMS)
            .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
            .collect();
        Some(Self { exec, tables })
    }

    fn step(&mut self) {
        let tokens = vec![42u32; STREAMS];
        let positions = vec![(CTX - 1) as u32; STREAMS];
        let seqs: Vec<SeqSlice> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqSlice {
                rows: i..i + 1,
                block_table: t,
            })
            .collect();
        let rows: Vec<usize> = (0..STREAMS).collect();
        let batch = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logits_rows: &rows,
        };
        black_box(self.exec.forward(&batch).expect("forward"));
    }
}

/// Mean seconds of `f` over `n` calls after `n / 10` warm-up calls.
fn mean(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n / 10).for_each(|_| f());
    let t = Instant::now();
    (0..n).for_each(|_| f());
    t.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let mut off = Sim::new(false);
    let mut on = Sim::new(true);
    let mut g = c.benchmark_group("bookkeeping");
    g.bench_function("events_off", |b| b.iter(|| off.step()));
    g.bench_function("events_on", |b| b.iter(|| on.step()));
    g.finish();
    let mut model = ModelStep::load();
    if let Some(m) = &mut model {
        let mut g = c.benchmark_group("model_step");
        g.sample_size(10);
        g.bench_function("decode_64", |b| b.iter(|| m.step()));
        g.finish();
    }
    c.final_summary();

    // The share, from interleaved plain loops (A/B/A/B) to damp drift.
    let (mut t_off, mut t_on) = (0.0, 0.0);
    for _ in 0..4 {
        t_off += mean(2000, || off.step()) / 4.0;
        t_on += mean(2000, || on.step()) / 4.0;
    }
    let cost = (t_on - t_off).max(0.0);
    println!(
        "kv events: {:.1} us per step at {STREAMS} streams (bookkeeping {:.1} us without, {:.1} us with)",
        cost * 1e6,
        t_off * 1e6,
        t_on * 1e6
    );
    if let Some(m) = &mut model {
        let step = mean(20, || m.step());
        println!(
            "model step (decode, {STREAMS} streams, context {CTX}): {:.2} ms; events = {:.3}% of it",
            step * 1e3,
            100.0 * cost / step
        );
    }
}
