//! AVX2 quantized kernel (x86-64): one block of 32 per 256-bit register, `maddubs` (unsigned
//! weight codes × signed activations, pairs into i16) then `madd` with ones into i32 lanes.
//! Q8_0 comes signed: `maddubs(|w|, sign(x, w))`, as llama.cpp does, so no i16 sum saturates.
//! Callers guarantee the CPU has AVX2 and FMA.

use std::arch::x86_64::*;

use super::{Geom, KernelArgs, QMatrix, QType, WTile, QK};
use crate::cpu::avx2::hsum;

/// Rows of x per register tile (16 ymm registers: MR × RN accumulators, RN weights, scales).
const MR: usize = 4;
/// Weight rows per register tile: the NR tile rows go through in passes of RN.
const RN: usize = 2;

// Register tiles index accumulators by (row of x, row of w) on purpose.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const M: usize, const SIGNED: bool>(a: &KernelArgs, i0: usize, r0: usize) {
    let g = a.g;
    let t = a.tile;
    let (xs, ds) = (g.nbp * QK, g.nbp * 8);
    let qx: [*const i8; M] = std::array::from_fn(|i| a.acts.qx.as_ptr().add((i0 + i) * xs));
    let dx: [*const f32; M] = std::array::from_fn(|i| a.acts.dx.as_ptr().add((i0 + i) * ds));
    let uw: [*const u8; RN] = std::array::from_fn(|r| t.uw.as_ptr().add((r0 + r) * xs));
    let dw: [*const f32; RN] = std::array::from_fn(|r| t.dw.as_ptr().add((r0 + r) * ds));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); RN]; M];
    // Hot loop: per block, RN weight loads reused by M rows of x.
    for b in 0..g.nb {
        let wv = simd_array!(RN, _mm256_setzero_si256(), |r| _mm256_loadu_si256(
            uw[r].add(32 * b) as _
        ));
        let wa = simd_array!(RN, _mm256_setzero_si256(), |r| if SIGNED {
            _mm256_abs_epi8(wv[r])
        } else {
            wv[r]
        });
        for i in 0..M {
            let xv = _mm256_loadu_si256(qx[i].add(32 * b) as _);
            let xd = _mm256_loadu_ps(dx[i].add(8 * b));
            for r in 0..RN {
                let xr = if SIGNED {
                    _mm256_sign_epi8(xv, wv[r])
                } else {
                    xv
                };
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r], xr), ones);
                let wd = _mm256_loadu_ps(dw[r].add(8 * b));
                acc[i][r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(wd, xd), acc[i][r]);
            }
        }
    }
    for h in (0..g.nhp).step_by(8) {
        for r in 0..RN {
            let mw = _mm256_loadu_ps(t.mw.as_ptr().add((r0 + r) * g.nhp + h));
            for (i, acc) in acc.iter_mut().enumerate() {
                let sx = _mm256_loadu_ps(a.acts.sx.as_ptr().add((i0 + i) * g.nhp + h));
                acc[r] = _mm256_fmadd_ps(mw, sx, acc[r]);
            }
        }
    }
    for i in 0..M {
        for r in 0..RN.min(a.nr.saturating_sub(r0)) {
            *a.y.0.add((i0 + i) * a.y_stride + a.y_col + r0 + r) = hsum(acc[i][r]);
        }
    }
}

