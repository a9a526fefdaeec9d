//! SwiGLU over SmolLM2-135M's FFN width: `h = silu(gate) * up` for (rows, 1536), on one thread.
//!
//! `cargo bench -p tokenfab-backend --bench activation` times, at 1 and 64 rows, the former kernel
//! (the library's scalar `expf` per element, kept then for bit-identical results) next to
//! `glu_rows_isa` on every instruction set this CPU has (the vector exp of each, and its scalar
//! twin, all giving the same bits); then SwiGLU with SmolLM2's down product (576x1536 Q4_1) as
//! two passes (`glu_rows_isa`, then `matmul_q_isa` quantizing its f32 input) against the fused
//! `matmul_q_glu_isa` (each activated row quantized as it is computed; the same bits). One
//! thread, so the figures are per core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tokenfab_backend::cpu::{
    glu_rows_isa, matmul_q_glu_isa, matmul_q_isa, Activation, Isa, QMatrix, QType,
};
use tokenfab_loader::quant::quantize;
use tokenfab_loader::GgmlType;

const FFN: usize = 1536;
const ROWS: [usize; 2] = [1, 64];

/// The SiLU this crate computed before its vector exp: the library's `expf` per element.
fn silu_libm(gu: &[f32], h: &mut [f32]) {
    for (hr, g) in h.chunks_exact_mut(FFN).zip(gu.chunks_exact(2 * FFN)) {
        let (gate, up) = g.split_at(FFN);
        for ((o, &g), &u) in hr.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// (rows, 2 ffn) gate | up pre-activations of the spread a real FFN sees (a few units, some tens).
fn pre_activations(rows: usize) -> Vec<f32> {
    (0..rows * 2 * FFN)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * if i % 13 == 0 { 40.0 } else { 8.0 })
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    // One thread: `glu_rows` hands 8+ rows to the pool, which would make this a core count.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("1-thread global pool");
    {
        let mut group = c.benchmark_group("swiglu");
        for rows in ROWS {
            let gu = pre_activations(rows);
            let mut h = vec![0f32; rows * FFN];
            group.throughput(Throughput::Elements((rows * FFN) as u64));
            let id = format!("{rows}x{FFN}");
            group.bench_function(BenchmarkId::new("libm scalar (before)", &id), |b| {
                b.iter(|| silu_libm(black_box(&gu), &mut h))
            });
            for isa in Isa::available() {
                group.bench_function(BenchmarkId::new(format!("{isa:?}"), &id), |b| {
                    b.iter(|| glu_rows_isa(isa, Activation::Silu, black_box(&gu), &mut h, FFN))
                });
            }
        }
        group.finish();

        let dim = 576;
        let f: Vec<f32> = (0..dim * FFN)
            .map(|i| (i as f32 * 0.37).sin() * 0.05)
            .collect();
        let mut bytes = Vec::new();
        quantize(GgmlType::Q4_1, &f, &mut bytes).expect("quantize");
        let w = QMatrix::new(QType::Q4_1, dim, FFN, bytes).expect("qmatrix");
        let isa = Isa::detect();
        w.prepack();
        let mut group = c.benchmark_group("swiglu+down");
        for rows in ROWS {
            let gu = pre_activations(rows);
            let mut h = vec![0f32; rows * FFN];
            let mut y = vec![0f32; rows * dim];
            let id = format!("{isa:?} {rows}x{FFN} -> {dim}");
            group.bench_function(BenchmarkId::new("two passes", &id), |b| {
                b.iter(|| {
                    glu_rows_isa(isa, Activation::Silu, black_box(&gu), &mut h, FFN);
                    matmul_q_isa(isa, &h, rows, &w, &mut y)
                })
            });
            group.bench_function(BenchmarkId::new("fused", &id), |b| {
                b.iter(|| matmul_q_glu_isa(isa, Activation::Silu, black_box(&gu), rows, &w, &mut y))
            });
        }
        group.finish();
    }
}
