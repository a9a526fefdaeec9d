//! `tokenfab gpu-probe` (hidden): is a CUDA device usable here, and its ceilings. Prints one JSON
//! line: {"device", "compute_capability", "total_mem", "bandwidth_gbs", "bf16_tflops"}, or
//! {"device": null, "error"} and exit status 1 when there is no usable device.

use anyhow::Result;

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
    match tokenfab_engine::gpu_probe::probe(a.ordinal, a.probe) {
        Ok(j) => println!("{j}"),
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"device": null, "error": e.to_string()})
            );
            std::process::exit(1);
        }
    }
    Ok(())
}
