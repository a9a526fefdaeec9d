//! A CPU forward pass of a shape seen before allocates nothing: every activation lives in the
//! executor's `Scratch`, the KV pool is preallocated, and the logits are returned as a borrow.
//! Its own test binary, because it counts every allocation of the process (all threads) with a
//! counting global allocator.
//!
//! What is not counted, and why:
//! - A pass started from a thread outside rayon's pool (the engine thread) hands each parallel
//!   loop to the pool through rayon's global injector queue, which allocates one ~1.5 KiB block
//!   per 63 jobs injected (crossbeam's `Injector`), i.e. once every few steps. The pass is
//!   therefore run inside a pool (`install`) with counting switched on inside, where parallel
//!   loops go through the worker's own deque and allocate nothing.
//! - The quantized matmul (`cpu::quant`) keeps its quantized activations in per-thread buffers
//!   that each thread grows the first time it is the caller of a given size; which worker picks up
//!   the pass is up to rayon, so with quantized weights the exact-zero check uses a one-thread
//!   pool. With f32 weights (no per-thread buffers) it runs on two threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokenfab_loader::{GgmlType, Gguf};
use tokenfab_models::testing::{tiny_model, ARCHS};
use tokenfab_models::{CpuExecutor, Executor, ForwardBatch, KvDtype, Model, SeqSlice};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Two sequences: `a` rows of the first from position `pa`, `b` rows of the second from `pb`.
/// Returns the allocations made during the forward pass.
fn step(
    pool: &rayon::ThreadPool,
    exec: &mut CpuExecutor,
    (pa, a): (u32, usize),
    (pb, b): (u32, usize),
) -> usize {
    let tokens: Vec<u32> = (0..(a + b) as u32).map(|i| i * 7 % 50).collect();
    let positions: Vec<u32> = (pa..pa + a as u32).chain(pb..pb + b as u32).collect();
    let (t1, t2) = ([3u32, 0, 5, 1], [2u32, 7, 4]);
    let seqs = [
        SeqSlice {
            rows: 0..a,
            block_table: &t1,
        },
        SeqSlice {
            rows: a..a + b,
            block_table: &t2,
        },
    ];
    let rows = [a - 1, a + b - 1];
    let batch = ForwardBatch {
        tokens: &tokens,
        positions: &positions,
        seqs: &seqs,
        logits_rows: &rows,
    };
    pool.install(|| {
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let logits = exec.forward(&batch).unwrap();
        COUNTING.store(false, Ordering::SeqCst);
        assert_eq!(logits.len(), 2 * 50);
        assert!(logits.iter().all(|v| v.is_finite()));
        ALLOCS.load(Ordering::SeqCst)
    })
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn a_forward_pass_of_a_seen_shape_allocates_nothing() {
    let (one, two) = (pool(1), pool(2));
    let mut cases = vec![
        ("llama", &two, GgmlType::F32, KvDtype::F32),
        ("llama", &two, GgmlType::F32, KvDtype::F16),
        ("llama", &one, GgmlType::F32, KvDtype::F16),
        ("llama", &one, GgmlType::Q8_0, KvDtype::F32),
        ("llama", &one, GgmlType::Q8_0, KvDtype::F16),
        ("llama", &one, GgmlType::Q4_1, KvDtype::F16),
    ];
    // Every architecture's own steps (biases, Q/K norms, post-norms, windows, GeGLU, fused
    // tensors, two RoPEs).
    for arch in ARCHS {
        cases.push((arch, &two, GgmlType::F32, KvDtype::F16));
        cases.push((arch, &one, GgmlType::Q8_0, KvDtype::F16));
    }
    for (arch, pool, ty, dtype) in cases {
        let g = Gguf::from_bytes(tiny_model(arch, 50, ty, 4, 2).to_bytes()).unwrap();
        let model = Model::from_gguf(&g).unwrap();
        let mut exec = CpuExecutor::new(model, dtype, 4, 8).unwrap();
        // Warm-up: prompts of 5 and 3 tokens (grows the scratch, starts the thread pool).
        let warm = step(pool, &mut exec, (0, 5), (0, 3));
        assert!(warm > 0, "the first pass grows its buffers");
        // The same shape further along both sequences, then a smaller (decode) shape.
        assert_eq!(
            step(pool, &mut exec, (5, 5), (3, 3)),
            0,
            "{arch} {ty} / {dtype}: same shape"
        );
        assert_eq!(
            step(pool, &mut exec, (10, 1), (6, 1)),
            0,
            "{arch} {ty} / {dtype}: decode"
        );
    }
}
