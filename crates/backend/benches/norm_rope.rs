//! The element-wise phases around a prefill step's products, on SmolLM2-135M's shapes (hidden
//! 576, 9 + 3 heads of 64) at 455 rows (64 prompts of ~64 tokens over a step's budget), on one
//! thread: the residual add + RMSNorm and the plain RMSNorm of (455, 576), and RoPE over Q and K
//! of each row, each next to the scalar code it replaced (kept below, so both run interleaved in
//! one run); the K/V rows' f16 write for scale. Then SwiGLU on (64, 1536) with AVX-512's former
//! exp (the two powers of two) next to the current one (`vscalefps`), when the CPU has AVX-512.
//!
//! `cargo bench -p tokenfab-backend --bench norm_rope`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tokenfab_backend::cpu::attention::{KvDtype, KvStore};
use tokenfab_backend::cpu::{
    add_rms_norm_isa, glu_rows_isa, rms_norm_isa, rope_isa, Activation, Isa,
};
use tokenfab_backend::rope::{Rope, RopeKind};

const ROWS: usize = 455;
const DIM: usize = 576;
const HD: usize = 64;
const Q_HEADS: usize = 9;
const KV_HEADS: usize = 3;

/// One row's RoPE, given its cos and sin.
type RowFn<'a> = dyn Fn(&mut [f32], &[f32], &[f32]) + 'a;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// The former `add_rms_norm`: one running sum of squares, in order.
fn add_rms_norm_before(x: &mut [f32], add: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for ((xr, ar), or) in x
        .chunks_exact_mut(d)
        .zip(add.chunks_exact(d))
        .zip(out.chunks_exact_mut(d))
    {
        let mut ss = 0f32;
        for (v, a) in xr.iter_mut().zip(ar) {
            *v += a;
            ss += *v * *v;
        }
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr.iter()).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// The former `rms_norm`.
fn rms_norm_before(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// The former `Rope::apply`: pair by pair, indexed.
fn rope_before(rope: &Rope, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = rope.half();
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = match rope.kind {
                RopeKind::Normal => (2 * i, 2 * i + 1),
                RopeKind::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod silu_before {
    //! AVX-512 SiLU with the exp's former last step: 2^n applied as two integer-built powers
    //! of two (the same bits as `vscalefps`).
    use std::arch::x86_64::*;

    const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_66,
        0.5,
    ];

    #[inline(always)]
    unsafe fn exp<const SCALEF: bool>(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        if SCALEF {
            return _mm512_scalef_ps(y, n);
        }
        let ni = _mm512_cvtps_epi32(n);
        let a = _mm512_srai_epi32::<1>(ni);
        let pow2 = |e: __m512i| {
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                e,
                _mm512_set1_epi32(127),
            )))
        };
        _mm512_mul_ps(_mm512_mul_ps(y, pow2(a)), pow2(_mm512_sub_epi32(ni, a)))
    }

    /// # Safety
    /// AVX-512 F; gu is (rows, 2 ffn), h (rows, ffn), ffn a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows<const SCALEF: bool>(gu: &[f32], h: &mut [f32], ffn: usize) {
        for (hr, g) in h.chunks_exact_mut(ffn).zip(gu.chunks_exact(2 * ffn)) {
            for i in (0..ffn).step_by(16) {
                let gv = _mm512_loadu_ps(g.as_ptr().add(i));
                let uv = _mm512_loadu_ps(g.as_ptr().add(ffn + i));
                let neg = _mm512_sub_ps(_mm512_setzero_ps(), gv);
                let e = exp::<SCALEF>(neg);
                let y = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0), e)), uv);
                _mm512_storeu_ps(hr.as_mut_ptr().add(i), y);
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("1-thread global pool");
    let mut seed = 7;
    let x0: Vec<f32> = (0..ROWS * DIM).map(|_| lcg(&mut seed) * 4.0).collect();
    let add: Vec<f32> = (0..ROWS * DIM).map(|_| lcg(&mut seed)).collect();
    let w: Vec<f32> = (0..DIM).map(|_| 1.0 + lcg(&mut seed)).collect();
    let mut out = vec![0f32; ROWS * DIM];
    let id = format!("{ROWS}x{DIM}");

    let mut group = c.benchmark_group("add_rms_norm");
    group.throughput(Throughput::Elements((ROWS * DIM) as u64));
    // x grows by `add` on every call; harmless for timing (no overflow in a bench's iterations
    // at these magnitudes, and the work does not depend on the values).
    let mut x = x0.clone();
    group.bench_function(BenchmarkId::new("scalar (before)", &id), |b| {
        b.iter(|| add_rms_norm_before(&mut x, black_box(&add), &w, 1e-5, &mut out))
    });
    for isa in Isa::available() {
        let mut x = x0.clone();
        group.bench_function(BenchmarkId::new(format!("{isa:?}"), &id), |b| {
            b.iter(|| add_rms_norm_isa(isa, &mut x, black_box(&add), &w, 1e-5, &mut out))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("rms_norm");
    group.throughput(Throughput::Elements((ROWS * DIM) as u64));
    group.bench_function(BenchmarkId::new("scalar (before)", &id), |b| {
        b.iter(|| rms_norm_before(black_box(&x0), &w, 1e-5, &mut out))
    });
    for isa in Isa::available() {
        group.bench_function(BenchmarkId::new(format!("{isa:?}"), &id), |b| {
            b.iter(|| rms_norm_isa(isa, black_box(&x0), &w, 1e-5, &mut out))
        });
    }
    group.finish();

    let rope = Rope {
        kind: RopeKind::Normal,
        dim: HD,
        inv_freq: (0..HD / 2)
            .map(|i| 1e5f64.powf(-2.0 * i as f64 / HD as f64))
            .collect(),
        mscale: 1.0,
    };
    let qk = (Q_HEADS + KV_HEADS) * HD;
    let (mut cos, mut sin): (Vec<f32>, Vec<f32>) =
        (vec![0f32; ROWS * HD / 2], vec![0f32; ROWS * HD / 2]);
    for t in 0..ROWS {
        let a = t * HD / 2..(t + 1) * HD / 2;
        rope.angles((t % 64) as u32, &mut cos[a.clone()], &mut sin[a]);
    }
    let mut q: Vec<f32> = (0..ROWS * qk).map(|_| lcg(&mut seed)).collect();
    let mut group = c.benchmark_group("rope");
    group.throughput(Throughput::Elements((ROWS * qk) as u64));
    let id = format!("{ROWS}x{}x{HD}", Q_HEADS + KV_HEADS);
    let rows = |q: &mut [f32], f: &RowFn| {
        for (t, row) in q.chunks_exact_mut(qk).enumerate() {
            let a = t * HD / 2..(t + 1) * HD / 2;
            f(row, &cos[a.clone()], &sin[a]);
        }
    };
    group.bench_function(BenchmarkId::new("scalar (before)", &id), |b| {
        b.iter(|| rows(&mut q, &|r, c, s| rope_before(&rope, r, HD, c, s)))
    });
    for isa in Isa::available() {
        group.bench_function(BenchmarkId::new(format!("{isa:?}"), &id), |b| {
            b.iter(|| rows(&mut q, &|r, c, s| rope_isa(isa, &rope, r, HD, c, s)))
        });
    }
    let mut k = KvStore::new(KvDtype::F16, ROWS, KV_HEADS * HD);
    let mut v = KvStore::new(KvDtype::F16, ROWS, KV_HEADS * HD);
    group.bench_function(BenchmarkId::new("K and V f16 write", &id), |b| {
        b.iter(|| {
            // (K rows stand in for V: the same width.)
            for (t, row) in q.chunks_exact(qk).enumerate() {
                k.write(t, &row[Q_HEADS * HD..]);
                v.write(t, &row[Q_HEADS * HD..]);
            }
        })
    });
    group.bench_function(BenchmarkId::new("angles (per step)", &id), |b| {
        b.iter(|| {
            for t in 0..ROWS {
                let a = t * HD / 2..(t + 1) * HD / 2;
                rope.angles(black_box(t as u32 % 64), &mut cos[a.clone()], &mut sin[a]);
            }
        })
    });
    group.finish();

    #[cfg(target_arch = "x86_64")]
    if Isa::available().contains(&Isa::Avx512Vnni) {
        const FFN: usize = 1536;
        let rows = 64;
        let gu: Vec<f32> = (0..rows * 2 * FFN).map(|_| lcg(&mut seed) * 16.0).collect();
        let mut h = vec![0f32; rows * FFN];
        let mut want = vec![0f32; rows * FFN];
        // SAFETY: AVX-512 F is available; FFN is a multiple of 16.
        unsafe { silu_before::rows::<false>(&gu, &mut want, FFN) };
        glu_rows_isa(Isa::Avx512Vnni, Activation::Silu, &gu, &mut h, FFN);
        assert_eq!(h, want, "the two AVX-512 exps give the same bits");
        let mut group = c.benchmark_group("swiglu avx512");
        group.throughput(Throughput::Elements((rows * FFN) as u64));
        let id = format!("{rows}x{FFN}");
        group.bench_function(BenchmarkId::new("two powers of two (before)", &id), |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { silu_before::rows::<false>(black_box(&gu), &mut h, FFN) })
        });
        group.bench_function(BenchmarkId::new("vscalefps, same loop", &id), |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { silu_before::rows::<true>(black_box(&gu), &mut h, FFN) })
        });
        group.bench_function(BenchmarkId::new("vscalefps", &id), |b| {
            b.iter(|| {
                glu_rows_isa(
                    Isa::Avx512Vnni,
                    Activation::Silu,
                    black_box(&gu),
                    &mut h,
                    FFN,
                )
            })
        });
        group.finish();
    }
}
