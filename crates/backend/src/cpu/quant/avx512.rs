//! AVX-512 VNNI quantized kernel (x86-64): two blocks of 32 per 512-bit register, `vpdpbusd`
//! (unsigned weight codes × signed activations) into i32 lanes, scaled and summed in f32.
//! Callers guarantee the CPU has AVX-512 F/BW/VL/VNNI.

use std::arch::x86_64::*;

use super::{Acts, Geom, KernelArgs, QMatrix, NR, QK};
use crate::cpu::SendPtr;

/// Rows of x per register tile: MR × NR accumulators plus NR weight and NR scale registers fit
/// in the 32 zmm registers.
const MR: usize = 4;

/// An MR × NR tile: rows i0..i0+MR of x against all NR tile rows of w.
// Register tiles index accumulators by (row of x, row of w) on purpose.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const M: usize>(a: &KernelArgs, i0: usize) {
    let g = a.g;
    let t = a.tile;
    let (xs, ds) = (g.nbp * QK, g.nbp * 8);
    let qx: [*const i8; M] = std::array::from_fn(|i| a.acts.qx.as_ptr().add((i0 + i) * xs));
    let dx: [*const f32; M] = std::array::from_fn(|i| a.acts.dx.as_ptr().add((i0 + i) * ds));
    let uw: [*const u8; NR] = std::array::from_fn(|r| t.uw.as_ptr().add(r * xs));
    let dw: [*const f32; NR] = std::array::from_fn(|r| t.dw.as_ptr().add(r * ds));
    let mut acc = [[_mm512_setzero_ps(); NR]; M];
    // Hot loop: per pair of blocks, NR weight loads reused by M rows of x.
    for b2 in 0..g.nbp / 2 {
        let wv: [__m512i; NR] =
            std::array::from_fn(|r| _mm512_loadu_si512(uw[r].add(64 * b2) as _));
        let wd: [__m512; NR] = std::array::from_fn(|r| _mm512_loadu_ps(dw[r].add(16 * b2)));
        for i in 0..M {
            let xv = _mm512_loadu_si512(qx[i].add(64 * b2) as _);
            let xd = _mm512_loadu_ps(dx[i].add(16 * b2));
            for r in 0..NR {
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
                acc[i][r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wd[r], xd), acc[i][r]);
            }
        }
    }
    // Offset terms: Σ_h mw[r][h] · sx[i][h], 16 half blocks per register (zero padded).
    for h in (0..g.nhp).step_by(16) {
        let mw: [__m512; NR] =
            std::array::from_fn(|r| _mm512_loadu_ps(t.mw.as_ptr().add(r * g.nhp + h)));
        for i in 0..M {
            let sx = _mm512_loadu_ps(a.acts.sx.as_ptr().add((i0 + i) * g.nhp + h));
            for r in 0..NR {
                acc[i][r] = _mm512_fmadd_ps(mw[r], sx, acc[i][r]);
            }
        }
    }
    for i in 0..M {
        for r in 0..a.nr {
            *a.y.0.add((i0 + i) * a.y_stride + a.y_col + r) = _mm512_reduce_add_ps(acc[i][r]);
        }
    }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `a.y` must point to an (n, y_stride) buffer whose
/// columns `y_col..y_col + nr` no one else touches during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn rows(a: &KernelArgs) {
    let mut i0 = 0;
    while i0 < a.n {
        let m = (a.n - i0).min(MR);
        match m {
            4 => tile::<4>(a, i0),
            3 => tile::<3>(a, i0),
            2 => tile::<2>(a, i0),
            _ => tile::<1>(a, i0),
        }
        i0 += m;
    }
}

/// A task of the small-batch path: rows `r0..r1` of `w` against all `n` rows of x, read straight
/// from the GGUF blocks (no tile). Per (row of x, row of w) it runs exactly the operations of
/// [`tile`] in the same order, so a row's result does not depend on which path or batch size
/// produced it.
pub(crate) struct DirectArgs<'a> {
    pub w: &'a QMatrix,
    pub acts: &'a Acts,
    pub n: usize,
    pub g: Geom,
    pub r0: usize,
    pub r1: usize,
    pub y: SendPtr,
    /// (NR, nhp) scratch for the half-block offsets of the rows in flight
    pub mw: &'a mut [f32],
}

