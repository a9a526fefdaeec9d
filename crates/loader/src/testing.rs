//! For tests across the workspace: the checkout's root and the default model, which
//! `scripts/fetch-model.sh` fetches from PyPI when it is missing.

use std::path::PathBuf;
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
