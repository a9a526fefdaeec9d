//! Sizing the KV pool from device memory, as vLLM does with `--gpu-memory-utilization`: of the
//! device's total memory, take the fraction `utilization`; from that, subtract what is in use once
//! the weights and the activation buffers are allocated (by us or by anyone else on the device) and
//! a reserve for cuBLAS workspaces and CUDA graphs; the rest holds KV blocks.

use super::{Error, Result};

/// The inputs of the sizing, all in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvSizing {
    pub total_mem: usize,
    /// Free memory measured after the weights and activation buffers were allocated.
    pub free_mem: usize,
    /// Fraction of `total_mem` tokenfab may use, in (0, 1].
    pub utilization: f32,
    /// K and V of one block across all layers.
    pub bytes_per_block: usize,
    /// Kept free for cuBLAS workspaces, graphs and the driver.
    pub reserve: usize,
}

/// Reserve for cuBLAS workspaces, captured graphs and allocator slack.
pub const DEFAULT_RESERVE: usize = 512 << 20;

impl KvSizing {
    /// Bytes the KV pool may take.
    pub fn kv_bytes(&self) -> Result<usize> {
        if !(self.utilization > 0.0 && self.utilization <= 1.0) {
            return Err(Error::Memory(format!(
                "`gpu_memory_utilization` must be in (0, 1]. Given: {}",
                self.utilization
            )));
        }
        let budget = (self.total_mem as f64 * self.utilization as f64) as usize;
        let used = self.total_mem.saturating_sub(self.free_mem);
        budget
            .checked_sub(used + self.reserve)
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                Error::Memory(format!(
                    "{:.2} GiB in use after loading the model plus a {:.2} GiB reserve exceed {:.0}% of the device's {:.2} GiB; raise --gpu-memory-utilization or use a smaller model",
                    gib(used),
                    gib(self.reserve),
                    self.utilization * 100.0,
                    gib(self.total_mem)
                ))
            })
    }

    /// Blocks the KV pool may hold; at least 2 or an error.
    pub fn num_blocks(&self) -> Result<usize> {
        let bytes = self.kv_bytes()?;
        let n = bytes / self.bytes_per_block.max(1);
        if n < 2 {
            return Err(Error::Memory(format!(
                "{:.2} GiB for the KV pool hold {n} blocks of {} bytes; at least 2 are needed",
                gib(bytes),
                self.bytes_per_block
            )));
        }
        Ok(n)
    }
}

/// What a model needs on the device, in bytes, known before anything is allocated: checked by
/// [`Footprint::check`] so that a model too large for the device is an error naming both sizes,
/// not an out-of-memory failure halfway through the upload.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub weights: usize,
    /// Activation and step buffers for the largest batch.
    pub activations: usize,
    /// RoPE cos/sin tables.
    pub tables: usize,
    /// The smallest KV pool worth running: 2 blocks plus the scratch block.
    pub kv_min: usize,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.weights + self.activations + self.tables + self.kv_min + DEFAULT_RESERVE
    }

    /// Whether the footprint fits `utilization` of a device of `total_mem` bytes, `free_mem` of
    /// them free now (someone else's allocations count against us).
    pub fn check(&self, total_mem: usize, free_mem: usize, utilization: f32) -> Result<()> {
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(Error::Memory(format!(
                "`gpu_memory_utilization` must be in (0, 1]. Given: {utilization}"
            )));
        }
        let budget = ((total_mem as f64 * utilization as f64) as usize)
            .saturating_sub(total_mem.saturating_sub(free_mem));
        let need = self.total();
        if need <= budget {
            return Ok(());
        }
        Err(Error::Memory(format!(
            "the model needs {:.2} GiB on the device (weights {:.2}, activations {:.2}, RoPE tables {:.2}, the smallest KV pool {:.2}, reserve {:.2}); the device has {:.2} GiB, {:.2} free, of which --gpu-memory-utilization {} allows {:.2}",
            gib(need),
            gib(self.weights),
            gib(self.activations),
            gib(self.tables),
            gib(self.kv_min),
            gib(DEFAULT_RESERVE),
            gib(total_mem),
            gib(free_mem),
            utilization,
            gib(budget)
        )))
    }
}

