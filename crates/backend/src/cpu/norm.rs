//! RMSNorm of rows, with a kernel per instruction set that all give the same bits.
//!
//! As llama.cpp does, each square is rounded to f32 and the squares are summed in f64 (so that
//! the order of the sum barely matters: the f32 mean is nearly always llama.cpp's, whose sum
//! runs in order); the mean is rounded to f32, and `scale = 1 / √(mean + ε)` in f32. The sum runs
//! in one fixed order that SIMD can follow: [`NORM_LANES`] f64 partial sums, lane j summing
//! `x[i]²` for every i ≡ j (mod 16) in increasing i, then the lanes added pairwise,
//! `s[j] += s[j + 8]`, `s[j] += s[j + 4]`, `s[j] += s[j + 2]`, `s[0] + s[1]`. A row shorter than
//! a multiple of 16 is summed as if padded with zeros, which changes no partial sum (they are
//! `>= +0` or NaN).
//! Every path (`scalar::sum_squares` and its AVX2, AVX-512 and NEON twins) follows that order, so
//! a normed row, and the 8-bit activations the next product makes of it, do not depend on the
//! processor. The scaling, `x · scale · w`, is element-wise: the same on every path.

#[cfg(target_arch = "aarch64")]
use super::neon;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use super::{scalar, Isa};

/// Partial sums of a row's sum of squares (see the module's documentation).
pub(crate) const NORM_LANES: usize = 16;

/// RMSNorm of each row of `x` (rows of `weight.len()`), written to `out`: `x / rms(x) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_isa(Isa::detect(), x, weight, eps, out)
}

/// [`rms_norm`] with an explicit instruction set (tests compare paths).
pub fn rms_norm_isa(isa: Isa, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "rms_norm: x and out lengths");
    let rows = rows_of(x.len(), weight.len());
    let (x, out) = (x.as_ptr().cast_mut(), out.as_mut_ptr());
    // SAFETY: x is only read (no `add`: nothing is written to it); out has x's length.
    unsafe { norm_rows(isa, x, std::ptr::null(), weight, eps, out, rows) }
}

/// RMSNorm of each row of `x` in place (rows of `weight.len()`): the per-head Q/K norms of
/// Qwen3 and Gemma 3 (weight of one head), and Gemma 3's norms of a projection's output.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    rms_norm_in_place_isa(Isa::detect(), x, weight, eps)
}

/// [`rms_norm_in_place`] with an explicit instruction set.
pub fn rms_norm_in_place_isa(isa: Isa, x: &mut [f32], weight: &[f32], eps: f32) {
    let rows = rows_of(x.len(), weight.len());
    let x = x.as_mut_ptr();
    // SAFETY: each element of x is read, then written at the same index.
    unsafe { norm_rows(isa, x, std::ptr::null(), weight, eps, x, rows) }
}

/// `x += add`, then the RMSNorm of each row of the sum into `out` (one pass over `x` instead of
/// two; the same results as adding and then calling [`rms_norm`]).
pub fn add_rms_norm(x: &mut [f32], add: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    add_rms_norm_isa(Isa::detect(), x, add, weight, eps, out)
}

/// [`add_rms_norm`] with an explicit instruction set.
pub fn add_rms_norm_isa(
    isa: Isa,
    x: &mut [f32],
    add: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    assert!(
        x.len() == add.len() && x.len() == out.len(),
        "add_rms_norm: x, add and out lengths"
    );
    let rows = rows_of(x.len(), weight.len());
    // SAFETY: x, add and out have the same length, x and out are distinct (two `&mut`).
    unsafe {
        norm_rows(
            isa,
            x.as_mut_ptr(),
            add.as_ptr(),
            weight,
            eps,
            out.as_mut_ptr(),
            rows,
        )
    }
}

/// Whole rows of `d` in `len` values (the trailing partial row, if any, is left alone as the
/// slice-based loops this replaces did).
fn rows_of(len: usize, d: usize) -> usize {
    assert!(d > 0, "rms_norm: empty weight");
    len / d
}

/// The rows loop of every norm: per row, `x += add` when `add` is not null, the sum of squares,
/// then `out = x · scale · w`.
///
/// # Safety
/// `x` and `out` hold `rows · w.len()` values (they may be the same pointer), `add` too when not
/// null; `out` is written only through this call while it runs.
unsafe fn norm_rows(
    isa: Isa,
    x: *mut f32,
    add: *const f32,
    w: &[f32],
    eps: f32,
    out: *mut f32,
    rows: usize,
) {
    assert!(Isa::available().contains(&isa), "{isa:?} not available");
    let d = w.len();
    for r in 0..rows {
        let (x, out) = (x.add(r * d), out.add(r * d));
        let add = if add.is_null() { add } else { add.add(r * d) };
        // SAFETY (both matches): the instruction set is available, checked above.
        let ss = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::sum_squares(x, add, d),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => avx2::sum_squares(x, add, d),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => neon::sum_squares(x, add, d),
            _ => scalar::sum_squares(x, add, d),
        };
        // llama.cpp's `ggml_compute_forward_rms_norm_f32`: the mean in f64, rounded to f32.
        let mean = (ss / d as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::scale(x, scale, w.as_ptr(), out, d),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => avx2::scale(x, scale, w.as_ptr(), out, d),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => neon::scale(x, scale, w.as_ptr(), out, d),
            _ => scalar::scale(x, scale, w.as_ptr(), out, d),
        }
    }
}
