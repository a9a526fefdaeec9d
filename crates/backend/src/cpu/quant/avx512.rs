//! AVX-512 VNNI quantized kernel (x86-64): two blocks of 32 per 512-bit register, `vpdpbusd`
//! (unsigned weight codes × signed activations) into i32 lanes, scaled and summed in f32.
//! Callers guarantee the CPU has AVX-512 F/BW/VL/VNNI.

use std::arch::x86_64::*;

use super::{KernelArgs, NR, QK};

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
        let wv = simd_array!(NR, _mm512_setzero_si512(), |r| _mm512_loadu_si512(
            uw[r].add(64 * b2) as _
        ));
        let wd = simd_array!(NR, _mm512_setzero_ps(), |r| _mm512_loadu_ps(
            dw[r].add(16 * b2)
        ));
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
        let mw = simd_array!(NR, _mm512_setzero_ps(), |r| _mm512_loadu_ps(
            t.mw.as_ptr().add(r * g.nhp + h)
        ));
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

/// Lane `j` of the result is the largest lane of `v[j]`: a transposing tree of 15 maxima.
#[inline(always)]
unsafe fn hmax16(v: [__m512; 16]) -> __m512 {
    // 128-bit lanes [a0 a1 b0 b1] vs [a2 a3 b2 b3]: a's 16 values to lanes 0-1, b's to 2-3.
    let mut t = [_mm512_setzero_ps(); 8];
    for (k, t) in t.iter_mut().enumerate() {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        *t = _mm512_max_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        );
    }
    // [a0 a2 b0 b2] vs [a1 a3 b1 b3]: 128-bit lane L of u[k] holds v[4k + L] in 4 values.
    let mut u = [_mm512_setzero_ps(); 4];
    for (k, u) in u.iter_mut().enumerate() {
        let (a, b) = (t[2 * k], t[2 * k + 1]);
        *u = _mm512_max_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        );
    }
    // Within 128-bit lanes: elements 0-1 from a, 2-3 from b.
    let mut w = [_mm512_setzero_ps(); 2];
    for (k, w) in w.iter_mut().enumerate() {
        let (a, b) = (u[2 * k], u[2 * k + 1]);
        *w = _mm512_max_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
    }
    // Element e of 128-bit lane L now holds v[4e + L]; put v[j] in lane j.
    let r = _mm512_max_ps(
        _mm512_shuffle_ps::<0x88>(w[0], w[1]),
        _mm512_shuffle_ps::<0xDD>(w[0], w[1]),
    );
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(idx, r)
}

/// Blocks `0..nb` of one activation row quantized as `quantize_row` does; the same IEEE
/// operations per element (max |x|, d = amax / 127, t = x · (1 / d), trunc(t ± 0.5)) and exact
/// integer sums, so the output is bit-identical to the scalar loop. The scales of 16 blocks at
/// a time come from one transposing max tree and two vector divisions.
///
/// Writes `qr`, `ds` (per block `[d, d·s0 + d·s1]`) and, when `FULL`, `dr` and `sr` (the tiled
/// kernels' forms; the packed kernel reads only `qr` and `ds`).
///
/// # Safety
/// The CPU must support AVX-512 F/BW; `xr` holds `nb * 32` floats, `qr` `nb * 32` bytes, `ds`
/// `2 nb` floats, and when `FULL` `dr` `nb * 8` and `sr` `2 nb` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_blocks<const FULL: bool>(
    xr: &[f32],
    nb: usize,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [f32],
    ds: &mut [f32],
) {
    assert!(xr.len() >= nb * QK && qr.len() >= nb * QK && ds.len() >= 2 * nb);
    assert!(!FULL || (dr.len() >= nb * 8 && sr.len() >= 2 * nb));
    let sign = _mm512_set1_epi32(i32::MIN);
    let half = _mm512_castps_si512(_mm512_set1_ps(0.5));
    let (mut d, mut id) = ([0f32; 16], [0f32; 16]);
    // No closures over intrinsics here (`array::from_fn`, `map`): see `simd_array!`.
    for b0 in (0..nb).step_by(16) {
        let m = (nb - b0).min(16);
        let mut amax = [_mm512_setzero_ps(); 16];
        for (j, a) in amax.iter_mut().enumerate().take(m) {
            let at = xr.as_ptr().add((b0 + j) * QK);
            *a = _mm512_max_ps(
                _mm512_abs_ps(_mm512_loadu_ps(at)),
                _mm512_abs_ps(_mm512_loadu_ps(at.add(16))),
            );
        }
        let dv = _mm512_div_ps(hmax16(amax), _mm512_set1_ps(127.0));
        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(dv, _mm512_setzero_ps());
        let iv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(1.0), dv);
        _mm512_storeu_ps(d.as_mut_ptr(), dv);
        _mm512_storeu_ps(id.as_mut_ptr(), iv);
        for j in 0..m {
            let b = b0 + j;
            let at = xr.as_ptr().add(b * QK);
            let inv = _mm512_set1_ps(id[j]);
            let t0 = _mm512_mul_ps(_mm512_loadu_ps(at), inv);
            let t1 = _mm512_mul_ps(_mm512_loadu_ps(at.add(16)), inv);
            // t ± 0.5 with t's sign (integer and/or: the float forms need AVX-512 DQ).
            let r0 = _mm512_add_ps(
                t0,
                _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_and_si512(_mm512_castps_si512(t0), sign),
                    half,
                )),
            );
            let r1 = _mm512_add_ps(
                t1,
                _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_and_si512(_mm512_castps_si512(t1), sign),
                    half,
                )),
            );
            let (q0, q1) = (_mm512_cvttps_epi32(r0), _mm512_cvttps_epi32(r1));
            _mm_storeu_si128(qr.as_mut_ptr().add(b * QK) as _, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(
                qr.as_mut_ptr().add(b * QK + 16) as _,
                _mm512_cvtepi32_epi8(q1),
            );

            // Both halves' sums in one tree: 128-bit lanes [q0 q0 q1 q1] after the first add.
            let c = _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0x44>(q0, q1),
                _mm512_shuffle_i32x4::<0xEE>(q0, q1),
            );
            let c = _mm512_add_epi32(c, _mm512_shuffle_i32x4::<0xB1>(c, c));
            let c = _mm512_add_epi32(c, _mm512_shuffle_epi32::<0x4E>(c));
            let c = _mm512_add_epi32(c, _mm512_shuffle_epi32::<0xB1>(c));
            let s0 = _mm512_cvtsi512_si32(c);
            let s1 = _mm_cvtsi128_si32(_mm512_extracti32x4_epi32::<2>(c));
            let (sx0, sx1) = (d[j] * s0 as f32, d[j] * s1 as f32);
            if FULL {
                _mm256_storeu_ps(dr.as_mut_ptr().add(b * 8), _mm256_set1_ps(d[j]));
                *sr.get_unchecked_mut(2 * b) = sx0;
                *sr.get_unchecked_mut(2 * b + 1) = sx1;
            }
            *ds.get_unchecked_mut(2 * b) = d[j];
            *ds.get_unchecked_mut(2 * b + 1) = sx0 + sx1;
        }
    }
}
