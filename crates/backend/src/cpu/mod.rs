//! Host kernels: matrix products, normalization, activations, softmax, paged attention, and the
//! device operations of [`crate::ops`] built on them ([`ops::CpuOps`]).

/// `[f(0), f(1), ..]` built by a plain loop, for SIMD code: the closure of `std::array::from_fn`
/// does not inherit the caller's `#[target_feature]`, so intrinsics inside it became out-of-line
/// calls with registers passed through memory (found in the hot loops, 2-3x slower there).
macro_rules! simd_array {
    ($n:expr, $zero:expr, |$i:ident| $body:expr) => {{
        let mut a = [$zero; $n];
        for $i in 0..$n {
            a[$i] = $body;
        }
        a
    }};
}

/// `$body` on the last `len` (< 16) values of a norm row through zero-padded copies: `$xb`
/// points to x's copy, `$ab` to add's (read only when `$adding`), and x's copy is written back
/// when adding. A macro, like `simd_array!`, so that the body keeps the caller's instruction set.
/// `$add` is only evaluated when adding (it may be a null pointer otherwise).
macro_rules! padded16 {
    ($adding:expr, $x:expr, $add:expr, $len:expr, |$xb:ident, $ab:ident| $body:expr) => {{
        let (mut xb, mut ab) = ([0f32; 16], [0f32; 16]);
        std::ptr::copy_nonoverlapping($x, xb.as_mut_ptr(), $len);
        if $adding {
            std::ptr::copy_nonoverlapping($add, ab.as_mut_ptr(), $len);
        }
        {
            let ($xb, $ab) = (xb.as_mut_ptr(), ab.as_ptr());
            $body;
        }
        if $adding {
            std::ptr::copy_nonoverlapping(xb.as_ptr(), $x, $len);
        }
    }};
}

pub mod attention;
mod avx2;
mod avx512;
mod neon;
mod norm;
pub mod ops;
mod quant;
mod scalar;
pub mod tuning;
mod weight;

pub use norm::{
    add_rms_norm, add_rms_norm_isa, rms_norm, rms_norm_in_place, rms_norm_in_place_isa,
    rms_norm_isa,
};
pub use quant::{
    matmul_q, matmul_q_cols, matmul_q_cols_isa, matmul_q_glu_isa, matmul_q_isa,
    matmul_q_to_glu_isa, QMatrix, QType,
};
pub use weight::Weight;

use std::sync::OnceLock;

use rayon::prelude::*;

/// The instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C: f32 tiles, and int8 dot products with `maddubs`/`madd`.
    Avx2,
    /// AVX2 + FMA + F16C + AVX-VNNI: as `Avx2`, and `vpdpbusd` on 256-bit registers for the
    /// packed Q4_0/Q4_1/Q8_0 kernel.
    AvxVnni,
    /// AVX-512 F/BW/VL + VNNI (plus AVX2/FMA): int8 dot products with `vpdpbusd` on 512-bit
    /// registers; f32 kernels use the AVX2 ones.
    Avx512Vnni,
    /// NEON (aarch64, where every CPU has it): f32 tiles, int8 dot products with `smull` and
    /// pairwise adds, f16 widened with `fcvtl`.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// NEON + dotprod (`sdot`, optional from ARMv8.2, e.g. Cortex-A55/A76, Apple M1, Graviton 2):
    /// as `Neon`, int8 dot products with `sdot`, bit-identical to `Neon`'s.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Isa {
    /// The best instruction set this CPU has, detected once.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("TOKENFAB_FORCE_SCALAR").is_some() {
                return Isa::Scalar;
            }
            Isa::available().last().copied().unwrap_or(Isa::Scalar)
        })
    }

    /// Every instruction set this CPU can run, scalar first and the best last (tests run them all;
    /// unlike [`Isa::detect`] this ignores `TOKENFAB_FORCE_SCALAR`). Allocates nothing: kernels
    /// check their argument against it on every call.
    pub fn available() -> IsaSet {
        #[allow(unused_mut)]
        let mut out = IsaSet {
            isas: [Isa::Scalar; 4],
            len: 1,
        };
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            out.isas[out.len] = Isa::Avx2;
            out.len += 1;
            if is_x86_feature_detected!("avxvnni") {
                out.isas[out.len] = Isa::AvxVnni;
                out.len += 1;
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                out.isas[out.len] = Isa::Avx512Vnni;
                out.len += 1;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            out.isas[out.len] = Isa::Neon;
            out.len += 1;
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                out.isas[out.len] = Isa::NeonDot;
                out.len += 1;
            }
        }
        out
    }
}