/// How far ahead of the rows being multiplied the direct kernel prefetches.
const PREFETCH_ROWS: usize = 8;

/// Q4_0, Q4_1, Q8_0 as const parameters of the direct kernel.
pub(crate) const D_Q4_0: u8 = 0;
pub(crate) const D_Q4_1: u8 = 1;
pub(crate) const D_Q8_0: u8 = 2;

/// Blocks `2 b2` and `2 b2 + 1` of a row (the second absent when `two` is false: zero codes and
/// scales, as the tile's padding) as VNNI codes and lane scales; writes the blocks' half-block
/// offsets to `mw[4 b2..]`.
#[inline(always)]
unsafe fn load_pair<const TY: u8>(
    row: *const u8,
    b2: usize,
    two: bool,
    mw: *mut f32,
) -> (__m512i, __m512) {
    let bb = match TY {
        D_Q4_0 => 18,
        D_Q4_1 => 20,
        _ => 34,
    };
    let p0 = row.add(2 * b2 * bb);
    let p1 = p0.add(bb);
    let lanes = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    if TY == D_Q8_0 {
        let h0 = (p0 as *const u16).read_unaligned() as i32;
        let v0 = _mm256_loadu_si256(p0.add(2) as _);
        let (h1, v1) = if two {
            (
                (p1 as *const u16).read_unaligned() as i32,
                _mm256_loadu_si256(p1.add(2) as _),
            )
        } else {
            (0, _mm256_set1_epi8(-128))
        };
        let codes = _mm512_xor_si512(
            _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1),
            _mm512_set1_epi8(-128),
        );
        // [d0, 0, d1, 0]
        let d = _mm_cvtph_ps(_mm_set_epi32(0, 0, h1, h0));
        let off = _mm_mul_ps(_mm_set1_ps(-128.0), _mm_shuffle_ps(d, d, 0xA0));
        store_offsets(mw.add(4 * b2), off, two);
        return (
            codes,
            _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d)),
        );
    }
    let qs = if TY == D_Q4_1 { 4 } else { 2 };
    let q0 = _mm_loadu_si128(p0.add(qs) as _);
    let h0 = (p0 as *const i32).read_unaligned();
    let (q1, h1) = if two {
        (
            _mm_loadu_si128(p1.add(qs) as _),
            (p1 as *const i32).read_unaligned(),
        )
    } else {
        (_mm_setzero_si128(), 0)
    };
    let v = _mm256_set_m128i(q1, q0);
    // [q0, q1, q0 >> 4, q1 >> 4] -> [q0, q0 >> 4, q1, q1 >> 4], low nibbles
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    let codes = _mm512_and_si512(_mm512_shuffle_i64x2(z, z, 0xD8), _mm512_set1_epi8(0x0F));
    // [d0, m0, d1, m1] (m is garbage for Q4_0 and unused)
    let dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, h1, h0));
    let off = if TY == D_Q4_1 {
        _mm_shuffle_ps(dm, dm, 0xF5)
    } else {
        _mm_mul_ps(_mm_set1_ps(-8.0), _mm_shuffle_ps(dm, dm, 0xA0))
    };
    store_offsets(mw.add(4 * b2), off, two);
    (
        codes,
        _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(dm)),
    )
}

#[inline(always)]
unsafe fn store_offsets(at: *mut f32, off: __m128, two: bool) {
    if two {
        _mm_storeu_ps(at, off);
    } else {
        _mm_storel_epi64(at as _, _mm_castps_si128(off));
    }
}

