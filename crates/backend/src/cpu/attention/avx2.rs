//! AVX2 + FMA + F16C attention operations (x86-64). Callers guarantee the CPU has all three.
//! Scores come eight positions at a time: eight dot products' lanes summed by one transpose-reduce
//! instead of a horizontal sum each. V rows are added with query heads taken up to four at a time
//! so that one load of a V row feeds all of them.
#![cfg(target_arch = "x86_64")]
// Register tiles are indexed by head alongside pointer offsets; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::{acc_grouped, dots_grouped, BlockQ8_0, HeadGroups, Ops, Outs, Task, QK8_0};
use crate::cpu::avx2::{exp, hsum};

pub(crate) struct Avx2;

impl HeadGroups for Avx2 {
    /// `N` heads of `q` (rows of `k.len()`) against `k`: `s[g * stride] = scale * q_g · k`.
    #[inline(always)]
    unsafe fn dots_n<const N: usize>(
        q: *const f32,
        k: &[f32],
        scale: f32,
        s: *mut f32,
        stride: usize,
    ) {
        let hd = k.len();
        let (hd16, hd8) = (hd / 16 * 16, hd / 8 * 8);
        let pk = k.as_ptr();
        let mut a0 = [_mm256_setzero_ps(); N];
        let mut a1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i < hd16 {
            let (k0, k1) = (_mm256_loadu_ps(pk.add(i)), _mm256_loadu_ps(pk.add(i + 8)));
            for g in 0..N {
                a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(g * hd + i)), k0, a0[g]);
                a1[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(g * hd + i + 8)), k1, a1[g]);
            }
            i += 16;
        }
        if i < hd8 {
            let k0 = _mm256_loadu_ps(pk.add(i));
            for g in 0..N {
                a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(g * hd + i)), k0, a0[g]);
            }
        }
        for g in 0..N {
            let mut d = hsum(_mm256_add_ps(a0[g], a1[g]));
            for r in hd8..hd {
                d += *q.add(g * hd + r) * *pk.add(r);
            }
            *s.add(g * stride) = d * scale;
        }
    }

    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for `N` heads of `out` (rows of `hd`).
    #[inline(always)]
    unsafe fn acc_n<const N: usize>(
        w: *const f32,
        stride: usize,
        rows: &[&[f32]],
        out: *mut f32,
        hd: usize,
    ) {
        let hd8 = hd / 8 * 8;
        let mut c = 0;
        while c < hd8 {
            let mut a = simd_array!(N, _mm256_setzero_ps(), |g| _mm256_loadu_ps(
                out.add(g * hd + c)
            ));
            for (j, r) in rows.iter().enumerate() {
                let v = _mm256_loadu_ps(r.as_ptr().add(c));
                for g in 0..N {
                    a[g] = _mm256_fmadd_ps(_mm256_set1_ps(*w.add(g * stride + j)), v, a[g]);
                }
            }
            for g in 0..N {
                _mm256_storeu_ps(out.add(g * hd + c), a[g]);
            }
            c += 8;
        }
        for c in hd8..hd {
            for g in 0..N {
                let mut y = *out.add(g * hd + c);
                for (j, r) in rows.iter().enumerate() {
                    y += *w.add(g * stride + j) * r[c];
                }
                *out.add(g * hd + c) = y;
            }
        }
    }
}

