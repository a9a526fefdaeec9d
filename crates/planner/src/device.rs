//! Devices as data: what one accelerator (or the local CPU) reads, computes and sends per second,
//! the fraction of it a real step reaches, and what a step costs beyond its bytes and operations.
//!
//! Datasheet entries carry their sources; the fractions they reach are stated assumptions (or
//! come from measurements on such machines, named). The CPU is measured by [`crate::probe`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shape::Compute;
use crate::PlanError;

/// Fractions of the datasheet figures a serving step reaches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// Of `mem_bw`, when streaming weights and KV.
    pub mem_bw: f64,
    /// Of a peak, in matrix products.
    pub compute: f64,
    /// Of `attention_ops`, in attention's arithmetic.
    pub attention: f64,
    /// Of `link_bw`, in all-reduces.
    pub link: f64,
}

impl Efficiency {
    /// Every figure reached in full: a measured device, whose figures are what it reached.
    pub const MEASURED: Efficiency = Efficiency {
        mem_bw: 1.0,
        compute: 1.0,
        attention: 1.0,
        link: 1.0,
    };
}

/// Time a step costs beyond bytes, operations and transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overhead {
    /// Every step (scheduling, launching, synchronizing), seconds.
    pub step_s: f64,
    /// Every layer of every step (kernel launches, thread fork-joins), seconds.
    pub layer_s: f64,
    /// Every sampled row and vocabulary entry (choosing the token), seconds.
    pub sample_per_vocab_s: f64,
    /// Every sampled row beyond that (its share of the step outside the priced parts: emitting
    /// the token, per-row work of the forward pass), seconds.
    #[serde(default)]
    pub row_s: f64,
    /// One all-reduce's latency under tensor parallelism, seconds.
    pub all_reduce_s: f64,
}

/// Rates a device's kernels were measured to reach on one model's own matrices (the CPU probe's
/// output); they replace `peak × efficiency` for that model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredRates {
    /// The model ([`crate::shape::ModelShape::name`]) whose matrices were timed.
    pub model: String,
    /// Rows (tokens) of each timing, ascending.
    pub rows: Vec<usize>,
    /// Operations per second of one layer's products (QKV, O, gate-up, down) at each `rows`.
    pub layers: Vec<f64>,
    /// Operations per second of the output product at each `rows`.
    pub lm_head: Vec<f64>,
}

impl MeasuredRates {
    /// The rate at `n` rows, interpolated in log(rows) between the measured points (flat
    /// outside them).
    pub fn at(rates: &[f64], rows: &[usize], n: usize) -> f64 {
        let n = n.max(1) as f64;
        let first = rows.first().map_or(1.0, |&r| r as f64);
        if rates.len() < 2 || n <= first {
            return rates.first().copied().unwrap_or(0.0);
        }
        for w in 0..rates.len() - 1 {
            let (a, b) = (rows[w] as f64, rows[w + 1] as f64);
            if n <= b {
                let t = (n.ln() - a.ln()) / (b.ln() - a.ln());
                return rates[w] + t * (rates[w + 1] - rates[w]);
            }
        }
        rates[rates.len() - 1]
    }
}

/// One device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    /// Where the figures come from.
    pub source: String,
    /// Memory of one device, bytes.
    pub memory_bytes: f64,
    /// Memory bandwidth of one device, bytes/s.
    pub mem_bw: f64,
    /// Dense peak of one device per arithmetic, operations/s (2 per multiply-add).
    pub peaks: BTreeMap<Compute, f64>,
    /// The rate attention's arithmetic runs at before `efficiency.attention`, operations/s.
    pub attention_ops: f64,
    /// Device-to-device bandwidth in each direction, bytes/s (`None`: one device only).
    pub link_bw: Option<f64>,
    pub efficiency: Efficiency,
    pub overhead: Overhead,
    /// Matrices in a format without a peak here are widened to f32 when loaded (tokenfab's CPU
    /// executor keeps a format only where a kernel reads it) instead of being refused.
    pub widens_to_f32: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<MeasuredRates>,
    /// Every assumption behind `efficiency` and `overhead`, printed with each prediction.
    pub assumptions: Vec<String>,
}

