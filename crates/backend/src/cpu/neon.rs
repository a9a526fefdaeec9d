//! NEON kernels (aarch64, where NEON is always present): f32 dot and matmul tiles, and the f16
//! widening the quantized and attention kernels share. Half-precision conversion goes through
//! `fcvt`/`fcvtl` in inline assembly: they are base ARMv8 instructions, but the intrinsics take
//! `float16x4_t`, which is not stable Rust.
#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;
use std::arch::asm;

use super::Block;

/// `h = $f(gate, up)` four lanes at a time, the tail through a padded copy (`$f`: an
/// `#[inline(always)]` kernel of two `float32x4_t`; SiLU and GELU share it).
macro_rules! lanes4 {
    ($gate:ident, $up:ident, $h:ident, $f:ident) => {{
        let n = $h.len();
        let (pg, pu, ph) = ($gate.as_ptr(), $up.as_ptr(), $h.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(ph.add(i), $f(vld1q_f32(pg.add(i)), vld1q_f32(pu.add(i))));
            i += 4;
        }
        if i < n {
            let (mut g, mut u, mut y) = ([0f32; 4], [0f32; 4], [0f32; 4]);
            g[..n - i].copy_from_slice(&$gate[i..n]);
            u[..n - i].copy_from_slice(&$up[i..n]);
            vst1q_f32(
                y.as_mut_ptr(),
                $f(vld1q_f32(g.as_ptr()), vld1q_f32(u.as_ptr())),
            );
            $h[i..].copy_from_slice(&y[..n - i]);
        }
    }};
}

/// One f16 (its bits) widened to f32, exactly.
#[inline(always)]
pub(crate) unsafe fn f16_to_f32(h: u16) -> f32 {
    let r: f32;
    asm!("fcvt {0:s}, {1:h}", out(vreg) r, in(vreg) h,
        options(pure, nomem, nostack, preserves_flags));
    r
}

/// Four f16 (their bits) widened to f32, exactly.
#[inline(always)]
pub(crate) unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h,
        options(pure, nomem, nostack, preserves_flags));
    r
}

/// The upper four of eight f16 (their bits) widened to f32, exactly.
#[inline(always)]
pub(crate) unsafe fn f16x4_high_to_f32(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl2 {0:v}.4s, {1:v}.8h", out(vreg) r, in(vreg) h,
        options(pure, nomem, nostack, preserves_flags));
    r
}

/// e^x for x <= 88 (below -87 it returns about e^-87 rather than 0): 2^n · P(f) with
/// n = round(x / ln 2), f = x - n ln 2 in two steps (Cody-Waite), P Taylor's series to degree 6
/// (|f| <= ln 2 / 2: a few ulp). The AVX2 path's function, operation for operation.
#[inline(always)]
pub(crate) unsafe fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let f = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let f = vfmsq_f32(f, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = vfmaq_f32(vdupq_n_f32(c), p, f);
    }
    // n is a whole number in [-126, 127]: the conversion is exact.
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(p, vreinterpretq_f32_s32(e))
}

/// e^x to about 1 ulp, for every x (NaN stays NaN): `scalar::exp`, operation for operation
/// (`vrndnq` rounds ties to even as `round_ties_even`; n is whole, so `vcvtq` is exact).
#[inline(always)]
pub(crate) unsafe fn exp_ulp(x: float32x4_t) -> float32x4_t {
    use super::scalar::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO};
    let x = vminq_f32(vdupq_n_f32(EXP_HI), vmaxq_f32(vdupq_n_f32(EXP_LO), x));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let ni = vcvtq_s32_f32(n);
    let a = vshrq_n_s32::<1>(ni);
    let pow2 =
        |e: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(e, vdupq_n_s32(127))));
    vmulq_f32(vmulq_f32(y, pow2(a)), pow2(vsubq_s32(ni, a)))
}

/// `h = silu(gate) * up`, four at a time through [`exp_ulp`] (the tail through a padded copy):
/// `scalar::silu`'s bits.
///
/// # Safety
/// None beyond NEON; the three slices have equal lengths.
pub unsafe fn silu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    #[inline(always)]
    unsafe fn four(g: float32x4_t, u: float32x4_t) -> float32x4_t {
        let e = exp_ulp(vnegq_f32(g));
        vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), e)), u)
    }
    lanes4!(gate, up, h, four);
}

