//! NEON quantized kernel (aarch64): a block of 32 is two 16-byte registers of weight codes
//! against two of activations, reduced to four i32 lanes of 4 elements each (the tile's lane
//! scales); with dotprod by two `sdot`, without by `smull`/`smlal` and pairwise adds into the same
//! lanes, so `Neon` and `NeonDot` give bit-identical results. Every code fits an i8 (Q8_0 stays
//! signed, the rest are at most 63), and a pair of products at most 2·128·127, inside an i16.
//!
//! Per block and (row of x `i`, row of w `r`) the float work is one conversion and one fused
//! multiply-add: `acc = fma(f32(lanes), dw[r][b]·dx[i][b], acc)`, the scale product taken for
//! four rows of w at once. Q6_K, whose two halves of a block have their own scales, keeps the
//! halves apart (two of each). The result of a row does not depend on the tile it ran in.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Geom, KernelArgs, QMatrix, QType, WTile, QK};
use crate::cpu::neon::f16_to_f32;

/// Rows of x per register tile: 3 × 4 accumulators, 8 weight registers, and room for x and
/// the scales in 32 registers (4 rows spill).
const MR: usize = 3;
/// Weight rows per register tile: all of the tile's rows at once.
const RN: usize = super::NR;

/// `acc` plus, per i32 lane `k`, the products of bytes `4k..4k + 4` of `w` and `x` (`sdot`: the
/// intrinsic is not stable Rust). Callers must run with dotprod.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) r, in(vreg) w, in(vreg) x,
        options(pure, nomem, nostack, preserves_flags));
    r
}

/// Lane `k`: Σ over bytes `4k..4k + 4` of `w0·x0 + w1·x1` (one block, both halves summed).
#[inline(always)]
unsafe fn dot_block<const DOT: bool>(
    w0: int8x16_t,
    w1: int8x16_t,
    x0: int8x16_t,
    x1: int8x16_t,
) -> int32x4_t {
    if DOT {
        sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
    } else {
        // i16 lane j: w0[j]·x0[j] + w1[j]·x1[j] (bytes 0..8, then 8..16); pairs of those into
        // i32, and pairs again: bytes 4k..4k + 4 in lane k, as sdot.
        let lo = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(x0)),
            vget_low_s8(w1),
            vget_low_s8(x1),
        );
        let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
        vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

