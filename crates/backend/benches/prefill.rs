//! The four products of a SmolLM2-135M layer at a prefill step's batch (456 rows, what a served
//! step of 64 prompts carries), on one thread and on the whole pool, against the int8 peak of
//! the same threads measured just before each timing.
//!
//! `cargo bench -p tokenfab-backend --bench prefill` prints, per shape, GOP/s (one op = one
//! multiply or one add) and the fraction of the `vpdpbusd` zmm peak (`maddubs` ymm elsewhere).
//! The packed kernel's design allows at most 8/11 of that peak on a core with two `vpdpbusd`
//! pipes shared with the float multiplies (see `cpu/quant/packed.rs`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tokenfab_backend::cpu::{matmul_q_isa, Isa, QMatrix, QType};
use tokenfab_loader::quant::quantize;
use tokenfab_loader::GgmlType;

const SHAPES: [(&str, usize, usize); 4] = [
    ("attn_qkv 960x576", 960, 576),
    ("attn_output 576x576", 576, 576),
    ("ffn_gate_up 3072x576", 3072, 576),
    ("ffn_down 576x1536", 576, 1536),
];
const N: usize = 456;
/// Copies of each matrix, timed in turn (SmolLM2-135M's layers).
const LAYERS: usize = 30;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// Median seconds per call of `f` over about `budget` (a served step runs each product once,
/// so its time is a typical call's, not the best one's).
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < budget || all.len() < 5 {
        let t = Instant::now();
        f();
        all.push(t.elapsed().as_secs_f64());
    }
    all.sort_by(f64::total_cmp);
    all[all.len() / 2]
}

// Only its int8 peak is read here (the FMA peak is `kernels.rs`'s).
#[allow(dead_code)]
#[path = "common/peak.rs"]
mod peak;

/// The int8 peak of every thread of the current pool at once (NaN off x86).
fn pool_peak(wide: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    return peak::pool_rate(peak::int8, wide, 200_000, Duration::from_millis(100));
    #[cfg(not(target_arch = "x86_64"))]
    return f64::NAN;
}

fn main() {
    let isa = Isa::detect();
    let wide = isa == Isa::Avx512Vnni;
    let pools = [1, rayon::current_num_threads()];
    println!(
        "isa {isa:?}, batch {N}; % of the int8 peak of the same threads, measured just before"
    );
    println!("| shape | threads | warm time | GOP/s | % int8 peak | cold time | % int8 peak |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, rows, cols) in SHAPES {
        let mut seed = 42;
        let f: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed) * 0.1).collect();
        let mut bytes = Vec::new();
        quantize(GgmlType::Q4_1, &f, &mut bytes).expect("quantize");
        // LAYERS copies, as a model's layers: timed in turn, each call finds its weights in
        // DRAM (30 layers of packed copies are far past the L3), as a served step does.
        let ws: Vec<QMatrix> = (0..LAYERS)
            .map(|_| QMatrix::new(QType::Q4_1, rows, cols, bytes.clone()).expect("qmatrix"))
            .collect();
        let x: Vec<f32> = (0..N * cols).map(|_| lcg(&mut seed)).collect();
        let mut y = vec![0f32; N * rows];
        let ops = 2.0 * (N * rows * cols) as f64;
        for threads in pools {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let (t, cold, peak) = pool.install(|| {
                let peak = pool_peak(wide);
                let warm = time(Duration::from_millis(300), || {
                    matmul_q_isa(isa, black_box(&x), N, &ws[0], &mut y)
                });
                let cold = time(Duration::from_millis(600), || {
                    for w in &ws {
                        matmul_q_isa(isa, black_box(&x), N, w, &mut y)
                    }
                }) / LAYERS as f64;
                (warm, cold, peak)
            });
            println!(
                "| {name} | {threads} | {:.0} µs | {:.0} | {:.0}% | {:.0} µs | {:.0}% |",
                t * 1e6,
                ops / t / 1e9,
                100.0 * ops / t / peak,
                cold * 1e6,
                100.0 * ops / cold / peak
            );
        }
    }
}
