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

/// Int8 ops per second of one thread running `vpdpbusd` (zmm) or `vpmaddubsw` (ymm) flat out.
#[cfg(target_arch = "x86_64")]
fn peak_one(wide: bool) -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dp512(iters: usize) -> i32 {
        let (w, x) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
        let mut a = [_mm512_setzero_si512(); 12];
        for _ in 0..iters {
            for r in &mut a {
                *r = _mm512_dpbusd_epi32(*r, w, x);
            }
        }
        a.iter().map(|&r| _mm512_reduce_add_epi32(r)).sum()
    }
    #[target_feature(enable = "avx2")]
    unsafe fn dp256(iters: usize) -> i32 {
        let (w, x) = (_mm256_set1_epi8(1), _mm256_set1_epi8(2));
        let mut a = [_mm256_setzero_si256(); 12];
        for _ in 0..iters {
            for r in &mut a {
                *r = _mm256_add_epi16(*r, _mm256_maddubs_epi16(w, x));
            }
        }
        a.iter().map(|&r| _mm256_extract_epi32::<0>(r)).sum()
    }
    let iters = 200_000;
    let t = time(Duration::from_millis(50), || unsafe {
        black_box(if wide { dp512(iters) } else { dp256(iters) });
    });
    let per = if wide {
        12.0 * 64.0 * 2.0
    } else {
        12.0 * 32.0 * 2.0
    };
    iters as f64 * per / t
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_one(_: bool) -> f64 {
    f64::NAN
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
                let peak: f64 = rayon::broadcast(|_| peak_one(wide)).iter().sum();
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