/// The sums of `a[0]`..`a[7]`, in lane order. Every lane goes through the same tree (pairs of
/// neighbours, then pairs of pairs, then the two halves), so a lane's sum does not depend on the
/// other vectors.
#[inline(always)]
unsafe fn reduce8(a: &[__m256; 8]) -> __m256 {
    let t0 = _mm256_hadd_ps(a[0], a[1]);
    let t1 = _mm256_hadd_ps(a[2], a[3]);
    let t2 = _mm256_hadd_ps(a[4], a[5]);
    let t3 = _mm256_hadd_ps(a[6], a[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(u0, u1),
        _mm256_permute2f128_ps::<0x31>(u0, u1),
    )
}

/// [`Ops::scores`] for rows of a multiple of 8 values: per query head, blocks of 8 positions whose
/// products are summed by [`reduce8`] (a short last block repeats row 0 in its unused lanes).
#[inline(always)]
pub(crate) unsafe fn scores8(q: &[f32], rows: &[&[f32]], scale: f32, s: &mut [f32], stride: usize) {
    let (np, hd) = (rows.len(), rows[0].len());
    let sc = _mm256_set1_ps(scale);
    for (g, qg) in q.chunks_exact(hd).enumerate() {
        let pq = qg.as_ptr();
        let mut j0 = 0;
        while j0 < np {
            let nb = (np - j0).min(8);
            let pk: [*const f32; 8] =
                std::array::from_fn(|i| rows[if i < nb { j0 + i } else { 0 }].as_ptr());
            let mut a = [_mm256_setzero_ps(); 8];
            let mut c = 0;
            while c < hd {
                let qc = _mm256_loadu_ps(pq.add(c));
                for i in 0..8 {
                    a[i] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(pk[i].add(c)), a[i]);
                }
                c += 8;
            }
            let r = _mm256_mul_ps(reduce8(&a), sc);
            let dst = s[g * stride + j0..][..nb].as_mut_ptr();
            if nb == 8 {
                _mm256_storeu_ps(dst, r);
            } else {
                let mut t = [0f32; 8];
                _mm256_storeu_ps(t.as_mut_ptr(), r);
                std::ptr::copy_nonoverlapping(t.as_ptr(), dst, nb);
            }
            j0 += 8;
        }
    }
}

impl Ops for Avx2 {
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize) {
        dots_grouped::<Self>(q, k, scale, s, stride)
    }

    #[inline(always)]
    unsafe fn scores(q: &[f32], rows: &[&[f32]], scale: f32, s: &mut [f32], stride: usize) {
        match rows.first() {
            Some(k) if !k.is_empty() && k.len().is_multiple_of(8) => {
                scores8(q, rows, scale, s, stride)
            }
            _ => {
                for (j, k) in rows.iter().enumerate() {
                    Self::dots(q, k, scale, &mut s[j..], stride);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn max(s: &[f32], init: f32) -> f32 {
        let (n, p) = (s.len(), s.as_ptr());
        let mut m = _mm256_set1_ps(init);
        let mut i = 0;
        while i + 8 <= n {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        s[i..].iter().copied().fold(_mm_cvtss_f32(h), f32::max)
    }

    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let n = s.len();
        let (p, m) = (s.as_mut_ptr(), _mm256_set1_ps(mx));
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            // The tail through the same exp, via a padded copy.
            let mut t = [mx; 8];
            t[..n - i].copy_from_slice(&s[i..]);
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), m));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
            for (d, &v) in s[i..].iter_mut().zip(&t) {
                *d = v;
                sum += v;
            }
        }
        sum
    }

    #[inline(always)]
    unsafe fn acc(w: &[f32], stride: usize, rows: &[&[f32]], out: &mut [f32]) {
        acc_grouped::<Self>(w, stride, rows, out)
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

/// [`super::fold::run`] on AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; as [`super::fold::run`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn chunk(t: &Task, c: usize, outs: Outs, scratch: &mut [f32]) {
    super::fold::run::<Avx2>(t, c, outs, scratch)
}

/// [`super::normalize`] on AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn normalize(o: &mut [f32], l: &[f32], hd: usize) {
    super::normalize_with::<Avx2>(o, l, hd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector exp against f64's over the range softmax feeds it (x <= 0).
    #[test]
    fn exp_is_within_a_few_ulp() {
        if !crate::cpu::Isa::available().contains(&crate::cpu::Isa::Avx2) {
            return;
        }
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let xs = [
                x,
                x * 0.5,
                x * 0.25,
                x * 0.125,
                x * 0.01,
                x * 1e-3,
                x * 1e-5,
                0.0,
            ];
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(xs.as_ptr()))) };
            for (&x, &e) in xs.iter().zip(&out) {
                let want = (x as f64).exp();
                worst = worst.max(((e as f64 - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }
}
