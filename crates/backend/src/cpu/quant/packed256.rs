//! The packed path on 256-bit registers, over the same packed buffers as `packed.rs`: a group
//! of 16 rows is two halves of 8 rows (bytes `32h..32h + 32` of each 64-byte code register, and
//! floats `8h..8h + 8` of the scales and offsets), one row per i32 lane of a ymm register.
//! `VNNI`: AVX-VNNI `vpdpbusd` (Q4_0, Q4_1, Q8_0); otherwise AVX2 `maddubs` + `madd` (Q4 only:
//! a Q8_0 code times a byte of x can overflow `maddubs`' i16 pairs).
//!
//! Per (row of x, row of w, block) the float operations are those of `packed.rs`
//! (`acc = fma(f32(Σ uw·qx), dw·dx, acc); acc = fma(mw, sx, acc)`) and the i32 sums are exact,
//! so the result is bit-identical to the AVX-512 path and to itself at every batch size.

use std::arch::x86_64::*;

use super::packed::{code_bytes, group_block_bytes, offset_mul, PackedArgs, G};
use super::QType;
use super::QK;

/// Rows of x per tile (one group of 16 rows of w, two halves): wide codes need no unpack
/// registers, so three rows fit the 16 ymm registers; nibbles take two.
const MR_WIDE: usize = 3;
const MR_NIBBLE: usize = 2;

#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    } else {
        let ones = _mm256_set1_epi16(1);
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones))
    }
}

/// Group `gi` against the M rows of x from `i0`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const VNNI: bool, const WIDE: bool, const M: usize>(
    a: &PackedArgs,
    gi: usize,
    i0: usize,
) {
    let g = a.g;
    let (gbb, cb) = (group_block_bytes(a.w.ty, WIDE), code_bytes(a.w.ty, WIDE));
    let (mul, stored) = (offset_mul(a.w.ty), a.w.ty == QType::Q4_1);
    let base = a.packed.as_ptr().add(gi * g.nb * gbb);
    let mut qx = [std::ptr::null::<u8>(); M];
    let mut ds = [std::ptr::null::<f32>(); M];
    for i in 0..M {
        qx[i] = a.acts.qx.as_ptr().add((i0 + i) * g.nbp * QK) as *const u8;
        ds[i] = a.acts.ds.as_ptr().add((i0 + i) * g.nbp * 2);
    }
    let bx = |i: usize, at: usize| (qx[i].add(at) as *const i32).read_unaligned();
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..g.nb {
        let blk = base.add(b * gbb);
        let mut s = [[_mm256_setzero_si256(); 2]; M];
        if WIDE {
            for k in 0..8 {
                let w0 = _mm256_loadu_si256(blk.add(64 * k) as _);
                let w1 = _mm256_loadu_si256(blk.add(64 * k + 32) as _);
                for i in 0..M {
                    let xv = _mm256_set1_epi32(bx(i, b * QK + 4 * k));
                    s[i][0] = dot4::<VNNI>(s[i][0], w0, xv);
                    s[i][1] = dot4::<VNNI>(s[i][1], w1, xv);
                }
            }
        } else {
            for j in 0..4 {
                let v0 = _mm256_loadu_si256(blk.add(64 * j) as _);
                let v1 = _mm256_loadu_si256(blk.add(64 * j + 32) as _);
                let (l0, l1) = (_mm256_and_si256(v0, low), _mm256_and_si256(v1, low));
                for i in 0..M {
                    let xv = _mm256_set1_epi32(bx(i, b * QK + 4 * j));
                    s[i][0] = dot4::<VNNI>(s[i][0], l0, xv);
                    s[i][1] = dot4::<VNNI>(s[i][1], l1, xv);
                }
                let h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
                let h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
                for i in 0..M {
                    let xv = _mm256_set1_epi32(bx(i, b * QK + 16 + 4 * j));
                    s[i][0] = dot4::<VNNI>(s[i][0], h0, xv);
                    s[i][1] = dot4::<VNNI>(s[i][1], h1, xv);
                }
            }
        }
        for h in 0..2 {
            // 8 f16 scales (and Q4_1's offsets) of this half, widened (see `packed.rs`).
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(cb + 16 * h) as _));
            let mw = if stored {
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(cb + 32 + 16 * h) as _))
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(mul))
            };
            for i in 0..M {
                let xd = _mm256_set1_ps(*ds[i].add(2 * b));
                let xs = _mm256_set1_ps(*ds[i].add(2 * b + 1));
                let sc = _mm256_mul_ps(dw, xd);
                acc[i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i][h]), sc, acc[i][h]);
                acc[i][h] = _mm256_fmadd_ps(mw, xs, acc[i][h]);
            }
        }
    }
    let m = a.w.rows;
    let c0 = gi * G;
    let valid = (m - c0).min(G);
    for i in 0..M {
        let y = a.y.0.add((i0 + i) * a.y_stride + a.y_col + c0);
        if valid == G {
            _mm256_storeu_ps(y, acc[i][0]);
            _mm256_storeu_ps(y.add(8), acc[i][1]);
        } else {
            let mut tmp = [0f32; G];
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc[i][0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[i][1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), y, valid);
        }
    }
}

#[inline(always)]
unsafe fn groups<const VNNI: bool, const WIDE: bool>(a: &PackedArgs) {
    let mr = if WIDE { MR_WIDE } else { MR_NIBBLE };
    for gi in a.g0..a.g1 {
        let mut i0 = a.i0;
        while i0 < a.i1 {
            let mm = (a.i1 - i0).min(mr);
            match mm {
                3 => tile::<VNNI, WIDE, 3>(a, gi, i0),
                2 => tile::<VNNI, WIDE, 2>(a, gi, i0),
                _ => tile::<VNNI, WIDE, 1>(a, gi, i0),
            }
            i0 += mm;
        }
    }
}

/// Groups `g0..g1` against all rows of x with AVX-VNNI.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-VNNI; otherwise as [`super::packed::run`].
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn run_vnni<const WIDE: bool>(a: &PackedArgs) {
    groups::<true, WIDE>(a)
}

/// Groups `g0..g1` against all rows of x with AVX2 `maddubs` (Q4_0 and Q4_1 only).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a.w` is Q4_0 or Q4_1; otherwise as
/// [`super::packed::run`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_avx2<const WIDE: bool>(a: &PackedArgs) {
    groups::<false, WIDE>(a)
}