/// Lane `k`: Σ over bytes `4k..4k + 4` of `w·x` (half a block).
#[inline(always)]
unsafe fn dot_half<const DOT: bool>(w: int8x16_t, x: int8x16_t) -> int32x4_t {
    if DOT {
        sdot(vdupq_n_s32(0), w, x)
    } else {
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
        let hi = vmull_high_s8(w, x);
        vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

/// `acc + a · s[r]`, `r` a loop index that unrolling makes constant.
#[inline(always)]
unsafe fn fma_lane(acc: float32x4_t, a: float32x4_t, s: float32x4_t, r: usize) -> float32x4_t {
    match r {
        0 => vfmaq_laneq_f32::<0>(acc, a, s),
        1 => vfmaq_laneq_f32::<1>(acc, a, s),
        2 => vfmaq_laneq_f32::<2>(acc, a, s),
        _ => vfmaq_laneq_f32::<3>(acc, a, s),
    }
}

/// M rows of x from `i0` against the tile's RN rows; `HALVES`: each half block has its own
/// scale (Q6_K), else one scale per block (lane 0's).
// Register tiles index accumulators by (row of x, row of w) on purpose.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const M: usize, const DOT: bool, const HALVES: bool>(a: &KernelArgs, i0: usize) {
    let g = a.g;
    let t = a.tile;
    let (xs, ds) = (g.nbp * QK, g.nbp * 8);
    let qx = simd_array!(M, std::ptr::null(), |i| a
        .acts
        .qx
        .as_ptr()
        .add((i0 + i) * xs));
    let dx = simd_array!(M, std::ptr::null(), |i| a
        .acts
        .dx
        .as_ptr()
        .add((i0 + i) * ds));
    let uw = simd_array!(RN, std::ptr::null(), |r| t.uw.as_ptr().add(r * xs)
        as *const i8);
    let dw = simd_array!(RN, std::ptr::null(), |r| t.dw.as_ptr().add(r * ds));
    let mut acc = [[vdupq_n_f32(0.0); RN]; M];
    // Hot loop: per block, RN weight loads reused by M rows of x.
    for b in 0..g.nb {
        let w0 = simd_array!(RN, vdupq_n_s8(0), |r| vld1q_s8(uw[r].add(32 * b)));
        let w1 = simd_array!(RN, vdupq_n_s8(0), |r| vld1q_s8(uw[r].add(32 * b + 16)));
        // The RN rows' scales, one lane each (of the second half too, for Q6_K).
        let mut d0 = vdupq_n_f32(0.0);
        let mut d1 = vdupq_n_f32(0.0);
        for r in 0..RN {
            d0 = vsetq_lane_f32_any(d0, *dw[r].add(8 * b), r);
            if HALVES {
                d1 = vsetq_lane_f32_any(d1, *dw[r].add(8 * b + 4), r);
            }
        }
        for i in 0..M {
            let x0 = vld1q_s8(qx[i].add(32 * b));
            let x1 = vld1q_s8(qx[i].add(32 * b + 16));
            let xd = *dx[i].add(8 * b);
            let s0 = vmulq_n_f32(d0, xd);
            if HALVES {
                let s1 = vmulq_n_f32(d1, xd);
                for r in 0..RN {
                    let l0 = vcvtq_f32_s32(dot_half::<DOT>(w0[r], x0));
                    let l1 = vcvtq_f32_s32(dot_half::<DOT>(w1[r], x1));
                    acc[i][r] = fma_lane(fma_lane(acc[i][r], l0, s0, r), l1, s1, r);
                }
            } else {
                for r in 0..RN {
                    let l = vcvtq_f32_s32(dot_block::<DOT>(w0[r], w1[r], x0, x1));
                    acc[i][r] = fma_lane(acc[i][r], l, s0, r);
                }
            }
        }
    }
    // The offset term, Σ_h mw[r][h] · sx[i][h], four half blocks at a time (nhp pads to 16).
    for h in (0..g.nhp).step_by(4) {
        for r in 0..RN {
            let mw = vld1q_f32(t.mw.as_ptr().add(r * g.nhp + h));
            for i in 0..M {
                let sx = vld1q_f32(a.acts.sx.as_ptr().add((i0 + i) * g.nhp + h));
                acc[i][r] = vfmaq_f32(acc[i][r], mw, sx);
            }
        }
    }
    for i in 0..M {
        for r in 0..a.nr {
            *a.y.0.add((i0 + i) * a.y_stride + a.y_col + r) = vaddvq_f32(acc[i][r]);
        }
    }
}

/// `v` with lane `r` set to `x`, `r` a loop index that unrolling makes constant.
#[inline(always)]
unsafe fn vsetq_lane_f32_any(v: float32x4_t, x: f32, r: usize) -> float32x4_t {
    match r {
        0 => vsetq_lane_f32::<0>(x, v),
        1 => vsetq_lane_f32::<1>(x, v),
        2 => vsetq_lane_f32::<2>(x, v),
        _ => vsetq_lane_f32::<3>(x, v),
    }
}

#[inline(always)]
unsafe fn rows_as<const DOT: bool, const HALVES: bool>(a: &KernelArgs) {
    let mut i0 = 0;
    while i0 < a.n {
        let m = (a.n - i0).min(MR);
        match m {
            3 => tile::<3, DOT, HALVES>(a, i0),
            2 => tile::<2, DOT, HALVES>(a, i0),
            _ => tile::<1, DOT, HALVES>(a, i0),
        }
        i0 += m;
    }
}

/// The kernel without dotprod; `ty` is the tile's weight format.
///
/// # Safety
/// `a.y` must point to an (n, y_stride) buffer whose columns `y_col..y_col + nr` no one else
/// touches during the call; the tile holds NR rows.
pub(super) unsafe fn rows(a: &KernelArgs, ty: QType) {
    check(a);
    if ty == QType::Q6_K {
        rows_as::<false, true>(a)
    } else {
        rows_as::<false, false>(a)
    }
}

/// The kernel with `sdot`; `ty` is the tile's weight format.
///
/// # Safety
/// As [`rows`], and the CPU must support dotprod.
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn rows_dot(a: &KernelArgs, ty: QType) {
    check(a);
    if ty == QType::Q6_K {
        rows_as::<true, true>(a)
    } else {
        rows_as::<true, false>(a)
    }
}

/// The buffer sizes the kernel's unchecked reads rely on.
fn check(a: &KernelArgs) {
    let (g, t) = (a.g, a.tile);
    assert!(
        t.uw.len() >= RN * g.nbp * QK
            && t.dw.len() >= RN * g.nbp * 8
            && t.mw.len() >= RN * g.nhp
            && a.acts.qx.len() >= a.n * g.nbp * QK
            && a.acts.dx.len() >= a.n * g.nbp * 8
            && a.acts.sx.len() >= a.n * g.nhp
            && a.nr <= RN
            && g.nhp.is_multiple_of(4),
        "quantized kernel: buffer sizes"
    );
}

/// Unpacks row `r` of a Q4_0, Q4_1 or Q8_0 matrix into slot `s` of the tile (the same bytes
/// `expand::row` writes, so results do not change); false for other types.
///
/// # Safety
/// None beyond NEON, which every aarch64 CPU has.
pub(super) unsafe fn expand_row(
    w: &QMatrix,
    r: usize,
    g: Geom,
    tile: &mut WTile,
    s: usize,
) -> bool {
    let (qs_at, has_m) = match w.ty {
        QType::Q4_0 => (2, false),
        QType::Q4_1 => (4, true),
        QType::Q8_0 => (2, false),
        _ => return false,
    };
    let src = w.row(r);
    let bb = w.ty.block_bytes();
    assert!(src.len() >= g.nb * bb && tile.uw.len() >= (s + 1) * g.nbp * QK);
    assert!(tile.dw.len() >= (s + 1) * g.nbp * 8 && tile.mw.len() >= (s + 1) * g.nhp);
    let uw = tile.uw.as_mut_ptr().add(s * g.nbp * QK);
    let dw = tile.dw.as_mut_ptr().add(s * g.nbp * 8);
    let mw = tile.mw.as_mut_ptr().add(s * g.nhp);
    let low = vdupq_n_u8(0x0F);
    let flip = vdupq_n_u8(if tile.signed { 0 } else { 0x80 });
    for b in 0..g.nb {
        let blk = src.as_ptr().add(b * bb);
        let d = f16_to_f32((blk as *const u16).read_unaligned());
        let off = if w.ty == QType::Q8_0 {
            if tile.signed {
                0.0
            } else {
                -128.0 * d
            }
        } else if has_m {
            f16_to_f32((blk.add(2) as *const u16).read_unaligned())
        } else {
            -8.0 * d
        };
        if w.ty == QType::Q8_0 {
            for h in [0, 16] {
                let q = vld1q_u8(blk.add(qs_at + h));
                vst1q_u8(uw.add(32 * b + h), veorq_u8(q, flip));
            }
        } else {
            let q = vld1q_u8(blk.add(qs_at));
            vst1q_u8(uw.add(32 * b), vandq_u8(q, low));
            vst1q_u8(uw.add(32 * b + 16), vshrq_n_u8::<4>(q));
        }
        let dv = vdupq_n_f32(d);
        vst1q_f32(dw.add(8 * b), dv);
        vst1q_f32(dw.add(8 * b + 4), dv);
        *mw.add(2 * b) = off;
        *mw.add(2 * b + 1) = off;
    }
    tile.uw[(s * g.nbp + g.nb) * QK..(s + 1) * g.nbp * QK].fill(0);
    tile.dw[(s * g.nbp + g.nb) * 8..(s + 1) * g.nbp * 8].fill(0.0);
    tile.mw[s * g.nhp + 2 * g.nb..(s + 1) * g.nhp].fill(0.0);
    true
}

/// Blocks `0..nb` of one activation row quantized as `quantize_row`'s scalar loop does, with the
/// same IEEE operations per element (max |x| ignoring NaN as `f32::max`, d = amax / 127,
/// t = x · (1 / d), trunc(t ± 0.5) saturated to i8) and exact integer sums: bit-identical output.
///
/// # Safety
/// None beyond NEON; `xr` holds `nb * 32` floats, `qr` `nb * 32` bytes, `dr` `nb * 8` and `sr`
/// `2 nb` floats (checked).
pub(super) unsafe fn quantize_blocks(
    xr: &[f32],
    nb: usize,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [f32],
) {
    assert!(xr.len() >= nb * QK && qr.len() >= nb * QK && dr.len() >= nb * 8 && sr.len() >= 2 * nb);
    let sign = vdupq_n_u32(0x8000_0000);
    let half = vreinterpretq_u32_f32(vdupq_n_f32(0.5));
    for b in 0..nb {
        let at = xr.as_ptr().add(b * QK);
        let x = simd_array!(8, vdupq_n_f32(0.0), |k| vld1q_f32(at.add(4 * k)));
        // maxNum, as f32::max: a NaN lane loses to the running max (which starts at 0).
        let mut m = vdupq_n_f32(0.0);
        for v in x {
            m = vmaxnmq_f32(m, vabsq_f32(v));
        }
        let d = vmaxnmvq_f32(m) / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q = simd_array!(8, vdupq_n_s32(0), |k| {
            let t = vmulq_n_f32(x[k], id);
            let r = vorrq_u32(vandq_u32(vreinterpretq_u32_f32(t), sign), half);
            // Truncating, saturating conversion (NaN to 0), as `as i32`.
            vcvtq_s32_f32(vaddq_f32(t, vreinterpretq_f32_u32(r)))
        });
        // Saturating narrows: i32 -> i16 -> i8 clamps as `as i8` does.
        let h = simd_array!(4, vdupq_n_s16(0), |k| vqmovn_high_s32(
            vqmovn_s32(q[2 * k]),
            q[2 * k + 1]
        ));
        let lo = vqmovn_high_s16(vqmovn_s16(h[0]), h[1]);
        let hi = vqmovn_high_s16(vqmovn_s16(h[2]), h[3]);
        vst1q_s8(qr.as_mut_ptr().add(b * QK), lo);
        vst1q_s8(qr.as_mut_ptr().add(b * QK + 16), hi);
        let dv = vdupq_n_f32(d);
        vst1q_f32(dr.as_mut_ptr().add(b * 8), dv);
        vst1q_f32(dr.as_mut_ptr().add(b * 8 + 4), dv);
        sr[2 * b] = d * vaddlvq_s8(lo) as f32;
        sr[2 * b + 1] = d * vaddlvq_s8(hi) as f32;
    }
}
