//! AVX-512 F kernels (x86-64) of the f32 element-wise work: SwiGLU's SiLU, the norms and RoPE,
//! sixteen lanes at a time. Callers guarantee the CPU has AVX-512 F. Same bits as `scalar.rs` and
//! `avx2.rs`, so a result does not depend on which x86 processor computed it.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::scalar::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO};

/// e^x to about 1 ulp, for every x (NaN stays NaN): `scalar::exp`, operation for operation but
/// for the last scaling, one instruction with the same result.
#[inline(always)]
pub(crate) unsafe fn exp_ulp(x: __m512) -> __m512 {
    // Constant first: a NaN x is the operand that comes through.
    let x = _mm512_min_ps(
        _mm512_set1_ps(EXP_HI),
        _mm512_max_ps(_mm512_set1_ps(EXP_LO), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    // y · 2^n rounded once, as `scalar::exp`'s two powers of two give it (the first product is
    // exact, the second rounds): `vscalefps` does it in one instruction (n is whole).
    _mm512_scalef_ps(y, n)
}

/// `silu(g) · u` of sixteen lanes: the one SiLU of [`silu`] and of the packed product that
/// writes it from its gate and up accumulators (`quant/packed.rs`).
#[inline(always)]
pub(crate) unsafe fn silu_mul16(g: __m512, u: __m512) -> __m512 {
    let neg = _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(g),
        _mm512_set1_epi32(i32::MIN),
    ));
    let e = exp_ulp(neg);
    _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e)), u)
}

/// `h = silu(gate) * up`, sixteen at a time through [`exp_ulp`], the tail under a mask.
///
/// # Safety
/// The CPU must support AVX-512 F; the three slices have equal lengths.
#[target_feature(enable = "avx512f")]
pub unsafe fn silu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    let n = h.len();
    let (pg, pu, ph) = (gate.as_ptr(), up.as_ptr(), h.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let y = silu_mul16(_mm512_loadu_ps(pg.add(i)), _mm512_loadu_ps(pu.add(i)));
        _mm512_storeu_ps(ph.add(i), y);
        i += 16;
    }
    if i < n {
        let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
        let y = silu_mul16(
            _mm512_maskz_loadu_ps(m, pg.add(i)),
            _mm512_maskz_loadu_ps(m, pu.add(i)),
        );
        _mm512_mask_storeu_ps(ph.add(i), m, y);
    }
}

/// `scalar::sum_squares`, the sixteen f64 lanes as two registers (lanes 0-7 and 8-15), the tail
/// under a mask (masked-off lanes add `0 · 0`); the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F; `x` holds `n` values, `add` too when not null; with a null
/// `add`, `x` is only read.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn sum_squares(x: *mut f32, add: *const f32, n: usize) -> f64 {
    #[inline(always)]
    unsafe fn run<const ADD: bool>(x: *mut f32, add: *const f32, n: usize) -> f64 {
        #[inline(always)]
        unsafe fn step<const ADD: bool>(
            x: *mut f32,
            add: *const f32,
            m: __mmask16,
            acc: &mut [__m512d; 2],
        ) {
            let mut v = _mm512_maskz_loadu_ps(m, x);
            if ADD {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, add));
                _mm512_mask_storeu_ps(x, m, v);
            }
            let sq = _mm512_mul_ps(v, v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sq)));
            acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
            acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(hi));
        }
        let mut acc = [_mm512_setzero_pd(); 2];
        let mut i = 0;
        while i + 16 <= n {
            step::<ADD>(
                x.add(i),
                if ADD { add.add(i) } else { add },
                0xffff,
                &mut acc,
            );
            i += 16;
        }
        if i < n {
            let m = ((1u32 << (n - i)) - 1) as u16;
            step::<ADD>(x.add(i), if ADD { add.add(i) } else { add }, m, &mut acc);
        }
        // Lanes j + 8 onto j, j + 4 onto j, then AVX2's order for the last four.
        let b = _mm512_add_pd(acc[0], acc[1]);
        let c = _mm256_add_pd(_mm512_castpd512_pd256(b), _mm512_extractf64x4_pd::<1>(b));
        super::avx2::hsum4_pd(c)
    }
    if add.is_null() {
        run::<false>(x, add, n)
    } else {
        run::<true>(x, add, n)
    }
}

/// `out = x · s · w`, sixteen at a time, the tail under a mask (`scalar::scale`'s bits).
///
/// # Safety
/// The CPU must support AVX-512 F; `x`, `w` and `out` hold `n` values; `out` is either `x` or
/// disjoint from both.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn scale(x: *const f32, s: f32, w: *const f32, out: *mut f32, n: usize) {
    let sv = _mm512_set1_ps(s);
    #[inline(always)]
    unsafe fn step(x: *const f32, sv: __m512, w: *const f32, out: *mut f32, m: __mmask16) {
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x), sv);
        _mm512_mask_storeu_ps(out, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w)));
    }
    let mut i = 0;
    while i + 16 <= n {
        step(x.add(i), sv, w.add(i), out.add(i), 0xffff);
        i += 16;
    }
    if i < n {
        step(
            x.add(i),
            sv,
            w.add(i),
            out.add(i),
            ((1u32 << (n - i)) - 1) as u16,
        );
    }
}

/// [`Rope::apply`](crate::rope::Rope::apply) compiled for AVX-512 (inlined: its loops vectorize
/// sixteen lanes wide). Rust never fuses a product into a sum, so FMA changes no bit.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn rope(
    r: &crate::rope::Rope,
    x: &mut [f32],
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    r.apply(x, head_dim, cos, sin)
}