/// The instruction sets of [`Isa::available`]: a slice (`contains`, `last`) and an iterator of
/// `Isa`, held inline.
#[derive(Clone, Copy, Debug)]
pub struct IsaSet {
    isas: [Isa; 4],
    len: usize,
}

impl std::ops::Deref for IsaSet {
    type Target = [Isa];
    fn deref(&self) -> &[Isa] {
        &self.isas[..self.len]
    }
}

impl IntoIterator for IsaSet {
    type Item = Isa;
    type IntoIter = std::iter::Take<std::array::IntoIter<Isa, 4>>;
    fn into_iter(self) -> Self::IntoIter {
        self.isas.into_iter().take(self.len)
    }
}

/// A dense row-major f32 matrix: `data` is (rows, cols), each row contiguous.
/// Weights are stored this way: one row per output feature, `cols` = input features.
#[derive(Clone, Debug, Default)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Self { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Output rows of `w` handed to one task; small enough to spread a single token over all cores.
const ROWS_PER_TASK: usize = 48;

/// `y (n, w.rows) = x (n, w.cols) · wᵀ`, split over output rows across the thread pool.
pub fn matmul(x: &[f32], n: usize, w: &Matrix, y: &mut [f32]) {
    matmul_isa(Isa::detect(), x, n, w, y)
}

/// [`matmul`] with an explicit instruction set (tests compare paths).
pub fn matmul_isa(isa: Isa, x: &[f32], n: usize, w: &Matrix, y: &mut [f32]) {
    assert_eq!(y.len(), n * w.rows, "matmul: y is not (n, m)");
    matmul_cols_isa(isa, x, n, w, y, w.rows, 0)
}

/// `x (n, w.cols) · wᵀ` into columns `col..col + w.rows` of `y` (n, stride), the other columns
/// untouched (see [`matmul_q_cols`]).
pub fn matmul_cols(x: &[f32], n: usize, w: &Matrix, y: &mut [f32], stride: usize, col: usize) {
    matmul_cols_isa(Isa::detect(), x, n, w, y, stride, col)
}

/// [`matmul_cols`] with an explicit instruction set.
pub fn matmul_cols_isa(
    isa: Isa,
    x: &[f32],
    n: usize,
    w: &Matrix,
    y: &mut [f32],
    stride: usize,
    col: usize,
) {
    let (k, m) = (w.cols, w.rows);
    assert_eq!(x.len(), n * k, "matmul: x is not (n, k)");
    assert!(
        col + m <= stride && y.len() == n * stride,
        "matmul: y is not (n, stride) with room for columns {col}..{}",
        col + m
    );
    let out = SendPtr(y.as_mut_ptr());
    let tasks = m.div_ceil(ROWS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|t| {
        let r0 = t * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(m);
        let block = Block {
            x,
            n,
            k,
            w: &w.data[r0 * k..r1 * k],
            rows: r1 - r0,
            y: out,
            y_stride: stride,
            y_col: col + r0,
        };
        // SAFETY: each task writes only columns r0..r1 of y, disjoint across tasks, and y outlives
        // the parallel loop.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => avx2::gemm_block(&block),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon | Isa::NeonDot => neon::gemm_block(&block),
                _ => scalar::gemm_block(&block),
            }
        }
    });
}