/// Names of the datasheet entries.
pub const DATASHEETS: &[&str] = &["h100", "h200", "b200"];

/// What tokenfab assumes of any datasheet GPU (the same for all three; none is fitted to the
/// published serving results the planner is compared with).
fn gpu_assumptions() -> (Efficiency, Overhead, Vec<String>) {
    (
        Efficiency {
            mem_bw: 0.9,
            compute: 0.8,
            attention: 0.5,
            link: 0.75,
        },
        Overhead {
            step_s: 0.5e-3,
            layer_s: 5e-6,
            sample_per_vocab_s: 0.0,
            row_s: 0.0,
            all_reduce_s: 10e-6,
        },
        vec![
            "memory bandwidth efficiency 0.9: about 4.3 TB/s device copy bandwidth measured on H200 machines (of 4.8 TB/s)".into(),
            "matrix-product efficiency 0.8: about 790 TFLOP/s bf16 GEMM measured on H200 machines (of 989); the same fraction assumed for FP8 and other devices".into(),
            "attention efficiency 0.5 of the bf16 peak (assumption; FlashAttention-3 reports up to 75% on H100 for long sequences)".into(),
            "all-reduce: ring over NVLink at 0.75 of the per-direction bandwidth plus 10 us per call, not overlapped with compute (assumption)".into(),
            "per step 0.5 ms and per layer 5 us of launch and scheduling cost (assumption); sampling on the GPU counted as free".into(),
        ],
    )
}

