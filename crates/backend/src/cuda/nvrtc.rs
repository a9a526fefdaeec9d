//! Compiling the kernel source with NVRTC, to a cubin for one real architecture (`sm_90`): the
//! machine code of that chip, which a driver older than the NVRTC that made it still loads (PTX
//! carries the ISA version of its compiler, and an older driver refuses a newer one).
//!
//! NVRTC needs no driver and no device. It is opened here by full path with `libloading` (not
//! through cudarc, whose one process-wide library could not be a second version), so one process
//! can compile with every NVRTC it finds: `tokenfab gpu-probe --compile-kernels` compiles the
//! kernels for sm_80 and sm_90 with NVRTC 13 and 12 alike (`pip install nvidia-cuda-nvrtc
//! nvidia-cuda-nvrtc-cu12`), warnings as errors, and reports ptxas's registers, spills, stack and
//! shared memory per kernel ([`KernelReport`], checked by [`check_reports`]).

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::libs::{self, CudaLib};
use super::{Error, Result};

type Prog = *mut c_void;
type Status = c_int;

/// The NVRTC entry points tokenfab uses (stable across NVRTC 11 to 13).
#[derive(Clone, Copy)]
struct Fns {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    create: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Prog) -> Status,
}

/// One NVRTC library, opened by path.
pub struct Nvrtc {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// (major, minor), e.g. (13, 5).
    pub version: (i32, i32),
    f: Fns,
    _lib: libloading::Library,
}

/// A compiled program.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The cubin (an ELF image the driver loads as it is).
    pub cubin: Vec<u8>,
    /// NVRTC's log: ptxas's report of each kernel (`--ptxas-options=-v` is always given).
    pub log: String,
    /// Each kernel's resources, parsed from the log.
    pub kernels: Vec<KernelReport>,
}

/// What ptxas reports for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub arch: String,
    pub registers: u32,
    /// Bytes of local memory: the stack frame (arrays indexed at run time live there) plus any
    /// `lmem` ptxas lists.
    pub local_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Static shared memory per block.
    pub shared_bytes: u32,
}

impl std::fmt::Display for KernelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<6} {:<24} {:>4} regs {:>6} B smem {:>4} B local {:>4}/{:<4} B spill st/ld",
            self.arch,
            self.name,
            self.registers,
            self.shared_bytes,
            self.local_bytes,
            self.spill_stores,
            self.spill_loads
        )
    }
}

fn status(what: &str, s: Status) -> Result<()> {
    if s == 0 {
        Ok(())
    } else {
        Err(Error::Driver(format!("{what}: NVRTC status {s}")))
    }
}

impl Nvrtc {
    /// Opens the NVRTC library at `path` (it finds its builtins library beside itself).
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |e: String| Error::Driver(format!("NVRTC at {}: {e}", path.display()));
        // SAFETY: loading NVRTC runs its initializers, which is what using it requires.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| bad(e.to_string()))?;
        // SAFETY: the symbols have these C signatures in every NVRTC since 11.0; the pointers
        // are used only while `lib` (kept in the result) is loaded.
        let f = unsafe {
            Fns {
                version: sym(&lib, "nvrtcVersion", path)?,
                create: sym(&lib, "nvrtcCreateProgram", path)?,
                compile: sym(&lib, "nvrtcCompileProgram", path)?,
                log_size: sym(&lib, "nvrtcGetProgramLogSize", path)?,
                log: sym(&lib, "nvrtcGetProgramLog", path)?,
                cubin_size: sym(&lib, "nvrtcGetCUBINSize", path)?,
                cubin: sym(&lib, "nvrtcGetCUBIN", path)?,
                destroy: sym(&lib, "nvrtcDestroyProgram", path)?,
            }
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        status("nvrtcVersion", unsafe {
            (f.version)(&mut major, &mut minor)
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            version: (major, minor),
            f,
            _lib: lib,
        })
    }

