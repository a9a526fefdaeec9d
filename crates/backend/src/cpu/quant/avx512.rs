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

/// Blocks `0..nb` of one activation row quantized as `quantize_row` does, 16 elements per
/// register; the same IEEE operations per element (max |x|, d = amax / 127, t = x · (1 / d),
/// trunc(t ± 0.5)) and exact integer sums, so the output is bit-identical to the scalar loop.
///
/// # Safety
/// The CPU must support AVX-512 F/BW; `xr` holds `nb * 32` floats, `qr` `nb * 32` bytes,
/// `dr` `nb * 8` and `sr` `2 nb` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_blocks(
    xr: &[f32],
    nb: usize,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [f32],
) {
    assert!(xr.len() >= nb * QK && qr.len() >= nb * QK && dr.len() >= nb * 8 && sr.len() >= 2 * nb);
    let sign = _mm512_set1_ps(-0.0);
    let half = _mm512_set1_ps(0.5);
    for b in 0..nb {
        let x0 = _mm512_loadu_ps(xr.as_ptr().add(b * QK));
        let x1 = _mm512_loadu_ps(xr.as_ptr().add(b * QK + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q = [x0, x1].map(|v| {
            let t = _mm512_mul_ps(v, id);
            let r = _mm512_add_ps(t, _mm512_or_ps(_mm512_and_ps(t, sign), half));
            _mm512_cvttps_epi32(r)
        });
        _mm_storeu_si128(qr.as_mut_ptr().add(b * QK) as _, _mm512_cvtepi32_epi8(q[0]));
        _mm_storeu_si128(
            qr.as_mut_ptr().add(b * QK + 16) as _,
            _mm512_cvtepi32_epi8(q[1]),
        );
        _mm256_storeu_ps(dr.as_mut_ptr().add(b * 8), _mm256_set1_ps(d));
        sr[2 * b] = d * _mm512_reduce_add_epi32(q[0]) as f32;
        sr[2 * b + 1] = d * _mm512_reduce_add_epi32(q[1]) as f32;
    }
}
