//! The CUDA backend: NVIDIA GPUs through the driver API, cuBLAS and NVRTC, all loaded at run time
//! (cudarc with `dynamic-loading`), so the binary builds and runs where there is no CUDA at all.
//!
//! - [`libs`]: finds the libraries (loader path, `$CUDA_HOME`, `/usr/local/cuda`, Python
//!   `nvidia/*/lib`) before cudarc opens them, which would panic on a missing one.
//! - [`probe`]: is there a usable device? A typed [`Error`] when not, never a panic.
//! - [`context`]: one device's context, stream, cuBLAS handle and kernels.
//! - [`nvrtc`]: compiling the kernels to a cubin for the device's architecture (cached per
//!   process) with any NVRTC 12 or 13 found, opened by path; ptxas's per-kernel report, checked
//!   for spills and local memory. `tokenfab gpu-probe --compile-kernels` and the tests compile
//!   them for sm_80 and sm_90 without a GPU.
//! - [`kernels`]: the CUDA C source and the table of kernel names.
//! - [`launch`]: one typed function per kernel (buffers and shapes checked, then launched) and
//!   the bf16 GEMM.
//! - [`prefill_attention`]: tiled attention for prefill chunks (K/V tiles shared by a tile's
//!   query rows).
//! - [`ops`]: the device operations of [`crate::ops`] on these ([`ops::CudaOps`]).
//! - [`sampling`]: sampling on the device and its CPU twin; [`token_mask`]: grammar masks.
//! - [`staging`]: a step's inputs packed into one pinned buffer, one upload; [`feed`]: input
//!   tokens taken from the previous step's sampled tokens on the device (async scheduling).
//! - [`fp8`]: FP8 (E4M3) weights, activation quantization, the FP8 KV cache's conversion and
//!   dummy weights made on the device, each with its CPU twin; [`fp8_lt`]: cuBLASLt's FP8 product.
//! - [`graphs`]: batch-size buckets for CUDA graphs of decode steps.
//! - [`memory`]: sizing the KV pool from free device memory.
//!
//! Invariant: nothing here calls into a CUDA library before [`libs::ensure_loaded`] found it; every
//! failure is an [`Error`].

pub mod context;
#[cfg(test)]
mod device_tests;
pub mod feed;
pub mod fp8;
pub mod fp8_lt;
pub mod graphs;
pub mod kernels;
pub mod launch;
pub mod libs;
pub mod memory;
pub mod nvrtc;
pub mod ops;
pub mod prefill_attention;
pub mod sampling;
pub mod staging;
pub mod token_mask;

pub use context::{Ceilings, Gemm, Gpu, GpuBuf};
/// The bindings themselves, for callers that launch kernels and capture graphs.
pub use cudarc;
pub use libs::CudaLib;

/// Why the CUDA backend cannot run, or what failed on the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CUDA libraries not found: {} (searched the loader's path, $CUDA_HOME, /usr/local/cuda and Python nvidia/*/lib folders)", list(.0))]
    MissingLibrary(Vec<CudaLib>),
    #[error("no CUDA device {ordinal}: {count} device(s) found")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("NVRTC could not compile the kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("device memory: {0}")]
    Memory(String),
}

fn list(libs: &[CudaLib]) -> String {
    libs.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Driver(e.to_string())
    }
}

impl From<cudarc::cublas::result::CublasError> for Error {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        Error::Blas(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor): (9, 0) on Hopper.
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    pub free_mem: usize,
    pub multiprocessors: usize,
}

impl DeviceInfo {
    /// NVRTC's target for this device: `sm_90` on Hopper (a cubin of the chip's own code).
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Checks that the libraries load and device `ordinal` exists. Creating no context beyond the
/// device's primary one, this is cheap enough to call before choosing a backend.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    let missing = libs::ensure_loaded();
    if !missing.is_empty() {
        return Err(Error::MissingLibrary(missing.to_vec()));
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        // cuInit fails with "no device" on machines with a driver and no GPU.
        Error::Driver(format!("cuInit: {e}"))
    })? as usize;
    if ordinal >= count {
        return Err(Error::NoDevice { ordinal, count });
    }
    let ctx = cudarc::driver::CudaContext::new(ordinal)?;
    info_of(&ctx)
}