/// One task's share of a matrix product: all `n` rows of x times `rows` rows of w, written to
/// columns `y_col..y_col + rows` of y (row stride `y_stride`).
pub(crate) struct Block<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub k: usize,
    pub w: &'a [f32],
    pub rows: usize,
    pub y: SendPtr,
    pub y_stride: usize,
    pub y_col: usize,
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint output regions to pool threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `i` floats on (a method, so that closures capture the `Sync` wrapper rather
    /// than the raw pointer field).
    ///
    /// # Safety
    /// `i` must stay inside the allocation.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Runs a forward pass `f` where [`tuning::Tuning::forward_in_pool`] says: on a thread of the
/// compute pool (rayon's global pool), waiting for it, or on the calling thread. On a pool thread
/// each parallel loop costs the push of a task (its own thread runs part of the loop, an idle one
/// steals the rest); started on any other thread (the engine's) it goes through the pool's
/// injector and puts the caller to sleep until the loop ends: 12-15 µs per fork-join on the
/// 2-core EPYC, with 121 matrix products and 30 attentions per SmolLM2-135M decode step
/// (`cargo bench -p tokenfab-backend --bench decode` measures both ways). Called on a pool
/// thread, `f` runs in place either way.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tuning::get().tuning.forward_in_pool {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Runs `first(c)` for every `c` in `0..n1`, then, once all of them have returned, `second(t)`
/// for every `t` in `0..n2`: two parallel loops in one fork-join over the pool (a matmul's
/// activation quantization, then its weight tasks). Each participating thread claims items from
/// an atomic counter, so a pool thread that never joins (busy elsewhere) only means the others
/// take its share; a thread between the phases waits only for items that running threads have
/// already claimed, so the wait always ends.
pub(crate) fn two_phase(
    n1: usize,
    first: impl Fn(usize) + Sync,
    n2: usize,
    second: impl Fn(usize) + Sync,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (next1, done1, next2) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let work = |_| {
        loop {
            let c = next1.fetch_add(1, Ordering::Relaxed);
            if c >= n1 {
                break;
            }
            first(c);
            // Release: this item's writes are seen by whoever acquires the count.
            done1.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while done1.load(Ordering::Acquire) < n1 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                // The item's thread was descheduled: let it run.
                std::thread::yield_now();
            }
        }
        loop {
            let t = next2.fetch_add(1, Ordering::Relaxed);
            if t >= n2 {
                break;
            }
            second(t);
        }
    };
    let threads = rayon::current_num_threads().min(n1.max(n2));
    if threads <= 1 {
        work(0);
    } else {
        (0..threads).into_par_iter().for_each(work);
    }
}

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 and Avx512Vnni are only detected when the CPU has AVX2 and FMA.
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe { avx2::dot(a, b) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is detected before either is chosen.
        Isa::Neon | Isa::NeonDot => unsafe { neon::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// The activation of a gated FFN: `h = act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen, Mistral, Phi-3): `silu(g) = g / (1 + e^-g)`.
    Silu,
    /// GeGLU with GELU's tanh approximation (Gemma): `0.5 g (1 + tanh u)`,
    /// `u = √(2/π) (g + 0.044715 g³)`, computed as the equal `g / (1 + e^-2u)`.
    GeluTanh,
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The gated activation of each row of `gu` = (gate | up), each half `ffn` wide, written to
/// `h` (n, ffn): `h = act(gate) * up` (no copy of the gate).
pub fn glu_rows(act: Activation, gu: &[f32], h: &mut [f32], ffn: usize) {
    glu_rows_isa(Isa::detect(), act, gu, h, ffn)
}

/// [`glu_rows`] with an explicit instruction set (tests compare paths). SiLU has a kernel per
/// instruction set around a vector exp of about 1 ulp whose scalar twin does the same IEEE
/// operations in the same order: every path gives the same bits, so a result does not depend on
/// the processor that computed it (the 8-bit rounding of the next product's activations would
/// turn any difference into different tokens). GELU's SIMD paths are within 2e-6 of the scalar.
pub fn glu_rows_isa(isa: Isa, act: Activation, gu: &[f32], h: &mut [f32], ffn: usize) {
    assert_eq!(gu.len(), 2 * h.len(), "glu: gu is not (n, 2 ffn)");
    assert!(Isa::available().contains(&isa), "{isa:?} not available");
    let row = |(hr, g): (&mut [f32], &[f32])| {
        let (gate, up) = g.split_at(ffn);
        glu_row(isa, act, gate, up, hr)
    };
    // Rows are independent and each is computed the same way wherever it runs, so a batch's
    // rows go to the pool; a few rows stay on this thread, where a fork-join would cost more
    // than them.
    if h.len() / ffn.max(1) >= PAR_ROWS {
        h.par_chunks_exact_mut(ffn)
            .zip(gu.par_chunks_exact(2 * ffn))
            .with_min_len(PAR_ROWS / 2)
            .for_each(row);
    } else {
        h.chunks_exact_mut(ffn)
            .zip(gu.chunks_exact(2 * ffn))
            .for_each(row);
    }
}

/// One row of [`glu_rows_isa`] (`isa` one of [`Isa::available`]): also the row the quantized
/// products fuse with their input quantization ([`matmul_q_glu_isa`]).
pub(crate) fn glu_row(isa: Isa, act: Activation, gate: &[f32], up: &[f32], h: &mut [f32]) {
    assert!(
        gate.len() == h.len() && up.len() == h.len(),
        "glu: row lengths"
    );
    debug_assert!(Isa::available().contains(&isa), "{isa:?} not available");
    match (act, isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only available with AVX-512 F; lengths checked above.
        (Activation::Silu, Isa::Avx512Vnni) => unsafe { avx512::silu(gate, up, h) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these are only available with AVX2 and FMA; lengths checked above.
        (Activation::Silu, Isa::Avx2 | Isa::AvxVnni) => unsafe { avx2::silu(gate, up, h) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON was detected; lengths checked above.
        (Activation::Silu, Isa::Neon | Isa::NeonDot) => unsafe { neon::silu(gate, up, h) },
        (Activation::Silu, _) => scalar::silu(gate, up, h),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these are only available with AVX2 and FMA; lengths checked above.
        (_, Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni) => unsafe { avx2::gelu(gate, up, h) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON was detected; lengths checked above.
        (_, Isa::Neon | Isa::NeonDot) => unsafe { neon::gelu(gate, up, h) },
        _ => scalar::gelu(gate, up, h),
    }
}

/// [`Rope::apply`](crate::rope::Rope::apply) on one row's heads, compiled for `isa` (one of
/// [`Isa::available`]) so that its loops vectorize as wide as the processor allows; the same bits
/// on every path (element-wise products and sums, never fused).
pub fn rope_isa(
    isa: Isa,
    rope: &crate::rope::Rope,
    x: &mut [f32],
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    debug_assert!(Isa::available().contains(&isa), "{isa:?} not available");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only available with AVX-512 F.
        Isa::Avx512Vnni => unsafe { avx512::rope(rope, x, head_dim, cos, sin) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these are only available with AVX2 and FMA.
        Isa::Avx2 | Isa::AvxVnni => unsafe { avx2::rope(rope, x, head_dim, cos, sin) },
        _ => rope.apply(x, head_dim, cos, sin),
    }
}

/// `dst = f16(src)` (round to nearest even), the K/V pool's row conversion: F16C eight at a time
/// where the CPU has it, `half`'s conversion otherwise; the same bits either way.
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [half::f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() != Isa::Scalar {
        // SAFETY: every x86 instruction set but Scalar implies AVX2 and F16C; lengths checked.
        return unsafe { avx2::f32_to_f16(src, dst) };
    }
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src)
}

/// Rows from which a step's per-row work ([`glu_rows`], the Q/K preparation of `CpuOps`) runs
/// on the pool, in tasks of at least half as many rows: fewer cost less than a fork-join.
pub(crate) const PAR_ROWS: usize = 8;

/// Softmax in place over the whole slice.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log(softmax(x))` of one row, computed in f64 for the normalizer.
pub fn log_softmax(x: &[f32], out: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v as f64 - lse) as f32;
    }
}

#[cfg(test)]
mod tests;