/// # Safety
/// None beyond NEON, which every aarch64 CPU has.
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let at = i + 4 * u;
            *acc = vfmaq_f32(*acc, vld1q_f32(pa.add(at)), vld1q_f32(pb.add(at)));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// An MR x NR tile: MR rows of x against NR rows of w, all of length k.
// Register tiles index accumulators by (row of x, row of w) on purpose.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize>(b: &Block, i0: usize, r0: usize) {
    let k = b.k;
    let k4 = k / 4 * 4;
    let mut acc = [[vdupq_n_f32(0.0); NR]; MR];
    let xp = simd_array!(MR, std::ptr::null(), |i| b.x.as_ptr().add((i0 + i) * k));
    let wp = simd_array!(NR, std::ptr::null(), |r| b.w.as_ptr().add((r0 + r) * k));
    // Hot loop: NR weight loads reused by MR rows of x.
    let mut p = 0;
    while p < k4 {
        let wv = simd_array!(NR, vdupq_n_f32(0.0), |r| vld1q_f32(wp[r].add(p)));
        for i in 0..MR {
            let xv = vld1q_f32(xp[i].add(p));
            for r in 0..NR {
                acc[i][r] = vfmaq_f32(acc[i][r], xv, wv[r]);
            }
        }
        p += 4;
    }
    for i in 0..MR {
        for r in 0..NR {
            let mut s = vaddvq_f32(acc[i][r]);
            for q in k4..k {
                s += *xp[i].add(q) * *wp[r].add(q);
            }
            *b.y.0.add((i0 + i) * b.y_stride + b.y_col + r0 + r) = s;
        }
    }
}

/// Rows of x per tile, and of w: 16 accumulators, 4 weight registers and one of x out of 32.
const MR: usize = 4;
const NR: usize = 4;

/// # Safety
/// `b.y` must point to an (n, y_stride) buffer whose columns `y_col..y_col + rows` no one else
/// touches during the call.
pub unsafe fn gemm_block(b: &Block) {
    let mut r0 = 0;
    while r0 < b.rows {
        let nr = (b.rows - r0).min(NR);
        let mut i0 = 0;
        while i0 < b.n {
            let mr = (b.n - i0).min(MR);
            match (mr, nr) {
                (4, 4) => tile::<4, 4>(b, i0, r0),
                (4, 3) => tile::<4, 3>(b, i0, r0),
                (4, 2) => tile::<4, 2>(b, i0, r0),
                (4, 1) => tile::<4, 1>(b, i0, r0),
                (3, 4) => tile::<3, 4>(b, i0, r0),
                (3, 3) => tile::<3, 3>(b, i0, r0),
                (3, 2) => tile::<3, 2>(b, i0, r0),
                (3, 1) => tile::<3, 1>(b, i0, r0),
                (2, 4) => tile::<2, 4>(b, i0, r0),
                (2, 3) => tile::<2, 3>(b, i0, r0),
                (2, 2) => tile::<2, 2>(b, i0, r0),
                (2, 1) => tile::<2, 1>(b, i0, r0),
                (1, 4) => tile::<1, 4>(b, i0, r0),
                (1, 3) => tile::<1, 3>(b, i0, r0),
                (1, 2) => tile::<1, 2>(b, i0, r0),
                _ => tile::<1, 1>(b, i0, r0),
            }
            i0 += mr;
        }
        r0 += nr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// Every f16 bit pattern widens as the portable conversion does (NaNs stay NaN).
    #[test]
    fn f16_widening_is_exact_for_every_value() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for (c, chunk) in all.chunks_exact(8).enumerate() {
            let mut got = [0f32; 8];
            // SAFETY: NEON is baseline on aarch64; the arrays hold 8 values.
            unsafe {
                let h = vld1q_u16(chunk.as_ptr());
                vst1q_f32(got.as_mut_ptr(), f16x4_to_f32(vget_low_u16(h)));
                vst1q_f32(got.as_mut_ptr().add(4), f16x4_high_to_f32(h));
            }
            for (j, (&h, &g)) in chunk.iter().zip(&got).enumerate() {
                let want = f16::from_bits(h).to_f32();
                // SAFETY: as above.
                let one = unsafe { f16_to_f32(h) };
                for (what, v) in [("fcvtl", g), ("fcvt", one)] {
                    assert!(
                        v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()),
                        "{what} {:#06x} (chunk {c} lane {j}): {v} vs {want}",
                        h
                    );
                }
            }
        }
    }
}