/// Bytes of K and V for one block across all layers, stored as `elem_bytes` per value.
pub fn bytes_per_block(
    n_layers: usize,
    kv_dim: usize,
    block_size: usize,
    elem_bytes: usize,
) -> usize {
    2 * n_layers * kv_dim * block_size * elem_bytes
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn llama3_8b_on_an_h200() {
        // 32 layers, 8 KV heads of 128, bf16, blocks of 16 tokens: 2 MiB per block.
        let per_block = bytes_per_block(32, 1024, 16, 2);
        assert_eq!(per_block, 2 << 20);
        let s = KvSizing {
            total_mem: 140 * GIB,
            // 16 GiB of weights, 1 GiB of activations, 0.5 GiB of context.
            free_mem: 140 * GIB - 16 * GIB - GIB - GIB / 2,
            utilization: 0.9,
            bytes_per_block: per_block,
            reserve: DEFAULT_RESERVE,
        };
        let kv = s.kv_bytes().unwrap();
        assert_eq!(kv, (140.0 * 0.9f32 as f64 * GIB as f64) as usize - 18 * GIB);
        assert_eq!(s.num_blocks().unwrap(), kv / per_block);
        // Someone else's 10 GiB on the device comes off the pool.
        let crowded = KvSizing {
            free_mem: s.free_mem - 10 * GIB,
            ..s
        };
        assert_eq!(crowded.kv_bytes().unwrap(), kv - 10 * GIB);
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let s = KvSizing {
            total_mem: 80 * GIB,
            free_mem: 2 * GIB,
            utilization: 0.9,
            bytes_per_block: 2 << 20,
            reserve: DEFAULT_RESERVE,
        };
        let e = s.num_blocks().unwrap_err().to_string();
        assert!(e.contains("gpu-memory-utilization"), "{e}");
        let tiny = KvSizing {
            total_mem: 100 << 20,
            free_mem: 100 << 20,
            utilization: 1.0,
            bytes_per_block: 60 << 20,
            reserve: 0,
        };
        assert!(tiny
            .num_blocks()
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }

    /// Llama 3 70B: 70.6e9 parameters; bf16 (141 GB) does not fit an H200's 141 GB at 0.9, FP8
    /// (one byte each plus a scale per row) does; the error names both sizes.
    #[test]
    fn seventy_billion_parameters_on_an_h200() {
        let h200 = 143_771_000_000usize; // 133.9 GiB as the driver reports it
        let params = 70_553_706_496usize;
        let (layers, dim, ffn, kv_dim, vocab) = (80, 8192, 28672, 1024, 128_256);
        let rows_of_matrices = layers * (dim + 2 * kv_dim + dim + 2 * ffn + dim) + 2 * vocab;
        let acts = |rows: usize| {
            rows * (4 * dim * 3
                + 2 * dim
                + 4 * (dim + 2 * kv_dim)
                + 2 * dim
                + 4 * 2 * ffn
                + 2 * ffn
                + 4 * vocab)
        };
        let f = |bytes_per_param: usize, scales: usize| Footprint {
            weights: params * bytes_per_param + scales,
            activations: acts(512),
            tables: 8192 * 64 * 8,
            kv_min: 3 * bytes_per_block(layers, kv_dim, 16, 1),
        };
        let bf16 = f(2, 0);
        let e = bf16
            .check(h200, h200 - (500 << 20), 0.9)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs 132.39 GiB") && e.contains("the device has 133.90 GiB"),
            "{e}"
        );
        let fp8 = f(1, 4 * rows_of_matrices);
        fp8.check(h200, h200 - (500 << 20), 0.9).unwrap();
        // Someone else holding 80 GB leaves too little even for FP8.
        assert!(fp8.check(h200, h200 - 80_000_000_000, 0.9).is_err());
        assert!(fp8.check(h200, h200, 1.5).is_err());
    }

    #[test]
    fn utilization_must_be_a_fraction() {
        for u in [0.0, -0.5, 1.5, f32::NAN] {
            let s = KvSizing {
                total_mem: GIB,
                free_mem: GIB,
                utilization: u,
                bytes_per_block: 1024,
                reserve: 0,
            };
            assert!(s.kv_bytes().is_err(), "{u}");
        }
    }
}
