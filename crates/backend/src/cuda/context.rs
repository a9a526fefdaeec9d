//! One device: its context, a stream, a cuBLAS handle with a fixed workspace (so GEMMs can be
//! captured in CUDA graphs), and the kernels of [`super::kernels`] compiled by NVRTC to a cubin
//! for the device's own architecture, once per process.

use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::Ptx;

use super::launch::Kernels;
use super::{info_of, libs, nvrtc, DeviceInfo, Error, Result};

/// A device buffer.
pub type GpuBuf<T> = CudaSlice<T>;

/// cuBLAS workspace: fixed, so that captured graphs never allocate.
const BLAS_WORKSPACE: usize = 32 << 20;

/// An open device with its kernels loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// The stream everything runs on (not the legacy default stream, which cannot be captured).
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    pub info: DeviceInfo,
    /// The kernels, launched through the typed functions of [`super::launch`].
    pub(crate) k: Kernels,
    /// The FP8 kernels ([`super::fp8`]).
    pub(crate) k8: super::fp8::Kernels,
    /// cuBLASLt, for FP8 products ([`super::fp8_lt`]).
    pub lt: super::fp8_lt::Lt,
    _workspace: CudaSlice<u8>,
}

// SAFETY: the context is bound to the calling thread before every use (`bind`), and one owner
// (the engine thread) uses a `Gpu` at a time.
unsafe impl Send for Gpu {}

impl Gpu {
    /// Opens device `ordinal`: checks the libraries first (a missing one is an error, not a panic).
    pub fn new(ordinal: usize) -> Result<Self> {
        super::probe(ordinal)?;
        let missing = libs::ensure_loaded();
        if !missing.is_empty() {
            return Err(Error::MissingLibrary(missing.to_vec()));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream, one owner: cudarc's per-buffer event tracking would only add launches
        // (and events recorded inside a graph capture).
        // SAFETY: nothing else uses this context's buffers from another stream.
        unsafe { ctx.disable_event_tracking() };
        let info = info_of(&ctx)?;
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE)?;
        {
            let (ws, _g) = workspace.device_ptr(&stream);
            // SAFETY: the workspace lives as long as the handle (both owned by `Gpu`).
            unsafe {
                blas_sys::cublasSetWorkspace_v2(*blas.handle(), ws as *mut _, BLAS_WORKSPACE)
                    .result()?;
            }
        }
        let cubin = nvrtc::kernels_for(&info.arch())?;
        let module = ctx.load_module(Ptx::from_binary(cubin))?;
        Ok(Self {
            k: Kernels::load(&module)?,
            k8: super::fp8::Kernels::load(&module)?,
            lt: super::fp8_lt::Lt::new(&stream)?,
            ctx,
            stream,
            blas,
            info,
            _workspace: workspace,
        })
    }

    /// Makes the context current on the calling thread (the engine thread may differ from the one
    /// that opened the device).
    pub fn bind(&self) -> Result<()> {
        Ok(self.ctx.bind_to_thread()?)
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies `host` into the start of `dst`.
    pub fn write<T: DeviceRepr>(&self, host: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if host.len() > dst.len() {
            return Err(Error::Memory(format!(
                "{} values do not fit a buffer of {}",
                host.len(),
                dst.len()
            )));
        }
        if host.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(..host.len());
        Ok(self.stream.memcpy_htod(host, &mut view)?)
    }

    /// Copies the first `n` values of `src` back.
    pub fn read<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if n > 0 {
            self.stream.memcpy_dtoh(&src.slice(..n), &mut out)?;
        }
        self.stream.synchronize()?;
        Ok(out)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    /// The device address of a buffer (event tracking is off, so no guard is needed).
    pub fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// `y (n, out) f32 = x (n, in) bf16 · w (out, in)ᵀ bf16`, plus the old `y` when `accumulate`
    /// (the residual add for free). f32 accumulation on the tensor cores.
    ///
    /// # Safety
    /// The pointers must address live device buffers of at least those shapes.
    pub unsafe fn gemm_bf16(&self, g: Gemm) -> Result<()> {
        // Row-major y (n, out) is column-major yᵀ (out, n) = w (out, in) · xᵀ (in, n); row-major
        // w (out, in) read column-major is wᵀ, hence op(A) = T with lda = in.
        let alpha = 1.0f32;
        let beta = if g.accumulate { 1.0f32 } else { 0.0 };
        cudarc::cublas::result::gemm_ex(
            *self.blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            g.out as i32,
            g.n as i32,
            g.inp as i32,
            &alpha as *const f32 as *const _,
            g.w as *const _,
            blas_sys::cudaDataType_t::CUDA_R_16BF,
            g.inp as i32,
            g.x as *const _,
            blas_sys::cudaDataType_t::CUDA_R_16BF,
            g.inp as i32,
            &beta as *const f32 as *const _,
            g.y as *mut _,
            blas_sys::cudaDataType_t::CUDA_R_32F,
            g.out as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
        Ok(())
    }

    /// Measures the ceilings the gpu-check reports against: device-to-device copy bandwidth
    /// (GB/s, bytes read plus written) and the bf16 GEMM rate (TFLOP/s) on an 8192³ product.
    pub fn measure_ceilings(&self) -> Result<Ceilings> {
        self.bind()?;
        let n_bytes: usize = 2 << 30;
        let src = self.zeros::<u8>(n_bytes)?;
        let mut dst = self.zeros::<u8>(n_bytes)?;
        let reps = 10;
        self.stream.memcpy_dtod(&src, &mut dst)?; // warm-up
        self.stream.synchronize()?;
        let t = Instant::now();
        for _ in 0..reps {
            self.stream.memcpy_dtod(&src, &mut dst)?;
        }
        self.stream.synchronize()?;
        let bandwidth_gbs = (2 * n_bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        drop((src, dst));

        let d = 8192usize;
        let a = self.zeros::<half::bf16>(d * d)?;
        let b = self.zeros::<half::bf16>(d * d)?;
        let c = self.zeros::<f32>(d * d)?;
        // Random-ish contents matter little to cuBLAS's rate but zeros can be special-cased by
        // power management; fill with a pattern.
        let pattern: Vec<half::bf16> = (0..d * d)
            .map(|i| half::bf16::from_f32(((i * 7919 % 2003) as f32 - 1001.0) / 1001.0))
            .collect();
        let (mut a, mut b) = (a, b);
        self.write(&pattern, &mut a)?;
        self.write(&pattern, &mut b)?;
        let g = Gemm {
            x: self.ptr(&a),
            w: self.ptr(&b),
            y: self.ptr(&c),
            n: d,
            inp: d,
            out: d,
            accumulate: false,
        };
        // SAFETY: three live d×d buffers.
        unsafe { self.gemm_bf16(g)? };
        self.stream.synchronize()?;
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            // SAFETY: as above.
            unsafe { self.gemm_bf16(g)? };
        }
        self.stream.synchronize()?;
        let bf16_tflops = (2 * d * d * d * reps) as f64 / t.elapsed().as_secs_f64() / 1e12;
        Ok(Ceilings {
            bandwidth_gbs,
            bf16_tflops,
        })
    }
}

/// One GEMM's operands as device addresses and its shape.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// (n, inp) bf16 activations.
    pub x: u64,
    /// (out, inp) bf16 weights.
    pub w: u64,
    /// (n, out) f32 output.
    pub y: u64,
    pub n: usize,
    pub inp: usize,
    pub out: usize,
    pub accumulate: bool,
}

/// Measured device ceilings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    pub bandwidth_gbs: f64,
    pub bf16_tflops: f64,
}