impl Device {
    /// A datasheet entry by name (`h100`, `h200`, `b200`), or a device JSON file (as written by
    /// `tokenfab plan --save-device`).
    pub fn resolve(name: &str) -> Result<Device, PlanError> {
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(name)
                .map_err(|e| PlanError::Invalid(format!("reading device {name}: {e}")))?;
            return serde_json::from_str(&text)
                .map_err(|e| PlanError::Invalid(format!("device {name}: {e}")));
        }
        let (efficiency, overhead, assumptions) = gpu_assumptions();
        let gpu = |name: &str,
                   source: &str,
                   mem: f64,
                   bw: f64,
                   bf16: f64,
                   fp8: f64,
                   f32: f64,
                   link: f64| Device {
            name: name.into(),
            source: source.into(),
            memory_bytes: mem,
            mem_bw: bw,
            peaks: BTreeMap::from([
                (Compute::F32, f32),
                (Compute::Bf16, bf16),
                (Compute::Fp8, fp8),
                (Compute::Int8, fp8),
            ]),
            attention_ops: bf16,
            link_bw: Some(link),
            efficiency,
            overhead,
            widens_to_f32: false,
            measured: None,
            assumptions: assumptions.clone(),
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            // Sparse Tensor Core figures halved to dense; NVLink 900 GB/s is both directions.
            "h100" => gpu(
                "NVIDIA H100 SXM",
                "NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): 80 GB HBM3, 3.35 TB/s, \
                 BF16 1,979 and FP8/INT8 3,958 TFLOPS with sparsity, FP32 67 TFLOPS, NVLink 900 GB/s",
                80e9, 3.35e12, 989.5e12, 1979e12, 67e12, 450e9,
            ),
            "h200" => gpu(
                "NVIDIA H200 SXM",
                "NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 141 GB HBM3e, 4.8 TB/s, \
                 BF16 1,979 and FP8/INT8 3,958 TFLOPS with sparsity, FP32 67 TFLOPS, NVLink 900 GB/s",
                141e9, 4.8e12, 989.5e12, 1979e12, 67e12, 450e9,
            ),
            "b200" => gpu(
                "NVIDIA B200 (HGX)",
                "NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx): per GPU 180 GB \
                 HBM3e, 7.7 TB/s, FP16/BF16 4.5 and FP8/INT8 9 PFLOPS with sparsity, FP32 75 \
                 TFLOPS, NVLink 1.8 TB/s",
                180e9, 7.7e12, 2.25e15, 4.5e15, 75e12, 900e9,
            ),
            other => {
                return Err(PlanError::Invalid(format!(
                    "unknown device `{other}` (datasheets: {}; `cpu` measures this machine; or a device .json)",
                    DATASHEETS.join(", ")
                )))
            }
        })
    }

    /// The peak for `c` before efficiency, or the f32 one where `c` has none and this device
    /// widens such weights (the CPU).
    pub fn peak(&self, c: Compute) -> Result<(Compute, f64), PlanError> {
        if let Some(&p) = self.peaks.get(&c) {
            return Ok((c, p));
        }
        match (self.widens_to_f32, self.peaks.get(&Compute::F32)) {
            (true, Some(&p)) => Ok((Compute::F32, p)),
            _ => Err(PlanError::Invalid(format!(
                "{} has no {c:?} peak: no kernel computes in that format here",
                self.name
            ))),
        }
    }

    /// Checks that every figure is positive and every efficiency in (0, 1].
    pub fn validate(&self) -> Result<(), PlanError> {
        let pos = [
            ("memory_bytes", self.memory_bytes),
            ("mem_bw", self.mem_bw),
            ("attention_ops", self.attention_ops),
        ];
        for (k, v) in pos.into_iter().chain(self.link_bw.map(|b| ("link_bw", b))) {
            if !(v > 0.0 && v.is_finite()) {
                return Err(PlanError::Invalid(format!(
                    "device {}: `{k}` must be > 0. Given: {v}",
                    self.name
                )));
            }
        }
        let e = &self.efficiency;
        for (k, v) in [
            ("mem_bw", e.mem_bw),
            ("compute", e.compute),
            ("attention", e.attention),
            ("link", e.link),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(PlanError::Invalid(format!(
                    "device {}: efficiency `{k}` must be in (0, 1]. Given: {v}",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasheets_are_dense_and_sourced() {
        let h = Device::resolve("H200").unwrap();
        assert_eq!(h.memory_bytes, 141e9);
        assert_eq!(h.peak(Compute::Fp8).unwrap().1, 1979e12);
        assert_eq!(h.peak(Compute::Bf16).unwrap().1, 989.5e12);
        assert!(h.source.contains("nvidia.com"));
        assert!(h.validate().is_ok());
        let b = Device::resolve("b200").unwrap();
        assert_eq!(
            b.peak(Compute::Fp8).unwrap().1,
            2.0 * b.peak(Compute::Bf16).unwrap().1
        );
        let e = Device::resolve("tpu").unwrap_err().to_string();
        assert!(e.contains("h100, h200, b200"), "{e}");
    }

    #[test]
    fn json_round_trip_and_checks() {
        let mut d = Device::resolve("h100").unwrap();
        let text = serde_json::to_string(&d).unwrap();
        let back: Device = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
        d.efficiency.compute = 1.5;
        assert!(d.validate().unwrap_err().to_string().contains("`compute`"));
        d.peaks.remove(&Compute::Int8);
        assert!(d.peak(Compute::Int8).is_err());
        d.widens_to_f32 = true;
        assert_eq!(d.peak(Compute::Int8).unwrap().0, Compute::F32);
    }

    #[test]
    fn measured_rates_interpolate_in_log_rows() {
        let rows = [16, 64, 256];
        let r = [100.0, 200.0, 400.0];
        assert_eq!(MeasuredRates::at(&r, &rows, 1), 100.0);
        assert_eq!(MeasuredRates::at(&r, &rows, 64), 200.0);
        // 32 is halfway between 16 and 64 in log: 150.
        assert!((MeasuredRates::at(&r, &rows, 32) - 150.0).abs() < 1e-9);
        assert_eq!(MeasuredRates::at(&r, &rows, 4096), 400.0);
    }
}
