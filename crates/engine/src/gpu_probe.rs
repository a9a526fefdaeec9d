//! `tokenfab gpu-probe`: whether a CUDA device is usable here and, when asked, its ceilings; the
//! CLI reaches the backend only through the engine.

use serde_json::{json, Value};
use tokenfab_backend::cuda::{self, Gpu};

use crate::error::{Error, Result};

/// The device's facts as JSON: {"device", "ordinal", "compute_capability", "total_mem",
/// "free_mem", "multiprocessors"}, plus {"bandwidth_gbs", "bf16_tflops", "kernels_compiled"} when
/// `measure` (a few seconds: opening the device compiles the kernels with NVRTC, a check of its
/// own). An error says why there is no usable device.
pub fn probe(ordinal: usize, measure: bool) -> Result<Value> {
    let unusable = |e: cuda::Error| Error::Invalid(e.to_string());
    let info = cuda::probe(ordinal).map_err(unusable)?;
    let (major, minor) = info.compute_capability;
    let mut j = json!({
        "device": info.name,
        "ordinal": info.ordinal,
        "compute_capability": format!("{major}.{minor}"),
        "total_mem": info.total_mem,
        "free_mem": info.free_mem,
        "multiprocessors": info.multiprocessors,
    });
    if measure {
        let c = Gpu::new(ordinal)
            .and_then(|g| g.measure_ceilings())
            .map_err(unusable)?;
        j["bandwidth_gbs"] = c.bandwidth_gbs.into();
        j["bf16_tflops"] = c.bf16_tflops.into();
        j["kernels_compiled"] = true.into();
    }
    Ok(j)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_probe_reports_the_device_or_why_there_is_none() {
        match super::probe(0, false) {
            Ok(j) => {
                assert!(j["device"].as_str().is_some_and(|n| !n.is_empty()), "{j}");
                assert!(j["total_mem"].as_u64().is_some_and(|m| m > 0), "{j}");
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                eprintln!("device checks skipped: no CUDA device ({e})");
            }
        }
        assert!(super::probe(1 << 20, false).is_err());
    }
}
