//! `tokenfab gpu-probe`: whether a CUDA device is usable here and, when asked, its ceilings; the
//! versions of the CUDA libraries found; and `--compile-kernels`, every kernel compiled with each
//! NVRTC found (no driver or device needed). The CLI reaches the backend only through the engine.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
pub use tokenfab_backend::cuda::kernels::KERNELS;
use tokenfab_backend::cuda::kernels::SOURCE;
use tokenfab_backend::cuda::nvrtc::{self, KernelReport, Nvrtc};
use tokenfab_backend::cuda::{self, Gpu};

use crate::error::{Error, Result};

/// The device's facts as JSON: {"device", "ordinal", "compute_capability", "total_mem",
/// "free_mem", "multiprocessors"}, plus {"bandwidth_gbs", "bf16_tflops", "kernels_compiled"} when
/// `measure` (a few seconds: opening the device compiles the kernels with NVRTC, a check of its
/// own). An error says why there is no usable device.
pub fn probe(ordinal: usize, measure: bool) -> Result<Value> {
    let unusable = |e: cuda::Error| Error::Invalid(e.to_string());
    let info = cuda::probe(ordinal).map_err(unusable)?;
    let (major, minor) = info.compute_capability;
    let mut j = json!({
        "device": info.name,
        "ordinal": info.ordinal,
        "compute_capability": format!("{major}.{minor}"),
        "total_mem": info.total_mem,
        "free_mem": info.free_mem,
        "multiprocessors": info.multiprocessors,
    });
    if measure {
        let c = Gpu::new(ordinal)
            .and_then(|g| g.measure_ceilings())
            .map_err(unusable)?;
        j["bandwidth_gbs"] = c.bandwidth_gbs.into();
        j["bf16_tflops"] = c.bf16_tflops.into();
        j["kernels_compiled"] = true.into();
    }
    Ok(j)
}

/// {"driver": "13.0", "nvrtc": {"version": "13.5", "path"}, "cublas": "13.1.0"}, each null when
/// that library is not found.
pub fn versions() -> Value {
    let v = cuda::versions();
    json!({
        "driver": v.driver.map(|d| format!("{}.{}", d / 1000, d % 1000 / 10)),
        "nvrtc": v.nvrtc.map(|(p, (a, b))| json!({"version": format!("{a}.{b}"), "path": p})),
        "cublas": v.cublas.map(|(a, b, c)| format!("{a}.{b}.{c}")),
    })
}

/// One compile of every kernel: which NVRTC, which architecture, ptxas's report per kernel, and
/// why it fails the check (a compile error or warning, a kernel missing from the report, a
/// spill, local memory), if it does.
#[derive(Clone, Debug)]
pub struct CompileRun {
    pub nvrtc: PathBuf,
    /// "13.5"; empty when the library did not open.
    pub version: String,
    pub arch: String,
    pub cubin_bytes: usize,
    pub kernels: Vec<KernelReport>,
    pub error: Option<String>,
}

/// Compiles [`SOURCE`] for each of `archs` with each NVRTC in `libs` (every one found when
/// empty; none found is an error). Each run is checked by [`nvrtc::check_reports`] against
/// [`KERNELS`].
pub fn compile_kernels(libs: &[PathBuf], archs: &[String]) -> Result<Vec<CompileRun>> {
    let libs = if libs.is_empty() {
        nvrtc::candidates()
    } else {
        libs.to_vec()
    };
    if libs.is_empty() {
        return Err(Error::Invalid(
            "no NVRTC library found (pip install nvidia-cuda-nvrtc, or pass --nvrtc PATH)".into(),
        ));
    }
    let mut runs = Vec::new();
    for path in &libs {
        let lib = match Nvrtc::open(path) {
            Ok(l) => l,
            Err(e) => {
                runs.extend(archs.iter().map(|a| failed(path, a, e.to_string())));
                continue;
            }
        };
        for arch in archs {
            runs.push(compile_one(&lib, arch));
        }
    }
    Ok(runs)
}

fn failed(path: &Path, arch: &str, error: String) -> CompileRun {
    CompileRun {
        nvrtc: path.to_path_buf(),
        version: String::new(),
        arch: arch.into(),
        cubin_bytes: 0,
        kernels: Vec::new(),
        error: Some(error),
    }
}

fn compile_one(lib: &Nvrtc, arch: &str) -> CompileRun {
    let version = format!("{}.{}", lib.version.0, lib.version.1);
    match lib.compile(SOURCE, arch, &[]) {
        Err(e) => CompileRun {
            version,
            ..failed(&lib.path, arch, e.to_string())
        },
        Ok(c) => CompileRun {
            nvrtc: lib.path.clone(),
            version,
            arch: arch.into(),
            cubin_bytes: c.cubin.len(),
            error: nvrtc::check_reports(&c.kernels, KERNELS, arch)
                .err()
                .map(|e| e.to_string()),
            kernels: c.kernels,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reports_the_device_or_why_there_is_none() {
        match super::probe(0, false) {
            Ok(j) => {
                assert!(j["device"].as_str().is_some_and(|n| !n.is_empty()), "{j}");
                assert!(j["total_mem"].as_u64().is_some_and(|m| m > 0), "{j}");
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                eprintln!("device checks skipped: no CUDA device ({e})");
            }
        }
        assert!(super::probe(1 << 20, false).is_err());
        let v = versions();
        for k in ["driver", "nvrtc", "cublas"] {
            assert!(v.get(k).is_some(), "{v}");
        }
    }

    #[test]
    fn a_library_that_does_not_open_fails_its_runs() {
        let archs = ["sm_80".to_string(), "sm_90".to_string()];
        let runs =
            compile_kernels(&[PathBuf::from("/nonexistent/libnvrtc.so.12")], &archs).unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs
            .iter()
            .all(|r| r.error.is_some() && r.kernels.is_empty()));
    }
}