/// R rows of w from `r` against the M rows of x from `i0`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn direct_tile<const TY: u8, const M: usize, const R: usize>(
    a: &mut DirectArgs,
    r: usize,
    i0: usize,
) {
    let g = a.g;
    let (xs, ds) = (g.nbp * QK, g.nbp * 8);
    let rb = a.w.row_bytes();
    let rows: [*const u8; R] = std::array::from_fn(|s| a.w.bytes().as_ptr().add((r + s) * rb));
    let mw: [*mut f32; R] = std::array::from_fn(|s| a.mw.as_mut_ptr().add(s * g.nhp));
    let qx: [*const i8; M] = std::array::from_fn(|i| a.acts.qx.as_ptr().add((i0 + i) * xs));
    let dx: [*const f32; M] = std::array::from_fn(|i| a.acts.dx.as_ptr().add((i0 + i) * ds));
    let bb = rb / g.nb;
    let mut acc = [[_mm512_setzero_ps(); R]; M];
    // Hot loop: per pair of blocks, R rows decoded in registers and reused by M rows of x.
    for b2 in 0..g.nbp / 2 {
        let two = 2 * b2 + 1 < g.nb;
        let mut wv = [_mm512_setzero_si512(); R];
        let mut wd = [_mm512_setzero_ps(); R];
        for s in 0..R {
            // The rows PREFETCH_ROWS ahead (the same task's next groups; past the matrix end a
            // prefetch is harmless): the weights stream from L3/DRAM and the loads above stall.
            _mm_prefetch::<_MM_HINT_T0>(rows[s].wrapping_add(PREFETCH_ROWS * rb + 2 * b2 * bb) as _);
            (wv[s], wd[s]) = load_pair::<TY>(rows[s], b2, two, mw[s]);
        }
        for i in 0..M {
            let xv = _mm512_loadu_si512(qx[i].add(64 * b2) as _);
            let xd = _mm512_loadu_ps(dx[i].add(16 * b2));
            for s in 0..R {
                let d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[s], xv);
                acc[i][s] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wd[s], xd), acc[i][s]);
            }
        }
    }
    for h in (0..g.nhp).step_by(16) {
        let mv: [__m512; R] = std::array::from_fn(|s| _mm512_loadu_ps(mw[s].add(h)));
        for i in 0..M {
            let sx = _mm512_loadu_ps(a.acts.sx.as_ptr().add((i0 + i) * g.nhp + h));
            for s in 0..R {
                acc[i][s] = _mm512_fmadd_ps(mv[s], sx, acc[i][s]);
            }
        }
    }
    let m = a.w.rows;
    for i in 0..M {
        for s in 0..R {
            *a.y.0.add((i0 + i) * m + r + s) = _mm512_reduce_add_ps(acc[i][s]);
        }
    }
}

#[inline(always)]
unsafe fn direct_as<const TY: u8, const M: usize>(a: &mut DirectArgs) {
    let mut r = a.r0;
    while r + NR <= a.r1 {
        direct_tile::<TY, M, NR>(a, r, 0);
        r += NR;
    }
    while r < a.r1 {
        direct_tile::<TY, M, 1>(a, r, 0);
        r += 1;
    }
}

/// The small-batch path: `a.n` (1 to 4) rows of x against rows `r0..r1` of a Q4_0, Q4_1 or Q8_0
/// matrix, decoded from its GGUF blocks in registers.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI and F16C; `a.y` must point to an (n, w.rows) buffer
/// whose columns `r0..r1` no one else touches during the call; `a.mw` holds NR · nhp floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn direct<const TY: u8>(a: &mut DirectArgs) {
    // Pad offsets (halves 2 nb..nhp) are zero, as the tile's.
    let g = a.g;
    for s in 0..NR {
        a.mw[s * g.nhp + 2 * g.nb..(s + 1) * g.nhp].fill(0.0);
    }
    match a.n {
        1 => direct_as::<TY, 1>(a),
        2 => direct_as::<TY, 2>(a),
        3 => direct_as::<TY, 3>(a),
        _ => direct_as::<TY, 4>(a),
    }
}
