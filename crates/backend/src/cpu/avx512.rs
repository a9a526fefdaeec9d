//! AVX-512 F kernels (x86-64) of the f32 element-wise work: SwiGLU's SiLU, sixteen lanes at a time.
//! Callers guarantee the CPU has AVX-512 F. Same bits as `scalar.rs` and `avx2.rs`, so a result
//! does not depend on which x86 processor computed it.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::scalar::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO};

/// e^x to about 1 ulp, for every x (NaN stays NaN): `scalar::exp`, operation for operation.
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
    let ni = _mm512_cvtps_epi32(n);
    let a = _mm512_srai_epi32::<1>(ni);
    let pow2 = |e: __m512i| {
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            e,
            _mm512_set1_epi32(127),
        )))
    };
    _mm512_mul_ps(_mm512_mul_ps(y, pow2(a)), pow2(_mm512_sub_epi32(ni, a)))
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
