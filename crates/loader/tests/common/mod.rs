//! Helpers of the loader's integration tests: the default model and scripts/export-hf.py.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

pub use tokenfab_loader::testing::export_hf;
pub use tokenfab_loader::testing::workspace_root as root;

/// The default model, fetched with `scripts/fetch-model.sh` when missing.
pub fn default_model() -> PathBuf {
    tokenfab_loader::testing::default_model().unwrap()
}
