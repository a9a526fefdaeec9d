//! FP8 (E4M3) on the device: weights stored as one byte per value with a per-tensor scale,
//! activations quantized by a kernel before each product, the product by cuBLASLt on FP8 tensor
//! cores (sm_89 Ada and sm_90 Hopper), an FP8 KV cache, and dummy weights generated on the device.
//!
//! Weight scales are **per tensor** (vLLM's `--quantization fp8`): cuBLASLt takes one as a
//! device scalar (`A_SCALE_POINTER`) on every sm_89/sm_90 cuBLAS since 11.8, so the product reads
//! nothing but codes. Per-output-channel weight scales would need cuBLASLt's outer-vector scaling
//! (cuBLAS >= 12.9 only) or a pass over the output; stacked matrices (Q|K|V, gate|up) share one
//! scale, as vLLM's `requantize_with_max_scale` makes them. Activation scales are dynamic and
//! **per row** (per token): a row's largest magnitude over 448, so a sequence's result does not
//! depend on what else is in the batch (a per-tensor activation scale would couple every row of a
//! step, padded graph rows included); the product runs with unit activation scale and one pass
//! (`fp8_scale_rows`) multiplies each output row by its scale.
//!
//! Every conversion here has a CPU twin that the tests hold it to:
//! - weight and activation quantization: `tokenfab_loader::quant::fp8::Fp8Matrix::quantize`
//!   with [`Fp8Scaling::PerTensor`] for weights ([`quantize_reference`]) and
//!   [`Fp8Scaling::PerRow`] for activations ([`quantize_rows_reference`]) (the kernel is its
//!   transliteration: the same amax, the same `1 / scale`, the same round-to-nearest-even with
//!   saturation);
//! - the product: [`gemm_reference`] (codes times scales, f32 sums);
//! - the KV cache: [`kv_encode`] / [`kv_decode`];
//! - dummy weights: [`dummy_value`] and [`dummy_code`].

use half::bf16;
use tokenfab_loader::quant::fp8::{e4m3_to_f32, f32_to_e4m3, Fp8Matrix, Fp8Scaling, E4M3_MAX};

pub use super::fp8_lt::Lt;
use super::launch::DevMatrix;
use super::{Error, Gpu, GpuBuf, Result};

/// The CUDA C source of the FP8 kernels, appended to [`super::kernels::SOURCE`] (a macro so that
/// `concat!` can join the two at compile time). Uses `bf16_t`, `bf2f`, `WARP` from there.
#[macro_export]
#[doc(hidden)]
macro_rules! fp8_kernel_source {
    () => {
        r#"
/* ---- FP8 E4M3 kernels (cuda/fp8.rs) ---- */
__device__ float block_max_abs(float v, float* shared32) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nw = blockDim.x / WARP;
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t = fmaxf(t, shared32[i]);
    return t;
}

/* Row t of x (n, cols) bf16 as E4M3 codes with the row's own scale (one block per row): s = the
   row's largest finite |x| / 448 (1 when 0; NaN and inf do not set it), q = code(x * (1 / s)),
   row_scale[t] = s. Rows never see each other: a row's codes do not depend on the batch. */
extern "C" __global__ void fp8_quantize_rows(const bf16_t* __restrict__ x, fp8_t* __restrict__ q,
                                             float* __restrict__ row_scale, int cols) {
    __shared__ float red[32];
    size_t base = (size_t)blockIdx.x * cols;
    float m = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float a = fabsf(bf2f(x[base + j]));
        if (a <= 3.4e38f) m = fmaxf(m, a);
    }
    m = block_max_abs(m, red);
    float s = m > 0.0f ? m / 448.0f : 1.0f;
    float inv = 1.0f / s;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        q[base + j] = (fp8_t)f2e4m3(bf2f(x[base + j]) * inv);
    if (threadIdx.x == 0) row_scale[blockIdx.x] = s;
}

/* y (n, out) f32 *= row_scale[row]: the activations' per-row scales, which cuBLASLt's scalar
   scales cannot carry, applied after the product. Grid-stride over n * out. */
