//! AVX2 + FMA kernels (x86-64). Callers guarantee the CPU has both features.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::Block;

/// `h = $f(gate, up)` eight lanes at a time, the tail through a padded copy. `$f` is an
/// `#[inline(always)]` kernel of two `__m256`; a macro, so that it is compiled with the calling
/// function's instruction set (SiLU and GELU share it).
macro_rules! lanes8 {
    ($gate:ident, $up:ident, $h:ident, $f:ident) => {{
        let n = $h.len();
        let (pg, pu, ph) = ($gate.as_ptr(), $up.as_ptr(), $h.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let y = $f(_mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pu.add(i)));
            _mm256_storeu_ps(ph.add(i), y);
            i += 8;
        }
        if i < n {
            let (mut g, mut u, mut y) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            g[..n - i].copy_from_slice(&$gate[i..n]);
            u[..n - i].copy_from_slice(&$up[i..n]);
            let v = $f(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(y.as_mut_ptr(), v);
            $h[i..].copy_from_slice(&y[..n - i]);
        }
    }};
}

/// Sum of the 8 lanes (one fixed order: every AVX2 kernel that sums lanes uses this one).
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// e^x for x <= 88 (below -87 it returns about e^-87 rather than 0): 2^n · P(f) with
/// n = round(x / ln 2), f = x - n ln 2 in two steps (Cody-Waite), P Taylor's series to degree 6
/// (|f| <= ln 2 / 2: a few ulp).
#[inline(always)]
pub(crate) unsafe fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), f);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(e))
}

/// e^x to about 1 ulp, for every x (NaN stays NaN): `scalar::exp`, operation for operation, hence
/// the same bits.
#[inline(always)]
pub(crate) unsafe fn exp_ulp(x: __m256) -> __m256 {
    use super::scalar::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO};
    // Constant first: a NaN x is the operand that comes through.
    let x = _mm256_min_ps(
        _mm256_set1_ps(EXP_HI),
        _mm256_max_ps(_mm256_set1_ps(EXP_LO), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let ni = _mm256_cvtps_epi32(n);
    let a = _mm256_srai_epi32::<1>(ni);
    let pow2 = |e: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            e,
            _mm256_set1_epi32(127),
        )))
    };
    _mm256_mul_ps(_mm256_mul_ps(y, pow2(a)), pow2(_mm256_sub_epi32(ni, a)))
}

/// `h = silu(gate) * up`, eight at a time through [`exp_ulp`] (the tail through a padded copy):
/// `scalar::silu`'s bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the three slices have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    #[inline(always)]
    unsafe fn eight(g: __m256, u: __m256) -> __m256 {
        let e = exp_ulp(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
    }
    lanes8!(gate, up, h, eight);
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// An MR x NR tile: MR rows of x against NR rows of w, all of length k.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize>(b: &Block, i0: usize, r0: usize) {
    let k = b.k;
    let k8 = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let xp: [*const f32; MR] = std::array::from_fn(|i| b.x.as_ptr().add((i0 + i) * k));
    let wp: [*const f32; NR] = std::array::from_fn(|r| b.w.as_ptr().add((r0 + r) * k));
    let mut p = 0;
    while p < k8 {
        let wv = simd_array!(NR, _mm256_setzero_ps(), |r| _mm256_loadu_ps(wp[r].add(p)));
        for i in 0..MR {
            let xv = _mm256_loadu_ps(xp[i].add(p));
            for r in 0..NR {
                acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
            }
        }
        p += 8;
    }
    for i in 0..MR {
        for r in 0..NR {
            let mut s = hsum(acc[i][r]);
            for q in k8..k {
                s += *xp[i].add(q) * *wp[r].add(q);
            }
            *b.y.0.add((i0 + i) * b.y_stride + b.y_col + r0 + r) = s;
        }
    }
}

const MR: usize = 4;
const NR: usize = 3;

/// # Safety
/// The CPU must support AVX2 and FMA; `b.y` must point to an (n, y_stride) buffer whose columns
/// `y_col..y_col + rows` no one else touches during the call.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_block(b: &Block) {
    let mut r0 = 0;
    while r0 < b.rows {
        let nr = (b.rows - r0).min(NR);
        let mut i0 = 0;
        while i0 < b.n {
            let mr = (b.n - i0).min(MR);
            match (mr, nr) {
                (4, 3) => tile::<4, 3>(b, i0, r0),
                (4, 2) => tile::<4, 2>(b, i0, r0),
                (4, 1) => tile::<4, 1>(b, i0, r0),
                (3, 3) => tile::<3, 3>(b, i0, r0),
                (3, 2) => tile::<3, 2>(b, i0, r0),
                (3, 1) => tile::<3, 1>(b, i0, r0),
                (2, 3) => tile::<2, 3>(b, i0, r0),
                (2, 2) => tile::<2, 2>(b, i0, r0),
                (2, 1) => tile::<2, 1>(b, i0, r0),
                (1, 3) => tile::<1, 3>(b, i0, r0),
                (1, 2) => tile::<1, 2>(b, i0, r0),
                _ => tile::<1, 1>(b, i0, r0),
            }
            i0 += mr;
        }
        r0 += nr;
    }
}

