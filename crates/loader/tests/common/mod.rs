//! Helpers of the loader's integration tests: the default model and scripts/export-hf.py.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model, fetched with `scripts/fetch-model.sh` when missing.
pub fn default_model() -> PathBuf {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return path;
    }
    let out = Command::new("bash")
        .arg(root().join("scripts/fetch-model.sh"))
        .output()
        .expect("cannot run scripts/fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
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
