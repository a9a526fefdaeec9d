//! `tokenfab gpu-probe` (hidden): is a CUDA device usable here, and its ceilings. Prints one JSON
//! line: {"device", "compute_capability", "total_mem", "bandwidth_gbs", "bf16_tflops"}, or
//! {"device": null, "error"} and exit status 1 when there is no usable device.

use anyhow::Result;
use tokenfab_backend::cuda::{self, Gpu};

#[derive(clap::Args)]
pub struct Args {
    /// CUDA device number.
    #[arg(long, default_value_t = 0)]
    pub ordinal: usize,
    /// Also measure copy bandwidth and the bf16 GEMM rate (a few seconds).
    #[arg(long)]
    pub probe: bool,
}

pub fn run(a: Args) -> Result<()> {
    let info = match cuda::probe(a.ordinal) {
        Ok(i) => i,
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"device": null, "error": e.to_string()})
            );
            std::process::exit(1);
        }
    };
    let mut j = serde_json::json!({
        "device": info.name,
        "ordinal": info.ordinal,
        "compute_capability": format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
        "total_mem": info.total_mem,
        "free_mem": info.free_mem,
        "multiprocessors": info.multiprocessors,
    });
    if a.probe {
        // Opening the device also compiles the kernels with NVRTC: a check of its own.
        let gpu = Gpu::new(a.ordinal)?;
        let c = gpu.measure_ceilings()?;
        j["bandwidth_gbs"] = c.bandwidth_gbs.into();
        j["bf16_tflops"] = c.bf16_tflops.into();
        j["kernels_compiled"] = true.into();
    }
    println!("{j}");
    Ok(())
}