/// `h = gelu(gate) * up`, four at a time through [`exp`]: the AVX2 path's formula
/// (`g / (1 + e^-2u)`).
///
/// # Safety
/// None beyond NEON; the three slices have equal lengths.
pub unsafe fn gelu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    #[inline(always)]
    unsafe fn four(g: float32x4_t, u: float32x4_t) -> float32x4_t {
        let one = vdupq_n_f32(1.0);
        let inner = vfmaq_f32(one, vdupq_n_f32(super::GELU_COEF_A), vmulq_f32(g, g));
        let z = vmulq_f32(
            vdupq_n_f32(-2.0 * super::SQRT_2_OVER_PI),
            vmulq_f32(g, inner),
        );
        vmulq_f32(vdivq_f32(g, vaddq_f32(one, exp(z))), u)
    }
    lanes4!(gate, up, h, four);
}

/// `scalar::sum_squares`, the sixteen f64 lanes as eight registers (lanes 2k and 2k + 1 in
/// register k), the tail through a zero-padded copy; the same bits.
///
/// # Safety
/// `x` holds `n` values, `add` too when not null; with a null `add`, `x` is only read.
pub(crate) unsafe fn sum_squares(x: *mut f32, add: *const f32, n: usize) -> f64 {
    #[inline(always)]
    unsafe fn run<const ADD: bool>(x: *mut f32, add: *const f32, n: usize) -> f64 {
        #[inline(always)]
        unsafe fn step<const ADD: bool>(x: *mut f32, add: *const f32, acc: &mut [float64x2_t; 8]) {
            for q in 0..4 {
                let mut v = vld1q_f32(x.add(4 * q));
                if ADD {
                    v = vaddq_f32(v, vld1q_f32(add.add(4 * q)));
                    vst1q_f32(x.add(4 * q), v);
                }
                let sq = vmulq_f32(v, v);
                acc[2 * q] = vaddq_f64(acc[2 * q], vcvt_f64_f32(vget_low_f32(sq)));
                acc[2 * q + 1] = vaddq_f64(acc[2 * q + 1], vcvt_high_f64_f32(sq));
            }
        }
        let mut acc = [vdupq_n_f64(0.0); 8];
        let mut i = 0;
        while i + 16 <= n {
            step::<ADD>(x.add(i), if ADD { add.add(i) } else { add }, &mut acc);
            i += 16;
        }
        if i < n {
            padded16!(ADD, x.add(i), add.add(i), n - i, |xb, ab| step::<ADD>(
                xb, ab, &mut acc
            ));
        }
        // Lanes j + 8 onto j (registers k + 4 onto k), j + 4 onto j, j + 2 onto j, then the
        // last two.
        let q: [float64x2_t; 4] =
            simd_array!(4, vdupq_n_f64(0.0), |k| vaddq_f64(acc[k], acc[k + 4]));
        let r = vaddq_f64(vaddq_f64(q[0], q[2]), vaddq_f64(q[1], q[3]));
        vpaddd_f64(r)
    }
    if add.is_null() {
        run::<false>(x, add, n)
    } else {
        run::<true>(x, add, n)
    }
}

/// `out = x · s · w`, four at a time (`scalar::scale`'s bits).
///
/// # Safety
/// `x`, `w` and `out` hold `n` values; `out` is either `x` or disjoint from both.
pub(crate) unsafe fn scale(x: *const f32, s: f32, w: *const f32, out: *mut f32, n: usize) {
    let sv = vdupq_n_f32(s);
    let mut i = 0;
    while i + 4 <= n {
        let v = vmulq_f32(vld1q_f32(x.add(i)), sv);
        vst1q_f32(out.add(i), vmulq_f32(v, vld1q_f32(w.add(i))));
        i += 4;
    }
    super::scalar::scale(x.add(i), s, w.add(i), out.add(i), n - i);
}