extern "C" __global__ void fp8_scale_rows(float* __restrict__ y, const float* __restrict__ row_scale,
                                          unsigned long long total, int out) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride)
        y[i] *= row_scale[i / (unsigned long long)out];
}

/* splitmix64 of (key, i) as a uniform value in [-1, 1): crates/engine/src/dummy.rs's `value`,
   bit for bit (24 random bits, exact in f32). */
__device__ __forceinline__ float dummy_uniform(unsigned long long key, unsigned long long i) {
    unsigned long long z = key ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / 8388608.0f - 1.0f;
}

/* Dummy weights made on the device: out[i] = bf16(uniform(key, i) * a), or with fp8 = 1 the E4M3
   code of uniform(key, i) * 448 (the tensor's scale is a / 448). Grid-stride over n. */
extern "C" __global__ void dummy_fill(void* __restrict__ out, unsigned long long n,
                                      unsigned long long key, float a, int fp8) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        float u = dummy_uniform(key, i);
        if (fp8) ((fp8_t*)out)[i] = (fp8_t)f2e4m3(u * 448.0f);
        else ((bf16_t*)out)[i] = f2bf(u * a);
    }
}

/* The FP8 KV cache's store and attention (kernels.rs's templates with E4M3 K/V). */
extern "C" __global__ void qkv_prep_fp8(QKV_PREP_PARAMS(fp8_t), float k_inv, float v_inv) {
    qkv_prep_t(QKV_PREP_ARGS, k_inv, v_inv);
}
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * WARP)
paged_attention_fp8(ATTN_PARAMS(fp8_t), float k_scale, float v_scale) {
    paged_attention_t(ATTN_ARGS, k_scale, v_scale);
}
"#
    };
}

/// The E4M3 conversions, put before [`super::kernels::SOURCE`] (its K/V store and load use them).
#[macro_export]
#[doc(hidden)]
macro_rules! fp8_helper_source {
    () => {
        r#"
/* ---- FP8 E4M3 (cuda/fp8.rs) ---- */
typedef unsigned char fp8_t;

/* The E4M3 code nearest x (ties to even), saturating at +-448, NaN -> 0x7f: the transliteration
   of tokenfab_loader::quant::fp8::f32_to_e4m3 (the hardware cvt.rn.satfinite does the same, but
   only from sm_89 on). */
__device__ __forceinline__ unsigned int f2e4m3(float x) {
    unsigned int u = __float_as_uint(x);
    unsigned int sign = (u >> 24) & 0x80u;
    float a = fabsf(x);
    if (a != a) return 0x7fu;
    if (a >= 448.0f) return sign | 0x7eu;
    if (a < 0.015625f) return sign | (unsigned int)__float2int_rn(a * 512.0f);
    unsigned int bits = __float_as_uint(a);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    unsigned int man = bits & 0x7fffffu, top = man >> 20, rest = man & 0xfffffu;
    unsigned int up = (rest > 0x80000u || (rest == 0x80000u && (top & 1u))) ? 1u : 0u;
    unsigned int code = ((unsigned int)(e + 7) << 3) + top + up;
    return sign | min(code, 0x7eu);
}

/* The value of an E4M3 code (e4m3_to_f32): 2^(e-7) (1 + m/8), subnormals m 2^-9. */
__device__ __forceinline__ float e4m32f(unsigned int c) {
    unsigned int e = (c >> 3) & 0xfu, m = c & 7u;
    float mag = e == 0 ? (float)m * 0.001953125f : __uint_as_float(((e + 120u) << 23) | (m << 20));
    if ((c & 0x7fu) == 0x7fu) mag = __int_as_float(0x7fc00000);
    return (c & 0x80u) ? -mag : mag;
}

"#
    };
}

/// Names of the FP8 kernels (listed in [`super::kernels::KERNELS`] too).
pub const KERNELS: &[&str] = &[
    "fp8_quantize_rows",
    "fp8_scale_rows",
    "dummy_fill",
    "qkv_prep_fp8",
    "paged_attention_fp8",
];

