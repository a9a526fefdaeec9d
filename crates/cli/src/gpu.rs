//! `tokenfab gpu-probe` (hidden): is a CUDA device usable here, and its ceilings. Prints one JSON
//! line: {"device", "compute_capability", "total_mem", "bandwidth_gbs", "bf16_tflops",
//! "libraries"}, or {"device": null, "error", "libraries"} and exit status 1 when there is no
//! usable device. `libraries` holds the driver, NVRTC and cuBLAS versions found.
//!
//! `--compile-kernels` needs neither driver nor device: every kernel compiled with each NVRTC
//! found (or given with `--nvrtc`) for each `--arch`, one line per kernel with its registers,
//! shared memory, local memory and spills; exit status 1 on any compile error, warning, spill or
//! local-memory use, or when no NVRTC is found.

use std::path::PathBuf;

use anyhow::{bail, Result};
use tokenfab_engine::gpu_probe;

#[derive(clap::Args)]
pub struct Args {
    /// CUDA device number.
    #[arg(long, default_value_t = 0)]
    pub ordinal: usize,
    /// Also measure copy bandwidth and the bf16 GEMM rate (a few seconds).
    #[arg(long)]
    pub probe: bool,
    /// Compile every kernel with NVRTC (no GPU needed) and check ptxas's report.
    #[arg(long)]
    pub compile_kernels: bool,
    /// With --compile-kernels: this NVRTC library (repeatable); default: every one found.
    #[arg(long, value_name = "PATH")]
    pub nvrtc: Vec<PathBuf>,
    /// With --compile-kernels: target architectures (repeatable).
    #[arg(long, value_name = "SM", default_values_t = ["sm_80".to_string(), "sm_90".to_string()])]
    pub arch: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    if a.compile_kernels {
        return compile_kernels(&a);
    }
    let libraries = gpu_probe::versions();
    match gpu_probe::probe(a.ordinal, a.probe) {
        Ok(mut j) => {
            j["libraries"] = libraries;
            println!("{j}");
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"device": null, "error": e.to_string(), "libraries": libraries})
            );
            std::process::exit(1);
        }
    }
    Ok(())
}

fn compile_kernels(a: &Args) -> Result<()> {
    let runs = gpu_probe::compile_kernels(&a.nvrtc, &a.arch)?;
    let mut failed = 0;
    for r in &runs {
        println!(
            "NVRTC {} ({}) {}: {} kernels, cubin {} bytes",
            if r.version.is_empty() {
                "?"
            } else {
                &r.version
            },
            r.nvrtc.display(),
            r.arch,
            r.kernels.len(),
            r.cubin_bytes
        );
        for k in &r.kernels {
            println!("  {k}");
        }
        match &r.error {
            None => println!("  ok"),
            Some(e) => {
                failed += 1;
                println!("  FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} kernel compiles failed", runs.len());
    }
    Ok(())
}
