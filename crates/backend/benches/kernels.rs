//! Kernel micro-benchmarks against the machine's own measured peak.
//!
//! `cargo bench -p tokenfab-backend` first measures the peak (an FMA loop for f32 GFLOP/s, a
//! `vpdpbusd` / `maddubs` loop for int8 GOP/s, on one core and on the whole rayon pool), then
//! times `matmul_q` on SmolLM2-135M's shapes (Q4_1, and the Q8_0 tied embedding) at batch 1 and
//! 64 next to the f32 `matmul`, and prints a table of GOP/s and the fraction of peak: of the int8
//! pool peak measured again just before and after each matmul's timing (the higher of the two),
//! since a shared machine's clock drifts over a run. Criterion keeps its usual per-benchmark
//! records. One op = one multiply or one add (2 per MAC).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tokenfab_backend::cpu::{matmul, matmul_q_isa, Isa, Matrix, QMatrix, QType};
use tokenfab_loader::quant::{dequantize, quantize};
use tokenfab_loader::GgmlType;

/// (name, weight type, rows = output features, cols = input features): the matrices
/// `Model::forward` multiplies for SmolLM2-135M (q|k|v and gate|up stacked, as the model runs them).
const SHAPES: [(&str, QType, usize, usize); 5] = [
    ("attn_qkv 960x576", QType::Q4_1, 960, 576),
    ("attn_output 576x576", QType::Q4_1, 576, 576),
    ("ffn_gate_up 3072x576", QType::Q4_1, 3072, 576),
    ("ffn_down 576x1536", QType::Q4_1, 576, 1536),
    ("output 49152x576", QType::Q8_0, 49152, 576),
];
const BATCHES: [usize; 2] = [1, 64];

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn ggml(ty: QType) -> GgmlType {
    match ty {
        QType::Q8_0 => GgmlType::Q8_0,
        _ => GgmlType::Q4_1,
    }
}

/// Random weights of `ty`, as a QMatrix and dequantized to f32.
fn weights(ty: QType, rows: usize, cols: usize) -> (QMatrix, Matrix) {
    let mut seed = 42;
    let f: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed) * 0.1).collect();
    let mut bytes = Vec::new();
    quantize(ggml(ty), &f, &mut bytes).expect("quantize");
    let mut deq = vec![0f32; rows * cols];
    dequantize(ggml(ty), &bytes, &mut deq).expect("dequantize");
    (
        QMatrix::new(ty, rows, cols, bytes).expect("qmatrix"),
        Matrix::new(rows, cols, deq),
    )
}

/// Best seconds per call of `f` over about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

#[path = "common/peak.rs"]
mod peak;

/// Peak ops/s of `f(iters) -> ops` on one thread and on every thread of the pool at once.
#[cfg(target_arch = "x86_64")]
fn measure_peak(f: fn(usize, bool) -> f64, wide: bool) -> (f64, f64) {
    let iters = 2_000_000;
    let one = time(Duration::from_millis(300), || {
        black_box(f(iters, wide));
    });
    let ops = f(1, wide) * iters as f64;
    (
        ops / one,
        peak::pool_rate(f, wide, iters, Duration::from_millis(300)),
    )
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let isa = Isa::detect();
    let wide = isa == Isa::Avx512Vnni;
    #[cfg(target_arch = "x86_64")]
    let (fma, int8) = if isa == Isa::Scalar {
        ((f64::NAN, f64::NAN), (f64::NAN, f64::NAN))
    } else {
        (
            measure_peak(peak::fma, wide),
            measure_peak(peak::int8, wide),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (fma, int8) = ((f64::NAN, f64::NAN), (f64::NAN, f64::NAN));
    let threads = rayon::current_num_threads();
    println!("isa {isa:?}, {threads} pool threads");
    println!(
        "peak f32 FMA: {:.1} GFLOP/s per core, {:.1} pool; int8 ({}): {:.1} GOP/s per core, {:.1} pool",
        fma.0 / 1e9,
        fma.1 / 1e9,
        if wide { "vpdpbusd zmm" } else { "maddubs ymm" },
        int8.0 / 1e9,
        int8.1 / 1e9
    );

    // The int8 peak of the whole pool over a short run (NaN where none is measured).
    let pool_peak = || {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            return peak::pool_rate(peak::int8, wide, 200_000, Duration::from_millis(100));
        }
        f64::NAN
    };
    let mut rows_out = Vec::new();
    let mut group = c.benchmark_group("matmul");
    for (name, ty, rows, cols) in SHAPES {
        let (qw, fw) = weights(ty, rows, cols);
        for n in BATCHES {
            let mut seed = 1;
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let mut y = vec![0f32; n * rows];
            let ops = 2.0 * (n * rows * cols) as f64;
            group.throughput(Throughput::Elements(ops as u64));
            let id = format!("{name} {ty:?} n={n}");
            group.bench_function(BenchmarkId::new("q", &id), |b| {
                b.iter(|| matmul_q_isa(isa, black_box(&x), n, &qw, &mut y))
            });
            group.bench_function(BenchmarkId::new("f32", &id), |b| {
                b.iter(|| matmul(black_box(&x), n, &fw, &mut y))
            });
            let budget = Duration::from_millis(250);
            // The pool's int8 peak just before and after (this machine's clock drifts by 10%
            // over a run): the row's fraction is of the higher one.
            let before = pool_peak();
            let tq = time(budget, || matmul_q_isa(isa, &x, n, &qw, &mut y));
            let peak = before.max(pool_peak());
            let tf = time(budget, || matmul(&x, n, &fw, &mut y));
            rows_out.push((id, ops / tq, ops / tf, tq, tf, peak));
        }
    }
    group.finish();

    // Batch 1, one thread: the decode case per core, quantized against the f32 kernel.
    let (qw, fw) = weights(QType::Q4_1, 1536, 576);
    let x: Vec<f32> = (0..576).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; 1536];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("1-thread pool");
    let (t1q, t1f) = pool.install(|| {
        let budget = Duration::from_millis(300);
        (
            time(budget, || matmul_q_isa(isa, &x, 1, &qw, &mut y)),
            time(budget, || matmul(&x, 1, &fw, &mut y)),
        )
    });

    println!();
    println!(
        "| shape | q GOP/s | int8 peak at the time | % int8 peak | % FMA peak | f32 GFLOP/s | q time | f32 time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (id, gq, gf, tq, tf, peak) in rows_out {
        println!(
            "| {id} | {:.1} | {:.0} | {:.0}% | {:.0}% | {:.1} | {:.1} µs | {:.1} µs |",
            gq / 1e9,
            peak / 1e9,
            100.0 * gq / peak,
            100.0 * gq / fma.1,
            gf / 1e9,
            tq * 1e6,
            tf * 1e6
        );
    }
    println!(
        "1 thread, batch 1, ffn_gate 1536x576 Q4_1: matmul_q {:.1} µs, f32 matmul {:.1} µs ({:.2}x)",
        t1q * 1e6,
        t1f * 1e6,
        t1f / t1q
    );
}