/// Threads per block of the FP8 row kernels.
const THREADS: u32 = 256;

/// The FP8 kernels of one loaded module.
pub(crate) struct Kernels {
    quantize_rows: cudarc::driver::CudaFunction,
    scale_rows: cudarc::driver::CudaFunction,
    dummy_fill: cudarc::driver::CudaFunction,
    pub(crate) qkv_prep: cudarc::driver::CudaFunction,
    pub(crate) paged_attention: cudarc::driver::CudaFunction,
}

impl Kernels {
    pub(crate) fn load(m: &std::sync::Arc<cudarc::driver::CudaModule>) -> Result<Self> {
        let f = |name: &str| m.load_function(name).map_err(Error::from);
        Ok(Self {
            quantize_rows: f("fp8_quantize_rows")?,
            scale_rows: f("fp8_scale_rows")?,
            dummy_fill: f("dummy_fill")?,
            qkv_prep: f("qkv_prep_fp8")?,
            paged_attention: f("paged_attention_fp8")?,
        })
    }
}

/// Whether a device of compute capability `cc` has FP8 tensor cores (Ada sm_89, Hopper sm_90 and
/// later); the error names the device's architecture.
pub fn check_fp8_device(what: &str, cc: (i32, i32)) -> Result<()> {
    if cc >= (8, 9) {
        return Ok(());
    }
    Err(Error::Blas(format!(
        "{what} needs FP8 tensor cores (sm_89 or newer: Ada, Hopper); this device is sm_{}{}",
        cc.0, cc.1
    )))
}

/// A weight matrix (rows, cols) on the device as E4M3 codes with one scale.
pub struct DevFp8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols) codes, row-major (one row per output feature).
    pub codes: GpuBuf<u8>,
    /// (1,) the tensor's scale: a code's value times it is the weight.
    pub scale: GpuBuf<f32>,
}

/// A weight matrix on the device in either precision: the matrix type of
/// [`super::ops::CudaOps`].
pub enum DevWeight {
    Bf16(DevMatrix),
    Fp8(DevFp8Matrix),
}

impl DevWeight {
    pub fn rows(&self) -> usize {
        match self {
            DevWeight::Bf16(m) => m.rows,
            DevWeight::Fp8(m) => m.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            DevWeight::Bf16(m) => m.cols,
            DevWeight::Fp8(m) => m.cols,
        }
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        match self {
            DevWeight::Bf16(m) => 2 * m.rows * m.cols,
            DevWeight::Fp8(m) => m.rows * m.cols + 4,
        }
    }
}

/// Per step: the quantized product input of an FP8 product and its rows' scales, at fixed
/// addresses (graphs replay them).
pub struct Fp8Scratch {
    /// (rows, cols) codes of the current product's input.
    pub codes: GpuBuf<u8>,
    /// (rows,) each row's scale.
    pub row_scale: GpuBuf<f32>,
}

impl Fp8Scratch {
    /// Room for inputs of up to `rows` rows of `cols` values.
    pub fn new(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        Ok(Self {
            codes: gpu.zeros(rows * cols)?,
            row_scale: gpu.zeros(rows)?,
        })
    }
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Memory(format!(
            "{what}: a buffer is smaller than the launch reads"
        )))
    }
}

