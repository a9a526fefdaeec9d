//! Compiling the kernel source with NVRTC, to a cubin for one real architecture (`sm_90`): the
//! machine code of that chip, which a driver older than the NVRTC that made it still loads (PTX
//! carries the ISA version of its compiler, and an older driver refuses a newer one).
//!
//! NVRTC needs no driver and no device, so the tests compile the whole source for sm_80 and sm_90
//! wherever an NVRTC library is found (`pip install nvidia-cuda-nvrtc`), with warnings as errors
//! and ptxas's report of registers and spills.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

use super::libs::{self, CudaLib};
use super::{Error, Result};

/// A compiled program.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The cubin (an ELF image the driver loads as it is).
    pub cubin: Vec<u8>,
    /// NVRTC's log: warnings, and with `--ptxas-options=-v` each kernel's registers and spills.
    pub log: String,
}

/// Finds and loads the NVRTC library alone (enough to compile; no driver needed).
pub fn ensure_nvrtc() -> Result<()> {
    if libs::ensure(CudaLib::Nvrtc) {
        Ok(())
    } else {
        Err(Error::MissingLibrary(vec![CudaLib::Nvrtc]))
    }
}

/// Compiles `src` for `arch` (`sm_80`, `sm_90`, ...) with `extra` options after the defaults
/// (C++17, warnings as errors).
pub fn compile(src: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    ensure_nvrtc()?;
    let fail = |log: String| Error::Compile {
        arch: arch.into(),
        log,
    };
    let csrc = CString::new(src).map_err(|_| fail("the source holds a NUL byte".into()))?;
    let name = CString::new("tokenfab_kernels.cu").expect("no NUL");
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-Werror=all-warnings".to_string(),
    ];
    opts.extend(extra.iter().map(|s| s.to_string()));
    let prog = result::create_program(&csrc, Some(&name)).map_err(|e| fail(e.to_string()))?;
    // SAFETY: `prog` was just created and is destroyed below, once; `csrc` and `name` outlive it.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = match compiled {
            Err(e) => Err(fail(format!("{e}: {log}"))),
            Ok(()) => cubin(prog).map(|cubin| Compiled { cubin, log }),
        };
        let _ = result::destroy_program(prog);
        out
    };
    out.map_err(|e| match e {
        Error::Compile { .. } => e,
        e => fail(e.to_string()),
    })
}

/// # Safety
/// `prog` is a live, compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| Error::Driver(format!("nvrtcGetCUBINSize: {e}")))?;
    let mut buf = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _)
        .result()
        .map_err(|e| Error::Driver(format!("nvrtcGetCUBIN: {e}")))?;
    Ok(buf)
}

/// The cubin of [`super::kernels::SOURCE`] for `arch`, compiled once per process.
pub fn kernels_for(arch: &str) -> Result<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let poisoned = || Error::Driver("the cubin cache lock is poisoned".into());
    if let Some(c) = cache.lock().map_err(|_| poisoned())?.get(arch) {
        return Ok(c.clone());
    }
    let c = compile(super::kernels::SOURCE, arch, &[])?;
    cache
        .lock()
        .map_err(|_| poisoned())?
        .insert(arch.into(), c.cubin.clone());
    Ok(c.cubin)
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{KERNELS, SOURCE};
    use super::*;

    /// Every kernel compiles for Ampere and Hopper with no warning and no register spill, and the
    /// cubin holds each launched kernel. Skipped, saying so, where no NVRTC library is found.
    #[test]
    fn every_kernel_compiles_for_sm80_and_sm90() {
        if ensure_nvrtc().is_err() {
            eprintln!(
                "skipped: no NVRTC library found (pip install --no-deps nvidia-cuda-nvrtc==13.5.37, \
                 or set TOKENFAB_CUDA_LIB_DIRS)"
            );
            return;
        }
        for arch in ["sm_80", "sm_90"] {
            let c = compile(SOURCE, arch, &["--ptxas-options=-v"])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(c.cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
            for k in KERNELS {
                let found = c
                    .cubin
                    .windows(k.len() + 1)
                    .any(|w| w[..k.len()] == *k.as_bytes() && w[k.len()] == 0);
                assert!(found, "{arch}: kernel `{k}` is not in the cubin");
            }
            for line in c.log.lines().filter(|l| l.contains("spill")) {
                assert!(
                    line.contains(" 0 bytes spill stores, 0 bytes spill loads"),
                    "{arch}: {line}"
                );
            }
            eprintln!("{arch}: {} bytes\n{}", c.cubin.len(), c.log);
        }
        // A mistake is a compile error naming the architecture and the line.
        let e = compile(
            "extern \"C\" __global__ void k() { int x = ; }",
            "sm_90",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sm_90") && e.contains("error"), "{e}");
    }
}
