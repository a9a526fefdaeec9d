//! AVX2 + FMA + F16C attention operations (x86-64). Callers guarantee the CPU has all three.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::f16;

use super::{BlockQ8_0, Ops, Task, QK8_0};

pub(crate) struct Avx2;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

impl Ops for Avx2 {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let av = _mm256_set1_ps(a);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn scale(a: f32, y: &mut [f32]) {
        let n = y.len();
        let av = _mm256_set1_ps(a);
        let py = y.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(py.add(i), _mm256_mul_ps(av, _mm256_loadu_ps(py.add(i))));
            i += 8;
        }
        while i < n {
            y[i] *= a;
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(ps.add(i) as *const __m128i);
            _mm256_storeu_ps(pd.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        while i < n {
            dst[i] = src[i].to_f32();
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]) {
        for (o, b) in dst.chunks_exact_mut(QK8_0).zip(src) {
            let d = _mm256_set1_ps(b.d.to_f32());
            let (pq, po) = (b.qs.as_ptr(), o.as_mut_ptr());
            for i in (0..QK8_0).step_by(8) {
                let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(pq.add(i) as *const __m128i));
                _mm256_storeu_ps(po.add(i), _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn task(t: &Task, out: &mut [f32], scratch: &mut [f32]) {
    super::run::<Avx2>(t, out, scratch)
}
