//! Where the model runs: `--device auto|cpu|cuda|cuda:N`, and building the executor for it.
//! `auto` takes the first CUDA device when the libraries and a device are there, else the CPU
//! with a log line saying why.

use std::fmt;
use std::str::FromStr;

use tokenfab_backend::cuda;
use tokenfab_models::{CpuExecutor, CudaConfig, CudaExecutor, Executor, KvCache, KvDtype, Model};

use crate::error::{Error, Result};

/// The device to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A CUDA device when one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (an error when it cannot be used).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`--device` must be auto, cpu, cuda or cuda:N. Given: {s}");
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How to size an executor.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    pub device: Device,
    pub block_size: usize,
    /// CPU: bytes of the KV pool.
    pub kv_cache_bytes: usize,
    /// How the pool stores K and V (CUDA: f16 as bf16, or fp8; CPU: f16, f32, q8_0).
    pub kv_dtype: KvDtype,
    /// CUDA: fraction of device memory to use; the KV pool gets what is left after the weights.
    pub gpu_memory_utilization: f32,
    /// CUDA: rows of one forward pass (activation buffers).
    pub max_batch_tokens: usize,
    /// CUDA: largest decode batch captured as a graph (0: none).
    pub max_graph_batch: usize,
    /// Caps the pool's blocks on any device.
    pub max_blocks: Option<usize>,
}

/// The device `auto` resolves to on this machine, and why the CPU when it is the CPU.
pub fn resolve(device: Device) -> (Device, Option<cuda::Error>) {
    match device {
        Device::Auto => match cuda::probe(0) {
            Ok(_) => (Device::Cuda(0), None),
            Err(e) => (Device::Cpu, Some(e)),
        },
        d => (d, None),
    }
}

/// Builds the executor for `o.device`, taking ownership of the host model (dropped once its
/// weights are on a GPU).
pub fn build_executor(model: Model, o: &ExecutorOptions) -> Result<Box<dyn Executor>> {
    let (device, why_cpu) = resolve(o.device);
    if let Some(e) = why_cpu {
        tracing::info!("--device auto: running on the CPU ({e})");
    }
    match device {
        Device::Cuda(ordinal) => {
            let cfg = CudaConfig {
                ordinal,
                block_size: o.block_size,
                gpu_memory_utilization: o.gpu_memory_utilization,
                max_batch_tokens: o.max_batch_tokens,
                max_graph_batch: o.max_graph_batch,
                max_blocks: o.max_blocks,
                kv_dtype: o.kv_dtype,
            };
            let exec = CudaExecutor::new(&model, &cfg)?;
            tracing::info!(device = %exec.device(), blocks = exec.num_blocks(), "model on the GPU");
            Ok(Box::new(exec))
        }
        _ => {
            let per_token =
                KvCache::bytes_per_token(model.cfg.n_layers, model.cfg.kv_dim(), o.kv_dtype);
            let mut num_blocks = o.kv_cache_bytes / (per_token * o.block_size);
            if let Some(m) = o.max_blocks {
                num_blocks = num_blocks.min(m);
            }
            if num_blocks < 2 && o.max_blocks.is_none() {
                return Err(Error::Invalid(format!(
                    "a KV pool of {} bytes holds fewer than 2 blocks of {} tokens ({per_token} bytes per token)",
                    o.kv_cache_bytes, o.block_size
                )));
            }
            let exec = CpuExecutor::new(model, o.kv_dtype, o.block_size, num_blocks)?;
            tracing::info!(
                kv_cache_dtype = %o.kv_dtype,
                kv_bytes_per_token = per_token,
                kv_cache_tokens = num_blocks * o.block_size,
                kv_cache_mib = exec.kv.bytes() >> 20,
                "KV pool on the CPU"
            );
            Ok(Box::new(exec))
        }
    }
}

/// The processor and the CPU kernels' parameters chosen for it at start-up (the backend's
/// `cpu::tuning`), for the log.
pub fn describe_cpu() -> String {
    tokenfab_backend::cpu::tuning::get().describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("CPU".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        for bad in ["cuda:", "cuda:x", "tpu", "", "cuda:-1"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("auto, cpu, cuda or cuda:N"), "{e}");
        }
        for d in [Device::Auto, Device::Cpu, Device::Cuda(2)] {
            assert_eq!(d.to_string().parse::<Device>(), Ok(d));
        }
    }

    /// Without a usable CUDA device (as where CI runs) auto means the CPU, with the reason, and
    /// an explicit cuda is an error; with one, auto picks it and the executor runs there.
    #[test]
    fn auto_picks_a_usable_cuda_device_else_the_cpu() {
        let dir = std::env::temp_dir().join(format!("tokenfab-dev-{}", std::process::id()));
        let path = crate::testing::write_tiny_model(&dir);
        let load = || crate::LoadedModel::load(&path).unwrap().model;
        let o = ExecutorOptions {
            device: Device::Auto,
            block_size: 16,
            kv_cache_bytes: 1 << 20,
            kv_dtype: KvDtype::default(),
            gpu_memory_utilization: 0.9,
            max_batch_tokens: 64,
            max_graph_batch: 8,
            max_blocks: Some(64),
        };
        let on = |device| {
            build_executor(
                load(),
                &ExecutorOptions {
                    device,
                    ..o.clone()
                },
            )
        };
        let (d, why) = resolve(Device::Auto);
        let auto = on(Device::Auto).unwrap();
        assert_eq!(on(Device::Cpu).unwrap().device(), "cpu");
        match d {
            Device::Cpu => {
                let why = why.expect("auto says why it chose the CPU");
                assert_eq!(auto.device(), "cpu");
                assert!(on(Device::Cuda(0)).is_err());
                eprintln!("CUDA half skipped: no usable device ({why})");
            }
            Device::Cuda(0) => {
                assert!(why.is_none());
                assert_eq!(auto.device(), "cuda:0");
                assert_eq!(auto.num_blocks(), 64, "max_blocks caps the GPU pool");
                assert_eq!(on(Device::Cuda(0)).unwrap().device(), "cuda:0");
            }
            other => panic!("auto resolved to {other}"),
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