fn rows_cfg(n: usize) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// `s.codes (n, cols)` = the E4M3 codes of `x (n, cols)`, each row with its own scale in
    /// `s.row_scale` (twin: `Fp8Matrix::quantize(x, n, cols, PerRow)`). One launch.
    pub fn quantize_fp8(
        &self,
        x: &GpuBuf<bf16>,
        n: usize,
        cols: usize,
        s: &mut Fp8Scratch,
    ) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        check(
            x.len() >= n * cols && s.codes.len() >= n * cols && s.row_scale.len() >= n,
            "quantize_fp8",
        )?;
        let (xp, qp, sp) = (self.ptr(x), self.ptr(&s.codes), self.ptr(&s.row_scale));
        let c = cols as i32;
        let mut b = self.stream.launch_builder(&self.k8.quantize_rows);
        b.arg(&xp).arg(&qp).arg(&sp).arg(&c);
        // SAFETY: sizes checked above.
        unsafe { b.launch(rows_cfg(n)) }?;
        Ok(())
    }

    /// `y (n, out) *= row_scale[row]`.
    fn scale_rows(&self, y: u64, row_scale: &GpuBuf<f32>, n: usize, out: usize) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        let (sp, total, o) = (self.ptr(row_scale), (n * out) as u64, out as i32);
        let blocks = (n * out)
            .div_ceil(THREADS as usize)
            .clamp(1, 8 * self.info.multiprocessors.max(1));
        let mut b = self.stream.launch_builder(&self.k8.scale_rows);
        b.arg(&y).arg(&sp).arg(&total).arg(&o);
        // SAFETY: `y` holds n * out f32 and `row_scale` n (the caller's checks).
        unsafe { b.launch(rows_cfg(blocks)) }?;
        Ok(())
    }

    /// `y (n, w.rows) f32 = x (n, w.cols) bf16 · wᵀ` with `w` in FP8: `x` quantized row by row
    /// into `scratch`, cuBLASLt's FP8 product scaled by the weight's scale, then each output row
    /// by its input row's scale.
    pub fn matmul_fp8(
        &self,
        x: &GpuBuf<bf16>,
        w: &DevFp8Matrix,
        y: &mut GpuBuf<f32>,
        n: usize,
        scratch: &mut Fp8Scratch,
    ) -> Result<()> {
        check(
            x.len() >= n * w.cols && y.len() >= n * w.rows && w.codes.len() == w.rows * w.cols,
            "matmul_fp8",
        )?;
        if n == 0 {
            return Ok(());
        }
        self.quantize_fp8(x, n, w.cols, scratch)?;
        let lt = &self.lt;
        let g = super::fp8_lt::Fp8Gemm {
            x: self.ptr(&scratch.codes),
            w: self.ptr(&w.codes),
            w_scale: self.ptr(&w.scale),
            y: self.ptr(y),
            n,
            inp: w.cols,
            out: w.rows,
            accumulate: false,
        };
        // SAFETY: every address is a live buffer of the shape `g` states (checked above).
        unsafe { lt.gemm(&self.stream, g) }?;
        self.scale_rows(g.y, &scratch.row_scale, n, w.rows)
    }

    /// `y = x · wᵀ` for a weight of either precision (`scratch` is used by FP8 weights only).
    pub fn matmul_any(
        &self,
        x: &GpuBuf<bf16>,
        w: &DevWeight,
        y: &mut GpuBuf<f32>,
        n: usize,
        scratch: Option<&mut Fp8Scratch>,
    ) -> Result<()> {
        match (w, scratch) {
            (DevWeight::Bf16(m), _) => self.matmul(x, m, y, n),
            (DevWeight::Fp8(m), Some(s)) => self.matmul_fp8(x, m, y, n, s),
            (DevWeight::Fp8(_), None) => Err(Error::Memory(
                "an FP8 product needs the step's FP8 scratch, and this step has none".into(),
            )),
        }
    }

    /// Fills `out[at..at + len]` with the dummy values of `key` (see [`dummy_value`]):
    /// bf16 `u * a` for indices 0..len.
    pub fn dummy_fill_bf16(
        &self,
        out: &mut GpuBuf<bf16>,
        (at, len): (usize, usize),
        key: u64,
        a: f32,
    ) -> Result<()> {
        check(at + len <= out.len(), "dummy_fill")?;
        let p = self.ptr(out) + 2 * at as u64;
        self.launch_dummy(p, len, key, a, false)
    }

    /// Fills `codes[at..at + len]` with the FP8 dummy codes of `key` ([`dummy_code`]); their
    /// scale is `a / 448`.
    pub fn dummy_fill_fp8(
        &self,
        codes: &mut GpuBuf<u8>,
        (at, len): (usize, usize),
        key: u64,
    ) -> Result<()> {
        check(at + len <= codes.len(), "dummy_fill")?;
        let p = self.ptr(codes) + at as u64;
        self.launch_dummy(p, len, key, 0.0, true)
    }

    fn launch_dummy(&self, out: u64, n: usize, key: u64, a: f32, fp8: bool) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        let (nn, f) = (n as u64, i32::from(fp8));
        let blocks = (n.div_ceil(THREADS as usize)).clamp(1, 8 * self.info.multiprocessors.max(1));
        let mut b = self.stream.launch_builder(&self.k8.dummy_fill);
        b.arg(&out).arg(&nn).arg(&key).arg(&a).arg(&f);
        // SAFETY: `out` addresses n elements of the kernel's output type (the callers' buffers).
        unsafe { b.launch(rows_cfg(blocks)) }?;
        Ok(())
    }
}

