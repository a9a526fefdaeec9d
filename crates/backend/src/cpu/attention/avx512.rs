//! AVX-512 attention operations (x86-64), on the CPUs that [`crate::cpu::Isa::Avx512Vnni`] is
//! detected on (AVX-512 F/BW/VL, plus AVX2, FMA and F16C): f16 rows widened sixteen values per
//! instruction and, for heads of up to 64 values, V rows added into outputs held in registers.
//! Every result is bit-identical to the AVX2 path's (the same operations on each value, in the
//! same order; scores are AVX2's), so a model gives the same numbers on every x86 processor.
#![cfg(target_arch = "x86_64")]
// Register tiles are indexed by head alongside pointer offsets; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::avx2::Avx2;
use super::{acc_grouped, BlockQ8_0, HeadGroups, Ops, Task, MAX_TASK_ROWS};

pub(crate) struct Avx512;

/// [`HeadGroups::acc_n`] for heads of `16 * C` values (at most 64): all `N` heads' outputs held
/// in registers while the rows go by, each row's weight broadcast once per head. Each output
/// value gets the same operations, in the same order, as column by column.
#[inline(always)]
unsafe fn acc_in_registers<const N: usize, const C: usize>(
    w: *const f32,
    stride: usize,
    rows: &[&[f32]],
    out: *mut f32,
) {
    let hd = 16 * C;
    let mut a = [[_mm512_setzero_ps(); C]; N];
    for g in 0..N {
        for c in 0..C {
            a[g][c] = _mm512_loadu_ps(out.add(g * hd + 16 * c));
        }
    }
    for (j, r) in rows.iter().enumerate() {
        let pr = r.as_ptr();
        for g in 0..N {
            let wg = _mm512_set1_ps(*w.add(g * stride + j));
            for c in 0..C {
                a[g][c] = _mm512_fmadd_ps(wg, _mm512_loadu_ps(pr.add(16 * c)), a[g][c]);
            }
        }
    }
    for g in 0..N {
        for c in 0..C {
            _mm512_storeu_ps(out.add(g * hd + 16 * c), a[g][c]);
        }
    }
}

impl HeadGroups for Avx512 {
    #[inline(always)]
    unsafe fn dots_n<const N: usize>(
        q: *const f32,
        k: &[f32],
        scale: f32,
        s: *mut f32,
        stride: usize,
    ) {
        Avx2::dots_n::<N>(q, k, scale, s, stride)
    }

    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for `N` heads of `out` (rows of `hd`): held in
    /// registers for heads of up to 64 values, else the AVX2 kernel's eight columns at a time.
    #[inline(always)]
    unsafe fn acc_n<const N: usize>(
        w: *const f32,
        stride: usize,
        rows: &[&[f32]],
        out: *mut f32,
        hd: usize,
    ) {
        match hd {
            64 => acc_in_registers::<N, 4>(w, stride, rows, out),
            32 => acc_in_registers::<N, 2>(w, stride, rows, out),
            16 => acc_in_registers::<N, 1>(w, stride, rows, out),
            _ => Avx2::acc_n::<N>(w, stride, rows, out, hd),
        }
    }
}

impl Ops for Avx512 {
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize) {
        Avx2::dots(q, k, scale, s, stride)
    }

    /// AVX2's: 16-wide blocks would sum each score in another order, and a model's results
    /// would then differ between x86 processors with and without AVX-512.
    #[inline(always)]
    unsafe fn scores(q: &[f32], rows: &[&[f32]], scale: f32, s: &mut [f32], stride: usize) {
        Avx2::scores(q, rows, scale, s, stride)
    }

    #[inline(always)]
    unsafe fn max(s: &[f32], init: f32) -> f32 {
        Avx2::max(s, init)
    }

    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        Avx2::exp_sum(s, mx)
    }

    #[inline(always)]
    unsafe fn acc(w: &[f32], stride: usize, rows: &[&[f32]], out: &mut [f32]) {
        acc_grouped::<Self>(w, stride, rows, out)
    }

    #[inline(always)]
    unsafe fn scale(a: f32, y: &mut [f32]) {
        Avx2::scale(a, y)
    }

    #[inline(always)]
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(ps.add(i) as *const __m256i);
            _mm512_storeu_ps(pd.add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        Avx2::f16_to_f32(&src[i..n], &mut dst[i..n])
    }

    #[inline(always)]
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]) {
        Avx2::q8_to_f32(src, dst)
    }
}

/// [`super::fold::run`] on AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; as [`super::fold::run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn chunk(
    t: &Task,
    c: usize,
    outs: &[*mut f32; MAX_TASK_ROWS],
    scratch: &mut [f32],
) {
    super::fold::run::<Avx512>(t, c, outs, scratch)
}
