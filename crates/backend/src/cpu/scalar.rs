//! Portable kernels: the reference every other instruction set is tested against.

use super::Block;

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler vectorizes this, and rounding stays close to the SIMD paths.
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// # Safety
/// `b.y` must point to an (n, y_stride) buffer whose columns `y_col..y_col + rows` no one else
/// touches during the call.
pub unsafe fn gemm_block(b: &Block) {
    for i in 0..b.n {
        let xr = &b.x[i * b.k..(i + 1) * b.k];
        for r in 0..b.rows {
            let v = dot(xr, &b.w[r * b.k..(r + 1) * b.k]);
            *b.y.0.add(i * b.y_stride + b.y_col + r) = v;
        }
    }
}

/// `h = silu(gate) * up`, `silu(g) = g / (1 + e^-g)` through [`exp`]: the twin of the SIMD
/// paths, which give the same bits. Where the CPU has FMA, compiled with it: `mul_add` is then
/// one instruction rather than libm's exact software `fmaf` (about 50x slower; same result).
pub fn silu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        #[target_feature(enable = "fma")]
        unsafe fn with_fma(gate: &[f32], up: &[f32], h: &mut [f32]) {
            silu_rows(gate, up, h)
        }
        // SAFETY: the CPU has FMA.
        return unsafe { with_fma(gate, up, h) };
    }
    silu_rows(gate, up, h)
}

#[inline(always)]
fn silu_rows(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *o = silu1(g, u);
    }
}

/// `silu(g) · u` of one element, in the SIMD paths' order of operations.
#[inline(always)]
fn silu1(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// Arguments of [`exp`] are clamped to `[EXP_LO, EXP_HI]`: below -104 e^x rounds to 0 in f32,
/// above 89 to infinity, and inside the range 2^n's exponent fits the two factors of [`exp`].
pub(crate) const EXP_LO: f32 = -104.0;
pub(crate) const EXP_HI: f32 = 89.0;
/// ln 2 in two parts (Cody-Waite): the high one has 9 significant bits, so `n · LN2_HI` is exact.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial: e^r ≈ 1 + r + r² P(r) on |r| <= ln 2 / 2, highest degree first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_66,
    0.5,
];

/// `maxps`'s rule: `a` if `a > b`, else `b` (so a NaN `b` comes through, as on x86 and NEON).
#[inline(always)]
fn max_ps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `minps`'s rule: `a` if `a < b`, else `b`.
#[inline(always)]
fn min_ps(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// e^x to about 1 ulp, the portable twin of the SIMD paths' `exp_ulp`: the same IEEE operations
/// in the same order (every `mul_add` is one FMA there), hence the same bits on every instruction
/// set. n = round(x / ln 2) (ties to even), r = x - n ln 2 in two FMAs, e^r by Cephes'
/// polynomial, then 2^n applied as two exact powers of two: the first product is exact and the
/// second rounds once, so results that overflow give infinity and those below 2^-126 round to the
/// subnormals or 0 as IEEE does. exp(NaN) is NaN, exp(-inf) 0, exp(inf) infinity.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = min_ps(EXP_HI, max_ps(EXP_LO, x));
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // n in [-150, 129]: each half in [-75, 65], a normal power of two.
    let ni = n as i32;
    let a = ni >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    y * pow2(a) * pow2(ni - a)
}

/// `h = gelu(gate) * up`, GELU's tanh form as `g / (1 + e^-2u)` with the library's `exp`: the
/// reference of the SIMD paths.
pub fn gelu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        let z = -2.0 * super::SQRT_2_OVER_PI * g * (1.0 + super::GELU_COEF_A * g * g);
        *o = g / (1.0 + z.exp()) * u;
    }
}

/// A row's sum of squares in the order `norm.rs` fixes (each square rounded to f32, then summed
/// in f64 over 16 lanes and a pairwise tree); with `add` not null, `x += add` first and the sum
/// is of the new values. The reference the SIMD twins give the same bits as.
///
/// # Safety
/// `x` holds `n` values, `add` too when not null; with a null `add`, `x` is only read.
pub(crate) unsafe fn sum_squares(x: *mut f32, add: *const f32, n: usize) -> f64 {
    use super::norm::NORM_LANES;
    #[inline(always)]
    fn lanes(acc: &mut [f64; NORM_LANES], v: &[f32]) {
        for (a, v) in acc.iter_mut().zip(v) {
            *a += (v * v) as f64;
        }
    }
    let mut acc = [0f64; NORM_LANES];
    if add.is_null() {
        let x = std::slice::from_raw_parts(x, n);
        let mut c = x.chunks_exact(NORM_LANES);
        c.by_ref().for_each(|v| lanes(&mut acc, v));
        lanes(&mut acc, c.remainder());
    } else {
        let (x, add) = (
            std::slice::from_raw_parts_mut(x, n),
            std::slice::from_raw_parts(add, n),
        );
        for (v, a) in x.chunks_mut(NORM_LANES).zip(add.chunks(NORM_LANES)) {
            v.iter_mut().zip(a).for_each(|(v, a)| *v += a);
            lanes(&mut acc, v);
        }
    }
    lanes_sum(acc)
}

/// The 16 partial sums added pairwise: `s[j] += s[j + w]` for w = 8, 4, 2, 1.
#[inline(always)]
pub(crate) fn lanes_sum(mut s: [f64; 16]) -> f64 {
    for w in [8, 4, 2, 1] {
        for j in 0..w {
            s[j] += s[j + w];
        }
    }
    s[0]
}

/// `out = x · s · w` element-wise (`out` may be `x`).
///
/// # Safety
/// `x`, `w` and `out` hold `n` values; `out` is either `x` or disjoint from both.
pub(crate) unsafe fn scale(x: *const f32, s: f32, w: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = *x.add(i) * s * *w.add(i);
    }
}
