//! cuBLASLt's FP8 product (loaded at run time with the other CUDA libraries, `.so.13` or
//! `.so.12`): E4M3 weights times E4M3 activations, f32 accumulation, f32 output, the weight's
//! per-tensor scale read from device memory (`A_SCALE_POINTER`; the activations' per-row scales
//! are applied after, by `fp8_scale_rows`), so no scale comes back to the host and the call can be
//! captured in a CUDA graph.
//!
//! Layout: row-major `y (n, out) = x (n, inp) · w (out, inp)ᵀ` is column-major
//! `yᵀ (out, n) = w · xᵀ`: A = w with op T (lda = inp), B = x with op N (ldb = inp), C = D = y
//! (ldd = out). This is the "TN" layout, the only one cuBLASLt's FP8 kernels take on Hopper;
//! `inp` and `out` must be multiples of 16 (FP8 leading dimensions), checked here.
//!
//! Descriptors, layouts and the heuristic's choice of algorithm are made once per shape (the
//! first, eager run of a step) and kept; the scale pointers are set on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::sys as lt;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::{Error, Result};

/// cuBLASLt's workspace: fixed, so captured products never allocate (NVIDIA's advice for Hopper).
const LT_WORKSPACE: usize = 32 << 20;

/// One FP8 product's operands as device addresses, and its shape.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Gemm {
    /// (n, inp) E4M3 activations (unit scale here).
    pub x: u64,
    /// (out, inp) E4M3 weights and their (1,) f32 scale.
    pub w: u64,
    pub w_scale: u64,
    /// (n, out) f32 output.
    pub y: u64,
    pub n: usize,
    pub inp: usize,
    pub out: usize,
    /// Adds to the old `y` (beta = 1).
    pub accumulate: bool,
}

/// Why an FP8 product of this shape cannot run, if it cannot.
pub fn check_shape(g: &Fp8Gemm) -> Result<()> {
    if !g.inp.is_multiple_of(16) || !g.out.is_multiple_of(16) {
        return Err(Error::Blas(format!(
            "an FP8 product needs input and output widths that are multiples of 16; this one is ({}, {})",
            g.out, g.inp
        )));
    }
    if g.n == 0 || g.n > i32::MAX as usize || g.inp * g.out > (1usize << 40) {
        return Err(Error::Blas(format!("FP8 product of {} rows", g.n)));
    }
    Ok(())
}

/// Descriptors and algorithm of one shape.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle with its workspace and the plans made so far.
pub struct Lt {
    handle: lt::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<(usize, usize, usize), Plan>>,
}

// SAFETY: the handle and descriptors are used by one owner at a time, under the plans' lock.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

fn ok(what: &str, s: lt::cublasStatus_t) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Blas(format!("cuBLASLt {what}: {s:?}")))
    }
}

/// Sets attribute `attr` of `desc` to `v`.
///
/// # Safety
/// `desc` is live and `T` is the attribute's type.
unsafe fn set<T>(
    desc: lt::cublasLtMatmulDesc_t,
    attr: lt::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    ok("set attribute", unsafe {
        lt::cublasLtMatmulDescSetAttribute(
            desc,
            attr,
            v as *const T as *const _,
            std::mem::size_of::<T>(),
        )
    })
}