#[inline(always)]
unsafe fn rows_as<const SIGNED: bool>(a: &KernelArgs) {
    for r0 in (0..a.nr).step_by(RN) {
        let mut i0 = 0;
        while i0 < a.n {
            let m = (a.n - i0).min(MR);
            match m {
                4 => tile::<4, SIGNED>(a, i0, r0),
                3 => tile::<3, SIGNED>(a, i0, r0),
                2 => tile::<2, SIGNED>(a, i0, r0),
                _ => tile::<1, SIGNED>(a, i0, r0),
            }
            i0 += m;
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a.y` must point to an (n, y_stride) buffer whose columns
/// `y_col..y_col + nr` no one else touches during the call.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows(a: &KernelArgs) {
    if a.tile.signed {
        rows_as::<true>(a)
    } else {
        rows_as::<false>(a)
    }
}

/// Unpacks row `r` of a Q4_0, Q4_1 or Q8_0 matrix into slot `s` of the tile (the same bytes
/// `expand::row` writes, so results do not change); false for other types.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
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
    let uw = tile.uw.as_mut_ptr().add(s * g.nbp * QK);
    let dw = tile.dw.as_mut_ptr().add(s * g.nbp * 8);
    let mw = tile.mw.as_mut_ptr().add(s * g.nhp);
    let low = _mm_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(if tile.signed { 0 } else { -128 });
    for b in 0..g.nb {
        let blk = src.as_ptr().add(b * bb);
        // [d, m] (or [d, garbage]) as f32; the block holds at least 4 bytes before the codes.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
        let d = _mm_cvtss_f32(dm);
        let off = if w.ty == QType::Q8_0 {
            if tile.signed {
                0.0
            } else {
                -128.0 * d
            }
        } else if has_m {
            _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1))
        } else {
            -8.0 * d
        };
        if w.ty == QType::Q8_0 {
            let q = _mm256_loadu_si256(blk.add(qs_at) as _);
            _mm256_storeu_si256(uw.add(32 * b) as _, _mm256_xor_si256(q, flip));
        } else {
            let q = _mm_loadu_si128(blk.add(qs_at) as _);
            _mm_storeu_si128(uw.add(32 * b) as _, _mm_and_si128(q, low));
            _mm_storeu_si128(
                uw.add(32 * b + 16) as _,
                _mm_and_si128(_mm_srli_epi16(q, 4), low),
            );
        }
        _mm256_storeu_ps(dw.add(8 * b), _mm256_set1_ps(d));
        *mw.add(2 * b) = off;
        *mw.add(2 * b + 1) = off;
    }
    tile.uw[(s * g.nbp + g.nb) * QK..(s + 1) * g.nbp * QK].fill(0);
    tile.dw[(s * g.nbp + g.nb) * 8..(s + 1) * g.nbp * 8].fill(0.0);
    tile.mw[s * g.nhp + 2 * g.nb..(s + 1) * g.nhp].fill(0.0);
    true
}

/// Horizontal sum of 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
    _mm_cvtsi128_si32(s)
}

/// Blocks `0..nb` of one activation row quantized as `quantize_row`'s scalar loop does, with the
/// same IEEE operations per element (max |x|, d = amax / 127, t = x · (1 / d), trunc(t ± 0.5),
/// saturated to i8) and exact integer sums: bit-identical output.
///
/// # Safety
/// The CPU must support AVX2; `xr` holds `nb * 32` floats, `qr` `nb * 32` bytes, `dr` `nb * 8`
/// and `sr` `2 nb` floats.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_blocks(
    xr: &[f32],
    nb: usize,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [f32],
) {
    assert!(xr.len() >= nb * QK && qr.len() >= nb * QK && dr.len() >= nb * 8 && sr.len() >= 2 * nb);
    let sign = _mm256_set1_epi32(i32::MIN);
    let abs = _mm256_set1_epi32(i32::MAX);
    let half = _mm256_castps_si256(_mm256_set1_ps(0.5));
    // packs_epi32 then packs_epi16 interleave 128-bit lanes; this restores element order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let at = xr.as_ptr().add(b * QK);
        let x = simd_array!(4, _mm256_setzero_ps(), |k| _mm256_loadu_ps(at.add(8 * k)));
        let mut m = _mm256_setzero_ps();
        for v in x {
            m = _mm256_max_ps(
                m,
                _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), abs)),
            );
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0x55>(m, m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for (qv, v) in q.iter_mut().zip(x) {
            let t = _mm256_mul_ps(v, id);
            let r = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(t), sign), half);
            *qv = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_castsi256_ps(r)));
        }
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        _mm256_storeu_si256(
            qr.as_mut_ptr().add(b * QK) as _,
            _mm256_permutevar8x32_epi32(p, order),
        );
        _mm256_storeu_ps(dr.as_mut_ptr().add(b * 8), _mm256_set1_ps(d));
        sr[2 * b] = d * hsum_i32(_mm256_add_epi32(q[0], q[1])) as f32;
        sr[2 * b + 1] = d * hsum_i32(_mm256_add_epi32(q[2], q[3])) as f32;
    }
}
