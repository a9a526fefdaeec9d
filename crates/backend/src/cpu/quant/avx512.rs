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
/// integer sums, so the output is bit-identical to the scalar loop.
///
/// Sixteen blocks at a time: their scales from one transposing max tree and two vector
/// divisions; each pair of blocks packed to bytes with two saturating packs and a dword
/// permute (no `vpmovdb`, two uops each); the half-block sums from one `vpsadbw` per pair
/// (bytes biased by 128) and one transposing add tree for all sixteen.
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
    let flip = _mm512_set1_epi8(i8::MIN);
    // Dword c·4 + L of the output from dword L·4 + c of the packs (c: which of the 4 vectors).
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    // No closures over intrinsics in the loops below (`array::from_fn`, `map`): see `simd_array!`.
    for b0 in (0..nb).step_by(16) {
        let m = (nb - b0).min(16);
        let x = xr.as_ptr().add(b0 * QK);
        let mut amax = [_mm512_setzero_ps(); 16];
        for (j, a) in amax.iter_mut().enumerate().take(m) {
            *a = _mm512_max_ps(
                _mm512_abs_ps(_mm512_loadu_ps(x.add(j * QK))),
                _mm512_abs_ps(_mm512_loadu_ps(x.add(j * QK + 16))),
            );
        }
        let dv = _mm512_div_ps(hmax16(amax), _mm512_set1_ps(127.0));
        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(dv, _mm512_setzero_ps());
        let iv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(1.0), dv);
        // Per pair of blocks: u64 lane k of sad[p] = Σ (q + 128) over bytes 8k..8k+8 of the pair.
        let mut sad = [_mm512_setzero_si512(); 8];
        for (p, sad) in sad.iter_mut().enumerate().take(m.div_ceil(2)) {
            let mut q = [_mm512_setzero_si512(); 4];
            for e in 0..2 {
                let j = 2 * p + e;
                if j < m {
                    let inv = _mm512_permutexvar_ps(_mm512_set1_epi32(j as i32), iv);
                    q[2 * e] = round(
                        _mm512_mul_ps(_mm512_loadu_ps(x.add(j * QK)), inv),
                        sign,
                        half,
                    );
                    q[2 * e + 1] = round(
                        _mm512_mul_ps(_mm512_loadu_ps(x.add(j * QK + 16)), inv),
                        sign,
                        half,
                    );
                }
            }
            // |q| <= 127: the saturating packs are exact.
            let c = _mm512_packs_epi16(
                _mm512_packs_epi32(q[0], q[1]),
                _mm512_packs_epi32(q[2], q[3]),
            );
            let c = _mm512_permutexvar_epi32(order, c);
            let dst = qr.as_mut_ptr().add((b0 + 2 * p) * QK);
            if 2 * p + 1 < m {
                _mm512_storeu_si512(dst as _, c);
            } else {
                _mm256_storeu_si256(dst as _, _mm512_castsi512_si256(c));
            }
            *sad = _mm512_sad_epu8(_mm512_xor_si512(c, flip), _mm512_setzero_si512());
        }
        let (s0, s1) = half_sums(&sad);
        let bias = _mm512_set1_epi32(16 * 128);
        let sx0 = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_sub_epi32(s0, bias)));
        let sx1 = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_sub_epi32(s1, bias)));
        store_pairs(ds.as_mut_ptr().add(2 * b0), m, dv, _mm512_add_ps(sx0, sx1));
        if FULL {
            store_pairs(sr.as_mut_ptr().add(2 * b0), m, sx0, sx1);
            let mut d = [0f32; 16];
            _mm512_storeu_ps(d.as_mut_ptr(), dv);
            for (j, &d) in d.iter().enumerate().take(m) {
                _mm256_storeu_ps(dr.as_mut_ptr().add((b0 + j) * 8), _mm256_set1_ps(d));
            }
        }
    }
}

/// round(t) as the scalar loop: trunc(t ± 0.5) with t's sign; `sign` (i32::MIN per lane) and
/// `half` (0.5's bits) merged by one ternary-logic op, `(t & sign) | half`.
#[inline(always)]
unsafe fn round(t: __m512, sign: __m512i, half: __m512i) -> __m512i {
    let r = _mm512_ternarylogic_epi32::<0xEA>(_mm512_castps_si512(t), sign, half);
    _mm512_cvttps_epi32(_mm512_add_ps(t, _mm512_castsi512_ps(r)))
}

/// Lane j of the results: the byte sums of block j's first and second half (+ 16·128 each),
/// from `sad[p]` (blocks 2p, 2p + 1; u64 lanes 0-1 the first half of block 2p, 2-3 its second,
/// 4-7 block 2p + 1's).
#[inline(always)]
unsafe fn half_sums(sad: &[__m512i; 8]) -> (__m512i, __m512i) {
    // Sums < 2^12: two pairs' u64 lanes share one vector as i32 lanes (odd: the second pair).
    // Then 128-bit lane L of y[k] holds in elements 0-1 the half sums (half L % 2) of blocks
    // 4k + L / 2 and 4k + 2 + L / 2.
    let mut y = [_mm512_setzero_si512(); 4];
    for (k, y) in y.iter_mut().enumerate() {
        let x = _mm512_add_epi32(sad[2 * k], _mm512_slli_epi64::<32>(sad[2 * k + 1]));
        *y = _mm512_add_epi32(x, _mm512_shuffle_epi32::<0x4E>(x));
    }
    // Elements 2-3 from the next k: lane L of z holds blocks (L / 2) + 2t, t = 0..4, half L % 2.
    let z0 = _mm512_mask_blend_epi32(0xCCCC, y[0], y[1]);
    let z1 = _mm512_mask_blend_epi32(0xCCCC, y[2], y[3]);
    let h0 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 16, 24, 17, 25, 18, 26, 19, 27);
    let h1 = _mm512_setr_epi32(4, 12, 5, 13, 6, 14, 7, 15, 20, 28, 21, 29, 22, 30, 23, 31);
    (
        _mm512_permutex2var_epi32(z0, h0, z1),
        _mm512_permutex2var_epi32(z0, h1, z1),
    )
}

/// `[a[j], b[j]]` for j in 0..m, interleaved into `dst` (2 m floats).
#[inline(always)]
unsafe fn store_pairs(dst: *mut f32, m: usize, a: __m512, b: __m512) {
    let (lo, hi) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let mask = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    _mm512_mask_storeu_ps(dst, mask(2 * m), _mm512_permutex2var_ps(lo, i0, hi));
    if m > 8 {
        _mm512_mask_storeu_ps(
            dst.add(16),
            mask(2 * m - 16),
            _mm512_permutex2var_ps(lo, i1, hi),
        );
    }
}