/// Versions of the CUDA libraries found here (each `None` when that library is missing).
#[derive(Clone, Debug, PartialEq)]
pub struct Versions {
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver: Option<i32>,
    /// The NVRTC the device path uses: its file and (major, minor).
    pub nvrtc: Option<(std::path::PathBuf, (i32, i32))>,
    /// cuBLAS (major, minor, patch).
    pub cublas: Option<(i32, i32, i32)>,
}

/// Asks each library found for its version; needs no device.
pub fn versions() -> Versions {
    let driver = libs::ensure(CudaLib::Driver)
        .then(|| {
            let mut v = 0;
            // SAFETY: the library is loaded; one valid out-pointer.
            let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
            (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
        })
        .flatten();
    let cublas = libs::ensure(CudaLib::Cublas)
        .then(|| {
            use cudarc::cublas::sys::{cublasGetProperty, cublasStatus_t, libraryPropertyType_t};
            let mut v = [0; 3];
            let kinds = [
                libraryPropertyType_t::MAJOR_VERSION,
                libraryPropertyType_t::MINOR_VERSION,
                libraryPropertyType_t::PATCH_LEVEL,
            ];
            for (k, out) in kinds.into_iter().zip(&mut v) {
                // SAFETY: the library is loaded; one valid out-pointer.
                let r = unsafe { cublasGetProperty(k, out) };
                if r != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return None;
                }
            }
            Some((v[0], v[1], v[2]))
        })
        .flatten();
    let nvrtc = nvrtc::shared().ok().map(|l| (l.path.clone(), l.version));
    Versions {
        driver,
        nvrtc,
        cublas,
    }
}

pub(crate) fn info_of(ctx: &std::sync::Arc<cudarc::driver::CudaContext>) -> Result<DeviceInfo> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let (free_mem, total_mem) = ctx.mem_get_info()?;
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_mem,
        free_mem,
        multiprocessors: ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without CUDA (as where CI runs) the probe is a typed error; with a device, its facts are
    /// those of a real GPU.
    #[test]
    fn probe_describes_the_device_or_is_a_typed_error() {
        match probe(0) {
            Ok(info) => {
                assert_eq!(info.ordinal, 0);
                assert!(!info.name.trim().is_empty(), "{info:?}");
                assert!(info.compute_capability.0 >= 3, "{info:?}");
                assert!(info.multiprocessors > 0, "{info:?}");
                assert!(
                    info.total_mem > 0 && info.free_mem <= info.total_mem,
                    "{info:?}"
                );
                let (major, minor) = info.compute_capability;
                assert_eq!(info.arch(), format!("sm_{major}{minor}"));
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    matches!(
                        e,
                        Error::MissingLibrary(_) | Error::NoDevice { .. } | Error::Driver(_)
                    ),
                    "{msg}"
                );
                eprintln!("device checks skipped: no CUDA device ({msg})");
            }
        }
        // A device number far past any machine's is always "no device" (or missing libraries).
        assert!(probe(1 << 20).is_err());
    }

    /// Whatever is installed, asking for versions never fails; an NVRTC found reports 11 to 13.
    #[test]
    fn versions_of_what_is_found() {
        let v = versions();
        if let Some((path, (major, _))) = &v.nvrtc {
            assert!(path.exists() && (11..=13).contains(major), "{v:?}");
        }
        if let Some(d) = v.driver {
            assert!(d >= 11000, "{v:?}");
        }
        eprintln!("{v:?}");
    }

    #[test]
    fn arch_from_compute_capability() {
        let info = DeviceInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            total_mem: 0,
            free_mem: 0,
            multiprocessors: 132,
        };
        assert_eq!(info.arch(), "sm_90");
    }
}
