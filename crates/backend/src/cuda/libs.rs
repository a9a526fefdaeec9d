//! Finding the CUDA libraries at run time, before cudarc touches them.
//!
//! cudarc (with `dynamic-loading`) opens `libcuda`, `libcublas`, `libcublasLt` and `libnvrtc` by
//! bare name through `dlopen`, which searches only the loader's path (`LD_LIBRARY_PATH`, as read
//! at process start, the ld cache, the system folders) and panics when a library is missing.
//! So we first look for the libraries ourselves, also in the folders where they usually live off
//! the loader's path (Python's `nvidia/*/lib` wheels, `/usr/local/cuda`, `$CUDA_HOME`), and open
//! any found there by full path, keeping them open: `dlopen` of a bare soname then finds the
//! already-loaded library. Then each of cudarc's `is_culib_present` must say yes, else we return
//! a typed error naming what is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A CUDA library tokenfab needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaLib {
    /// The driver API (`libcuda.so`, from the NVIDIA driver).
    Driver,
    Cublas,
    CublasLt,
    Nvrtc,
}

impl CudaLib {
    pub const ALL: [CudaLib; 4] = [
        CudaLib::Driver,
        CudaLib::CublasLt,
        CudaLib::Cublas,
        CudaLib::Nvrtc,
    ];

    /// File names to look for, newest first: CUDA 13, then 12 (cudarc's bindings are of 13;
    /// the entry points tokenfab calls are the same in 12), then the unversioned link.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            CudaLib::Driver => &["libcuda.so.1", "libcuda.so"],
            CudaLib::Cublas => &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
            CudaLib::CublasLt => &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"],
            CudaLib::Nvrtc => &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
        }
    }

    /// Whether the library can be used now: cudarc can open it (NVRTC: [`super::nvrtc`] opened
    /// one itself, by path).
    pub fn present(self) -> bool {
        // SAFETY: these only try `dlopen` on candidate names and close what they open.
        unsafe {
            match self {
                CudaLib::Driver => cudarc::driver::sys::is_culib_present(),
                CudaLib::Cublas => cudarc::cublas::sys::is_culib_present(),
                CudaLib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
                CudaLib::Nvrtc => super::nvrtc::shared().is_ok(),
            }
        }
    }
}

impl std::fmt::Display for CudaLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file_names().last().expect("at least one name"))
    }
}

/// The folders the dynamic loader searches by itself: `$LD_LIBRARY_PATH`, then the usual
/// system library folders (the ld cache mostly lists these).
pub fn loader_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

/// Folders to search besides the loader's own path, in order: `$TOKENFAB_CUDA_LIB_DIRS`
/// (colon-separated), `$CUDA_HOME`/`$CUDA_PATH` `lib64`, `/usr/local/cuda/lib64`, then every
/// `site-packages/nvidia/*/lib` (and `nvidia/cu13/lib`) under the usual Python prefixes
/// (system, conda, virtualenv, user, pyenv).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("TOKENFAB_CUDA_LIB_DIRS") {
        dirs.extend(std::env::split_paths(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(Path::new(&v).join("lib64"));
            dirs.push(Path::new(&v).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    let mut prefixes: Vec<PathBuf> = vec![
        "/usr/lib".into(),
        "/usr/local/lib".into(),
        "/opt/conda/lib".into(),
    ];
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(Path::new(&v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        prefixes.push(Path::new(&h).join(".local/lib"));
    }
    // pyenv's interpreters, each with its own site-packages.
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(root) = pyenv {
        prefixes.extend(
            read_dir_sorted(&root.join("versions"))
                .into_iter()
                .map(|v| v.join("lib")),
        );
    }
    for prefix in prefixes {
        for py in read_dir_sorted(&prefix) {
            let name = py.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.starts_with("python3")) {
                continue;
            }
            for sp in ["site-packages", "dist-packages"] {
                let nv = py.join(sp).join("nvidia");
                for pkg in read_dir_sorted(&nv) {
                    dirs.push(pkg.join("lib"));
                }
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The first file of `lib` found in `dirs`.
pub fn find_in(lib: CudaLib, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().find_map(|d| {
        lib.file_names()
            .iter()
            .map(|f| d.join(f))
            .find(|p| p.is_file())
    })
}

/// Whether `lib` can be opened, after looking for it off the loader's path and loading it from
/// there if found (done once per library and process; a library found stays loaded).
pub fn ensure(lib: CudaLib) -> bool {
    static DONE: [OnceLock<bool>; 4] = [const { OnceLock::new() }; 4];
    *DONE[lib as usize].get_or_init(|| {
        if lib.present() {
            return true;
        }
        if let Some(path) = find_in(lib, &search_dirs()) {
            // SAFETY: loading a CUDA library runs its initializers, which is what using it
            // requires anyway. The handle is leaked so the library stays loaded.
            if let Ok(l) = unsafe { libloading::Library::new(&path) } {
                std::mem::forget(l);
            }
        }
        lib.present()
    })
}

/// Which libraries are missing after the search; empty when all are there.
pub fn ensure_loaded() -> &'static [CudaLib] {
    static MISSING: OnceLock<Vec<CudaLib>> = OnceLock::new();
    MISSING.get_or_init(|| {
        CudaLib::ALL
            .into_iter()
            .filter(|&lib| !ensure(lib))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_library_in_a_python_style_folder() {
        let root = std::env::temp_dir().join(format!("tokenfab-libs-{}", std::process::id()));
        let lib = root.join("nvidia/cublas/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libcublas.so.13"), b"not really").unwrap();
        let dirs = vec![root.join("nowhere"), lib.clone()];
        assert_eq!(
            find_in(CudaLib::Cublas, &dirs),
            Some(lib.join("libcublas.so.13"))
        );
        assert_eq!(find_in(CudaLib::Nvrtc, &dirs), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn search_dirs_exist() {
        for d in search_dirs() {
            assert!(d.is_dir(), "{}", d.display());
        }
    }
}