impl Lt {
    /// A handle and its workspace on `stream`'s device.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: one valid out-pointer; the library was found by `libs::ensure_loaded`.
        ok("create", unsafe { lt::cublasLtCreate(&mut handle) })?;
        Ok(Self {
            handle,
            workspace: stream.alloc_zeros::<u8>(LT_WORKSPACE)?,
            plans: Mutex::default(),
        })
    }

    /// cuBLASLt's version, e.g. 130100 for 13.1.0.
    pub fn version() -> usize {
        // SAFETY: no arguments; the library is loaded.
        unsafe { lt::cublasLtGetVersion() }
    }

    fn plan(&self, n: usize, inp: usize, out: usize) -> Result<Plan> {
        use lt::cublasLtMatmulDescAttributes_t as A;
        use lt::cudaDataType_t as T;
        let mut desc = std::ptr::null_mut();
        // SAFETY: valid out-pointers and attribute types (cublasOperation_t is an i32: T = 1,
        // N = 0); everything made here is destroyed in `Drop`.
        unsafe {
            ok(
                "matmul descriptor",
                lt::cublasLtMatmulDescCreate(
                    &mut desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    T::CUDA_R_32F,
                ),
            )?;
            set(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
            set(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
            let mut layouts = [std::ptr::null_mut(); 3];
            let shapes = [
                (T::CUDA_R_8F_E4M3, inp, out, inp),
                (T::CUDA_R_8F_E4M3, inp, n, inp),
                (T::CUDA_R_32F, out, n, out),
            ];
            for (l, (ty, rows, cols, ld)) in layouts.iter_mut().zip(shapes) {
                ok(
                    "matrix layout",
                    lt::cublasLtMatrixLayoutCreate(l, ty, rows as u64, cols as u64, ld as i64),
                )?;
            }
            let mut pref = std::ptr::null_mut();
            ok("preference", lt::cublasLtMatmulPreferenceCreate(&mut pref))?;
            let ws = LT_WORKSPACE as u64;
            ok(
                "preference workspace",
                lt::cublasLtMatmulPreferenceSetAttribute(
                    pref,
                    lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const _,
                    8,
                ),
            )?;
            let mut found = 0;
            let mut res: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
            let [a, b, d] = layouts;
            let s = lt::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                a,
                b,
                d,
                d,
                pref,
                1,
                &mut res,
                &mut found,
            );
            lt::cublasLtMatmulPreferenceDestroy(pref);
            ok("heuristic", s)?;
            if found == 0 {
                return Err(Error::Blas(format!(
                    "cuBLASLt (version {}) has no FP8 algorithm for ({n} x {inp}) · ({out} x {inp})ᵀ on this device",
                    Self::version()
                )));
            }
            Ok(Plan {
                desc,
                layouts,
                algo: res.algo,
            })
        }
    }

    /// Runs `g` on `stream`, planning its shape first when new.
    ///
    /// # Safety
    /// The addresses of `g` are live device buffers of the shapes it states.
    pub unsafe fn gemm(&self, stream: &Arc<CudaStream>, g: Fp8Gemm) -> Result<()> {
        use lt::cublasLtMatmulDescAttributes_t as A;
        check_shape(&g)?;
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| Error::Blas("the cuBLASLt plan lock is poisoned".into()))?;
        let p = match plans.entry((g.n, g.inp, g.out)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(g.n, g.inp, g.out)?),
        };
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        let (ws, _) = self.workspace.device_ptr(stream);
        // SAFETY: the plan's descriptors are live; scale pointers address (1,) f32 buffers and
        // the operands their shapes (the caller's promise).
        unsafe {
            set(p.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &g.w_scale)?;
            let [a, b, d] = p.layouts;
            ok(
                "matmul",
                lt::cublasLtMatmul(
                    self.handle,
                    p.desc,
                    &alpha as *const f32 as *const _,
                    g.w as *const _,
                    a,
                    g.x as *const _,
                    b,
                    &beta as *const f32 as *const _,
                    g.y as *const _,
                    d,
                    g.y as *mut _,
                    d,
                    &p.algo,
                    ws as *mut _,
                    LT_WORKSPACE,
                    stream.cu_stream() as lt::cudaStream_t,
                ),
            )
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        let plans = std::mem::take(self.plans.get_mut().unwrap_or_else(|e| e.into_inner()));
        // SAFETY: each descriptor and the handle are destroyed once, after their last use.
        unsafe {
            for p in plans.into_values() {
                lt::cublasLtMatmulDescDestroy(p.desc);
                for l in p.layouts {
                    lt::cublasLtMatrixLayoutDestroy(l);
                }
            }
            lt::cublasLtDestroy(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: usize, inp: usize, out: usize) -> Fp8Gemm {
        Fp8Gemm {
            x: 0,
            w: 0,
            w_scale: 0,
            y: 0,
            n,
            inp,
            out,
            accumulate: false,
        }
    }

    /// The shapes of Llama 3 8B and 70B pass; widths off the 16-multiple grid name the shape.
    #[test]
    fn fp8_shapes() {
        for (inp, out) in [(4096, 6144), (4096, 28672), (14336, 4096), (8192, 10240)] {
            for n in [1, 7, 256, 512] {
                check_shape(&g(n, inp, out)).unwrap();
            }
        }
        let e = check_shape(&g(4, 584, 48)).unwrap_err().to_string();
        assert!(
            e.contains("(48, 584)") && e.contains("multiples of 16"),
            "{e}"
        );
        assert!(check_shape(&g(0, 64, 64)).is_err());
    }
}