    /// Compiles `src` for `arch` (`sm_80`, `sm_90`, ...) with `extra` options after the defaults
    /// (C++17, ptxas's verbose report, warnings as errors). NVRTC 12 has no `-Werror`, so on
    /// every version a log line holding `warning` fails the compile as well.
    pub fn compile(&self, src: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
        let fail = |log: String| Error::Compile {
            arch: format!("{arch} (NVRTC {}.{})", self.version.0, self.version.1),
            log,
        };
        let csrc = CString::new(src).map_err(|_| fail("the source holds a NUL byte".into()))?;
        let name = c"tokenfab_kernels.cu";
        let mut opts = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
            "--ptxas-options=-v".to_string(),
        ];
        if self.version.0 >= 13 {
            opts.push("-Werror=all-warnings".into());
        }
        opts.extend(extra.iter().map(|s| s.to_string()));
        let copts: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(o.as_str()).map_err(|_| fail(format!("option {o:?}"))))
            .collect::<Result<_>>()?;
        let ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        let f = self.f;
        // SAFETY: valid C strings outliving the program; no headers are passed.
        let s = unsafe {
            (f.create)(
                &mut prog,
                csrc.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        status("nvrtcCreateProgram", s).map_err(|e| fail(e.to_string()))?;
        // SAFETY: `prog` is live until destroyed at the end, once.
        let out = unsafe {
            let compiled = (f.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
            let log = read_buf(prog, f.log_size, f.log)
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_default();
            let warned = log
                .lines()
                .any(|l| l.to_ascii_lowercase().contains("warning"));
            let out = if compiled != 0 {
                Err(fail(format!("NVRTC status {compiled}: {log}")))
            } else if warned {
                Err(fail(format!("warnings are errors: {log}")))
            } else {
                read_buf(prog, f.cubin_size, f.cubin).map(|cubin| Compiled {
                    kernels: parse_ptxas_log(&log),
                    cubin,
                    log,
                })
            };
            (f.destroy)(&mut prog);
            out
        };
        out.map_err(|e| match e {
            Error::Compile { .. } => e,
            e => fail(e.to_string()),
        })
    }
}

/// The symbol `name` of `lib` as a `T`.
///
/// # Safety
/// `T` is the symbol's true (function pointer) type, used only while `lib` is loaded.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &str, path: &Path) -> Result<T> {
    lib.get::<T>(format!("{name}\0").as_bytes())
        .map(|s| *s)
        .map_err(|e| Error::Driver(format!("NVRTC at {}: {name}: {e}", path.display())))
}

/// # Safety
/// `prog` is a live program; `size` and `get` are a matching NVRTC pair.
unsafe fn read_buf(
    prog: Prog,
    size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    get: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
) -> Result<Vec<u8>> {
    let mut n = 0usize;
    status("size", size(prog, &mut n))?;
    let mut buf = vec![0u8; n];
    if n > 0 {
        status("read", get(prog, buf.as_mut_ptr() as *mut c_char))?;
    }
    Ok(buf)
}

/// Every NVRTC library found, newest major version first: `$TOKENFAB_NVRTC` (a path) alone when
/// set, else `libnvrtc.so.13`, `.so.12` and `.so` in the loader's folders and
/// [`libs::search_dirs`] (Python `nvidia/cu13/lib`, `nvidia/cuda_nvrtc/lib`, ...).
pub fn candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("TOKENFAB_NVRTC") {
        return vec![PathBuf::from(p)];
    }
    let mut dirs = libs::loader_dirs();
    dirs.extend(libs::search_dirs());
    let mut found: Vec<PathBuf> = Vec::new();
    for name in CudaLib::Nvrtc.file_names() {
        for d in &dirs {
            let p = d.join(name);
            let real = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            let seen = found
                .iter()
                .any(|f| std::fs::canonicalize(f).is_ok_and(|r| r == real));
            if p.is_file() && !seen {
                found.push(p);
            }
        }
    }
    found
}

