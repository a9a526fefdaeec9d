//! The machine's peak, shared by the benches that report a fraction of it (`kernels.rs`,
//! `prefill.rs`): dependency-free loops of independent multiply-adds, long enough to hide
//! latency.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
#[cfg(target_arch = "x86_64")]
use std::hint::black_box;
#[cfg(target_arch = "x86_64")]
use std::time::{Duration, Instant};

/// f32 ops (2 per FMA lane) done by `fma(iters)`.
#[cfg(target_arch = "x86_64")]
pub fn fma(iters: usize, wide: bool) -> f64 {
    // SAFETY: called only when the CPU has the features (checked by the caller).
    unsafe {
        if wide {
            std::hint::black_box(fma512(iters));
            (iters * 12 * 16 * 2) as f64
        } else {
            std::hint::black_box(fma256(iters));
            (iters * 12 * 8 * 2) as f64
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: usize) -> f32 {
    let mut acc = [_mm512_set1_ps(0.5); 12];
    let (a, b) = (
        black_box(_mm512_set1_ps(0.999)),
        black_box(_mm512_set1_ps(1e-7)),
    );
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: usize) -> f32 {
    let mut acc = [_mm256_set1_ps(0.5); 12];
    let (a, b) = (
        black_box(_mm256_set1_ps(0.999)),
        black_box(_mm256_set1_ps(1e-7)),
    );
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        acc.iter()
            .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v)),
    );
    out.iter().sum()
}

/// int8 ops (2 per u8×i8 MAC) done by `int8(iters)`: `vpdpbusd` zmm when `wide`, else AVX2
/// `maddubs` + `madd` + `add` (the AVX2 kernel's instruction mix).
#[cfg(target_arch = "x86_64")]
pub fn int8(iters: usize, wide: bool) -> f64 {
    // SAFETY: called only when the CPU has the features (checked by the caller).
    unsafe {
        if wide {
            std::hint::black_box(dp512(iters));
            (iters * 12 * 64 * 2) as f64
        } else {
            std::hint::black_box(dp256(iters));
            (iters * 12 * 32 * 2) as f64
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dp512(iters: usize) -> i32 {
    let mut acc = [_mm512_setzero_si512(); 12];
    let (a, b) = (
        black_box(_mm512_set1_epi8(3)),
        black_box(_mm512_set1_epi8(-5)),
    );
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_epi32(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dp256(iters: usize) -> i32 {
    let mut acc = [_mm256_setzero_si256(); 12];
    let (a, b, ones) = (
        black_box(_mm256_set1_epi8(3)),
        black_box(_mm256_set1_epi8(-5)),
        _mm256_set1_epi16(1),
    );
    for _ in 0..iters {
        for v in acc.iter_mut() {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones);
            *v = _mm256_add_epi32(*v, p);
        }
    }
    let mut out = [0i32; 8];
    let s = acc
        .iter()
        .fold(_mm256_setzero_si256(), |s, v| _mm256_add_epi32(s, *v));
    _mm256_storeu_si256(out.as_mut_ptr() as _, s);
    out.iter().sum()
}

/// Ops/s of `f(iters)` run on every thread of the current pool at once, best over about
/// `budget`.
#[cfg(target_arch = "x86_64")]
pub fn pool_rate(f: fn(usize, bool) -> f64, wide: bool, iters: usize, budget: Duration) -> f64 {
    let run = || {
        rayon::broadcast(|_| black_box(f(iters, wide)));
    };
    run();
    let start = Instant::now();
    let mut all = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        run();
        all = all.min(t.elapsed().as_secs_f64());
    }
    f(1, wide) * (iters * rayon::current_num_threads()) as f64 / all
}