/// `h = gelu(gate) * up`, eight at a time through [`exp`] (the tail through a padded copy): GELU's
/// tanh form as `g / (1 + e^-2u)`, `u = √(2/π) (g + 0.044715 g³)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the three slices have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    #[inline(always)]
    unsafe fn eight(g: __m256, u: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let inner = _mm256_fmadd_ps(_mm256_set1_ps(super::GELU_COEF_A), _mm256_mul_ps(g, g), one);
        let z = _mm256_mul_ps(
            _mm256_set1_ps(-2.0 * super::SQRT_2_OVER_PI),
            _mm256_mul_ps(g, inner),
        );
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, exp(z))), u)
    }
    lanes8!(gate, up, h, eight);
}

/// `scalar::sum_squares`, the sixteen f64 lanes as four registers (lanes 0-3, 4-7, 8-11,
/// 12-15), the tail through a zero-padded copy; the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` holds `n` values, `add` too when not null; with a null
/// `add`, `x` is only read.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_squares(x: *mut f32, add: *const f32, n: usize) -> f64 {
    #[inline(always)]
    unsafe fn run<const ADD: bool>(x: *mut f32, add: *const f32, n: usize) -> f64 {
        #[inline(always)]
        unsafe fn step<const ADD: bool>(x: *mut f32, add: *const f32, acc: &mut [__m256d; 4]) {
            for h in 0..2 {
                let mut v = _mm256_loadu_ps(x.add(8 * h));
                if ADD {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(add.add(8 * h)));
                    _mm256_storeu_ps(x.add(8 * h), v);
                }
                let sq = _mm256_mul_ps(v, v);
                let (lo, hi) = (
                    _mm256_cvtps_pd(_mm256_castps256_ps128(sq)),
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)),
                );
                acc[2 * h] = _mm256_add_pd(acc[2 * h], lo);
                acc[2 * h + 1] = _mm256_add_pd(acc[2 * h + 1], hi);
            }
        }
        let mut acc = [_mm256_setzero_pd(); 4];
        let mut i = 0;
        while i + 16 <= n {
            step::<ADD>(x.add(i), if ADD { add.add(i) } else { add }, &mut acc);
            i += 16;
        }
        if i < n {
            padded16!(ADD, x.add(i), add.add(i), n - i, |xb, ab| step::<ADD>(
                xb, ab, &mut acc
            ));
        }
        // Lanes j + 8 onto j, j + 4 onto j, then the last four.
        hsum4_pd(_mm256_add_pd(
            _mm256_add_pd(acc[0], acc[2]),
            _mm256_add_pd(acc[1], acc[3]),
        ))
    }
    if add.is_null() {
        run::<false>(x, add, n)
    } else {
        run::<true>(x, add, n)
    }
}

/// The last four of the norms' sixteen f64 lanes: `s[j] += s[j + 4]` was done by the caller,
/// here `s[j] += s[j + 2]`, then `s[0] + s[1]`.
#[inline(always)]
pub(crate) unsafe fn hsum4_pd(c: __m256d) -> f64 {
    let d = _mm_add_pd(_mm256_castpd256_pd128(c), _mm256_extractf128_pd::<1>(c));
    _mm_cvtsd_f64(_mm_add_sd(d, _mm_unpackhi_pd(d, d)))
}

/// `out = x · s · w`, eight at a time (`scalar::scale`'s bits).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x`, `w` and `out` hold `n` values; `out` is either `x` or
/// disjoint from both.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scale(x: *const f32, s: f32, w: *const f32, out: *mut f32, n: usize) {
    let sv = _mm256_set1_ps(s);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(i)), sv);
        _mm256_storeu_ps(out.add(i), _mm256_mul_ps(v, _mm256_loadu_ps(w.add(i))));
        i += 8;
    }
    super::scalar::scale(x.add(i), s, w.add(i), out.add(i), n - i);
}

/// [`Rope::apply`](crate::rope::Rope::apply) compiled for AVX2 (inlined: its loops vectorize
/// eight lanes wide). Rust never fuses a product into a sum, so FMA changes no bit.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn rope(
    r: &crate::rope::Rope,
    x: &mut [f32],
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    r.apply(x, head_dim, cos, sin)
}

/// `dst = f16(src)`, eight at a time with F16C rounding to nearest even: the bits of
/// `half::f16::from_f32` (which uses the same instruction where the CPU has it), without the
/// copies through arrays of `half`'s slice conversion (three times slower on a K/V row).
///
/// # Safety
/// The CPU must support AVX2 and F16C; the slices have equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_to_f16(src: &[f32], dst: &mut [half::f16]) {
    let n = src.len();
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(ps.add(i)));
        _mm_storeu_si128(pd.add(i).cast(), h);
        i += 8;
    }
    for j in i..n {
        dst[j] = half::f16::from_f32(src[j]);
    }
}
