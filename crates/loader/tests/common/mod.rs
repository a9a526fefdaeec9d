//! Helpers of the loader's integration tests: the default model and scripts/export-hf.py.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use tokenfab_loader::testing::workspace_root as root;

/// The default model, fetched with `scripts/fetch-model.sh` when missing.
pub fn default_model() -> PathBuf {
    tokenfab_loader::testing::default_model().unwrap()
}

/// `python3 scripts/export-hf.py GGUF DIR ARGS...` (needs the PyPI packages gguf and numpy).
pub fn export_hf(gguf: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new("python3")
        .arg(root().join("scripts/export-hf.py"))
        .arg(gguf)
        .arg(dir)
        .args(args)
        .output()
        .expect("cannot run python3 scripts/export-hf.py");
    assert!(
        out.status.success(),
        "export-hf.py {}: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