/// The NVRTC the device path compiles with: the first of [`candidates`] that opens, loaded once
/// per process.
pub fn shared() -> Result<&'static Nvrtc> {
    static LIB: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut why = Vec::new();
        for p in candidates() {
            match Nvrtc::open(&p) {
                Ok(l) => return Ok(l),
                Err(e) => why.push(e.to_string()),
            }
        }
        Err(why.join("; "))
    })
    .as_ref()
    .map_err(|why| {
        if why.is_empty() {
            Error::MissingLibrary(vec![CudaLib::Nvrtc])
        } else {
            Error::Driver(why.clone())
        }
    })
}

/// Whether an NVRTC library can be opened (enough to compile; no driver needed).
pub fn ensure_nvrtc() -> Result<()> {
    shared().map(|_| ())
}

/// Compiles `src` for `arch` with the [`shared`] NVRTC.
pub fn compile(src: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    shared()?.compile(src, arch, extra)
}

/// The cubin of [`super::kernels::SOURCE`] for `arch`, compiled once per process.
pub fn kernels_for(arch: &str) -> Result<Vec<u8>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let poisoned = || Error::Driver("the cubin cache lock is poisoned".into());
    if let Some(c) = cache.lock().map_err(|_| poisoned())?.get(arch) {
        return Ok(c.clone());
    }
    let c = compile(super::kernels::SOURCE, arch, &[])?;
    check_reports(&c.kernels, super::kernels::KERNELS, arch)?;
    cache
        .lock()
        .map_err(|_| poisoned())?
        .insert(arch.into(), c.cubin.clone());
    Ok(c.cubin)
}

/// ptxas's `-v` report, one entry per kernel:
/// ```text
/// ptxas info    : Compiling entry function 'glu' for 'sm_90'
/// ptxas info    : Function properties for glu
/// ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 24 registers, used 0 barriers, 128 bytes smem
/// ```
pub fn parse_ptxas_log(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelReport {
                name,
                arch,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("stack frame") || line.contains("registers") {
            for (n, what) in numbers_before(line) {
                match what.as_str() {
                    "bytes stack frame" | "bytes lmem" => k.local_bytes += n,
                    "bytes spill stores" => k.spill_stores = n,
                    "bytes spill loads" => k.spill_loads = n,
                    "bytes smem" => k.shared_bytes = n,
                    "registers" => k.registers = n,
                    _ => {}
                }
            }
        }
    }
    out
}

/// `"Used 24 registers, 128 bytes smem"` -> [(24, "registers"), (128, "bytes smem")]: each
/// comma-separated item that holds a number, with the words after it.
fn numbers_before(line: &str) -> Vec<(u32, String)> {
    let body = line.rsplit(':').next().unwrap_or(line);
    body.split(',')
        .filter_map(|item| {
            let words: Vec<&str> = item.split_whitespace().filter(|w| *w != ".").collect();
            let at = words.iter().position(|w| w.parse::<u32>().is_ok())?;
            let n = words[at].parse().ok()?;
            Some((n, words[at + 1..].join(" ")))
        })
        .collect()
}

/// Every kernel of `expected` was reported for `arch`, with no spill and no local memory.
pub fn check_reports(reports: &[KernelReport], expected: &[&str], arch: &str) -> Result<()> {
    let mut bad = Vec::new();
    for k in expected {
        match reports.iter().find(|r| r.name == *k && r.arch == arch) {
            None => bad.push(format!("`{k}` is not in ptxas's report for {arch}")),
            Some(r) if r.spill_stores + r.spill_loads > 0 => {
                bad.push(format!("`{k}` spills registers on {arch}: {r}"))
            }
            Some(r) if r.local_bytes > 0 => {
                bad.push(format!("`{k}` uses local memory on {arch}: {r}"))
            }
            Some(_) => {}
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Compile {
            arch: arch.into(),
            log: bad.join("; "),
        })
    }
}

#[cfg(test)]
mod tests;
