//! SwiGLU over SmolLM2-135M's FFN width: `h = silu(gate) * up` for (rows, 1536), on one thread.
//!
//! `cargo bench -p tokenfab-backend --bench activation` times, at 1 and 64 rows, the former kernel
//! (the library's scalar `expf` per element, kept then for bit-identical results) next to
//! `glu_rows_isa` on every instruction set this CPU has (the vector exp of each, and its scalar
//! twin, all giving the same bits). One thread, so the figures are per core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tokenfab_backend::cpu::{glu_rows_isa, Activation, Isa};

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

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    // One thread: `glu_rows` hands 8+ rows to the pool, which would make this a core count.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("1-thread pool");
    pool.install(|| {
        let mut group = c.benchmark_group("swiglu");
        for rows in ROWS {
            // Pre-activations of the spread a real FFN sees (a few units, some tens).
            let gu: Vec<f32> = (0..rows * 2 * FFN)
                .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * if i % 13 == 0 { 40.0 } else { 8.0 })
                .collect();
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
    });
}
