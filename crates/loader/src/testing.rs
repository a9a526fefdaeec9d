//! For tests across the workspace: the checkout's root and the default model, which
//! `scripts/fetch-model.sh` fetches from PyPI when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model's file name, under `models/` in the checkout.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The checkout this crate was built from.
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The default model's path, fetched first when missing; the error carries the script's output.
pub fn default_model() -> Result<PathBuf, String> {
    let path = workspace_root().join("models").join(DEFAULT_MODEL);
    if path.is_file() {
        return Ok(path);
    }
    let script = workspace_root().join("scripts/fetch-model.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "fetch-model.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `python3 scripts/export-hf.py GGUF DIR ARGS...`: a Hugging Face checkpoint directory written
/// from a GGUF file (needs the PyPI packages `gguf` and `numpy`); panics with the script's
/// output when it fails.
pub fn export_hf(gguf: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new("python3")
        .arg(workspace_root().join("scripts/export-hf.py"))
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