/// CPU twin of weight quantization: one scale for the tensor.
pub fn quantize_reference(values: &[f32], rows: usize, cols: usize) -> Result<Fp8Matrix> {
    Fp8Matrix::quantize(values, rows, cols, Fp8Scaling::PerTensor)
        .map_err(|e| Error::Memory(e.to_string()))
}

/// CPU twin of [`Gpu::quantize_fp8`]: each row of the activations with its own scale.
pub fn quantize_rows_reference(values: &[f32], rows: usize, cols: usize) -> Result<Fp8Matrix> {
    Fp8Matrix::quantize(values, rows, cols, Fp8Scaling::PerRow)
        .map_err(|e| Error::Memory(e.to_string()))
}

/// CPU reference of the FP8 product: `y (n, w.rows) = dequant(x) · dequant(w)ᵀ`, f32 sums of
/// code values, both scales applied once at the end (as the tensor cores accumulate codes).
pub fn gemm_reference(x: &Fp8Matrix, w: &Fp8Matrix) -> Vec<f32> {
    assert_eq!(x.cols, w.cols, "inner dimensions");
    let xv: Vec<f32> = x.codes.iter().map(|&c| e4m3_to_f32(c)).collect();
    let wv: Vec<f32> = w.codes.iter().map(|&c| e4m3_to_f32(c)).collect();
    let mut y = vec![0f32; x.rows * w.rows];
    for r in 0..x.rows {
        let xr = &xv[r * x.cols..(r + 1) * x.cols];
        for o in 0..w.rows {
            let wr = &wv[o * w.cols..(o + 1) * w.cols];
            let dot: f64 = xr.iter().zip(wr).map(|(a, b)| (a * b) as f64).sum();
            y[r * w.rows + o] = (dot * x.scale(r) as f64 * w.scale(o) as f64) as f32;
        }
    }
    y
}

/// The E4M3 code an FP8 KV cache stores for `x` under `scale` (vLLM's `k_scale`/`v_scale`).
pub fn kv_encode(x: f32, inv_scale: f32) -> u8 {
    f32_to_e4m3(x * inv_scale)
}

/// The value an FP8 KV cache's code stands for.
pub fn kv_decode(code: u8, scale: f32) -> f32 {
    e4m3_to_f32(code) * scale
}

/// One uniform value in [-1, 1) for (key, index): splitmix64 of the pair, 24 random bits (the
/// function `dummy_fill` computes on the device, and `crates/engine/src/dummy.rs` on the host).
pub fn dummy_value(key: u64, i: u64) -> f32 {
    let mut z = key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// The key of a dummy tensor: FNV-1a of its name, seeded.
pub fn dummy_key(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The half-width `a` of a dummy tensor's values, uniform in [-a, a) with variance 1/fan_in.
pub fn dummy_range(fan_in: usize) -> f32 {
    (3.0 / fan_in as f32).sqrt()
}

/// The FP8 dummy code of (key, i): `e4m3(448 u)`, so the tensor's scale is `a / 448` for values
/// uniform in [-a, a).
pub fn dummy_code(key: u64, i: u64) -> u8 {
    f32_to_e4m3(dummy_value(key, i) * E4M3_MAX)
}

#[cfg(test)]
mod tests;
