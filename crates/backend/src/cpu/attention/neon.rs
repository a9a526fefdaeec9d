//! NEON attention operations (aarch64). Query heads are taken up to four at a time so that one
//! load of a K or V row feeds all of them; f16 rows widen with `fcvtl`, Q8_0 rows with `sxtl`
//! (both exact, as the portable conversion).
#![cfg(target_arch = "aarch64")]
// Register tiles are indexed by head alongside pointer offsets; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use half::f16;

use super::{acc_grouped, dots_grouped, BlockQ8_0, HeadGroups, Ops, Outs, Task, QK8_0};
use crate::cpu::neon::{exp, f16_to_f32, f16x4_high_to_f32, f16x4_to_f32};

pub(crate) struct Neon;

impl HeadGroups for Neon {
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
        let (hd8, hd4) = (hd / 8 * 8, hd / 4 * 4);
        let pk = k.as_ptr();
        let mut a0 = [vdupq_n_f32(0.0); N];
        let mut a1 = [vdupq_n_f32(0.0); N];
        let mut i = 0;
        while i < hd8 {
            let (k0, k1) = (vld1q_f32(pk.add(i)), vld1q_f32(pk.add(i + 4)));
            for g in 0..N {
                a0[g] = vfmaq_f32(a0[g], vld1q_f32(q.add(g * hd + i)), k0);
                a1[g] = vfmaq_f32(a1[g], vld1q_f32(q.add(g * hd + i + 4)), k1);
            }
            i += 8;
        }
        if i < hd4 {
            let k0 = vld1q_f32(pk.add(i));
            for g in 0..N {
                a0[g] = vfmaq_f32(a0[g], vld1q_f32(q.add(g * hd + i)), k0);
            }
        }
        for g in 0..N {
            let mut d = vaddvq_f32(vaddq_f32(a0[g], a1[g]));
            for r in hd4..hd {
                d += *q.add(g * hd + r) * *pk.add(r);
            }
            *s.add(g * stride) = d * scale;
        }
    }

    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for `N` heads of `out` (rows of `hd`), eight
    /// columns (two registers) at a time.
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
            let mut a0 = simd_array!(N, vdupq_n_f32(0.0), |g| vld1q_f32(out.add(g * hd + c)));
            let mut a1 = simd_array!(N, vdupq_n_f32(0.0), |g| vld1q_f32(out.add(g * hd + c + 4)));
            for (j, r) in rows.iter().enumerate() {
                let (v0, v1) = (
                    vld1q_f32(r.as_ptr().add(c)),
                    vld1q_f32(r.as_ptr().add(c + 4)),
                );
                for g in 0..N {
                    let wj = *w.add(g * stride + j);
                    a0[g] = vfmaq_n_f32(a0[g], v0, wj);
                    a1[g] = vfmaq_n_f32(a1[g], v1, wj);
                }
            }
            for g in 0..N {
                vst1q_f32(out.add(g * hd + c), a0[g]);
                vst1q_f32(out.add(g * hd + c + 4), a1[g]);
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

impl Ops for Neon {
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize) {
        dots_grouped::<Self>(q, k, scale, s, stride)
    }

    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let n = s.len();
        let (p, m) = (s.as_mut_ptr(), vdupq_n_f32(mx));
        let mut acc = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 4 <= n {
            let e = exp(vsubq_f32(vld1q_f32(p.add(i)), m));
            vst1q_f32(p.add(i), e);
            acc = vaddq_f32(acc, e);
            i += 4;
        }
        let mut sum = vaddvq_f32(acc);
        if i < n {
            // The tail through the same exp, via a padded copy.
            let mut t = [mx; 4];
            t[..n - i].copy_from_slice(&s[i..]);
            let e = exp(vsubq_f32(vld1q_f32(t.as_ptr()), m));
            vst1q_f32(t.as_mut_ptr(), e);
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
        let py = y.as_mut_ptr();
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(py.add(i), vmulq_n_f32(vld1q_f32(py.add(i)), a));
            i += 4;
        }
        while i < n {
            y[i] *= a;
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let h = vld1q_u16(ps.add(i));
            vst1q_f32(pd.add(i), f16x4_to_f32(vget_low_u16(h)));
            vst1q_f32(pd.add(i + 4), f16x4_high_to_f32(h));
            i += 8;
        }
        while i < n {
            dst[i] = f16_to_f32(src[i].to_bits());
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]) {
        for (o, b) in dst.chunks_exact_mut(QK8_0).zip(src) {
            let d = f16_to_f32(b.d.to_bits());
            let (pq, po) = (b.qs.as_ptr(), o.as_mut_ptr());
            for i in (0..QK8_0).step_by(16) {
                let q = vld1q_s8(pq.add(i));
                let (lo, hi) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
                let w = [
                    vmovl_s16(vget_low_s16(lo)),
                    vmovl_high_s16(lo),
                    vmovl_s16(vget_low_s16(hi)),
                    vmovl_high_s16(hi),
                ];
                for j in 0..4 {
                    vst1q_f32(po.add(i + 4 * j), vmulq_n_f32(vcvtq_f32_s32(w[j]), d));
                }
            }
        }
    }
}

/// [`super::fold::run`] on NEON.
///
/// # Safety
/// None beyond NEON, which every aarch64 CPU has.
pub(crate) unsafe fn chunk(t: &Task, c: usize, outs: Outs, scratch: &mut [f32]) {
    super::fold::run::<Neon>(t, c, outs, scratch)
}

/// y *= a
///
/// # Safety
/// None beyond NEON.
pub(crate) unsafe fn scale(a: f32, y: &mut [f32]) {
    Neon::scale(a, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector exp against f64's over the range softmax feeds it (x <= 0).
    #[test]
    fn exp_is_within_a_few_ulp() {
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
            // SAFETY: NEON is baseline on aarch64; both arrays hold 8 floats.
            unsafe {
                for h in [0, 4] {
                    let e = exp(vld1q_f32(xs.as_ptr().add(h)));
                    vst1q_f32(out.as_mut_ptr().add(h), e);
                }
            }
            for (&x, &e) in xs.iter().zip(&out) {
                let want = (x as f64).exp();
                worst = worst.max(((e as f64 - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }
}
