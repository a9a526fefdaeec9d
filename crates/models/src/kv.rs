//! The paged KV cache's storage: one preallocated pool of fixed-size blocks per layer, stored as
//! f32, f16 (the default, as llama.cpp's) or Q8_0 blocks on the CPU; bf16 or FP8 (E4M3 with a
//! scale) on a GPU. Which block belongs to which sequence is the caller's bookkeeping (block
//! tables).

use std::fmt;
use std::str::FromStr;

use tokenfab_backend::cpu::attention::{KvDtype as CpuKvDtype, KvStore};

use crate::error::{Error, Result};

/// How the KV pool stores K and V (`--kv-cache-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// Half precision (llama.cpp's default); a GPU's pool stores it as bf16.
    #[default]
    F16,
    /// Blocks of 32 values with an f16 scale (CPU only).
    Q8_0,
    /// FP8 E4M3, one byte per value with a scale per layer's K and V, as vLLM's
    /// `--kv-cache-dtype fp8` (CUDA only: the CPU's attention has no E4M3 path).
    Fp8,
}

impl KvDtype {
    /// The CPU pool's storage, or an error naming a dtype only a GPU stores.
    pub fn cpu(self) -> Result<CpuKvDtype> {
        match self {
            KvDtype::F32 => Ok(CpuKvDtype::F32),
            KvDtype::F16 => Ok(CpuKvDtype::F16),
            KvDtype::Q8_0 => Ok(CpuKvDtype::Q8_0),
            KvDtype::Fp8 => Err(Error::Config(
                "`--kv-cache-dtype fp8` is supported on CUDA devices only; the CPU stores f16, f32 or q8_0"
                    .into(),
            )),
        }
    }

    /// Bytes one row of `width` values takes.
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            KvDtype::Fp8 => width,
            d => d.cpu().map_or(0, |c| c.row_bytes(width)),
        }
    }

    /// Whether heads of `head_dim` values can be stored this way.
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), String> {
        match self {
            KvDtype::Fp8 => Ok(()),
            d => d.cpu().map_err(|e| e.to_string())?.check_head_dim(head_dim),
        }
    }
}

impl FromStr for KvDtype {
    type Err = String;
    /// `auto` (f16), `f16`, `f32`, `q8_0`, `fp8` (`fp8_e4m3`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp8" | "fp8_e4m3" | "e4m3" => Ok(KvDtype::Fp8),
            other => match other.parse::<CpuKvDtype>() {
                Ok(CpuKvDtype::F32) => Ok(KvDtype::F32),
                Ok(CpuKvDtype::F16) => Ok(KvDtype::F16),
                Ok(CpuKvDtype::Q8_0) => Ok(KvDtype::Q8_0),
                Err(_) => Err(format!(
                    "`--kv-cache-dtype` must be auto, f16, f32, q8_0 or fp8. Given: {s}"
                )),
            },
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvDtype::Fp8 => f.write_str("fp8"),
            d => match d.cpu() {
                Ok(c) => fmt::Display::fmt(&c, f),
                Err(_) => f.write_str("?"),
            },
        }
    }
}

/// K and V for every layer, as `num_blocks * block_size` slots of `kv_dim` values each.
pub struct KvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    /// KV heads times head size.
    pub kv_dim: usize,
    pub dtype: KvDtype,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) k: Vec<KvStore>,
    /// Per layer: (num_blocks * block_size, kv_dim).
    pub(crate) v: Vec<KvStore>,
}

impl KvCache {
    /// A zeroed pool; `head_dim` is checked against the dtype (Q8_0 blocks of 32 must not straddle
    /// two heads).
    pub fn new(
        n_layers: usize,
        kv_dim: usize,
        head_dim: usize,
        dtype: KvDtype,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self> {
        let cpu = dtype.cpu()?;
        dtype.check_head_dim(head_dim).map_err(Error::Config)?;
        let slots = block_size * num_blocks;
        Ok(Self {
            block_size,
            num_blocks,
            kv_dim,
            dtype,
            k: (0..n_layers)
                .map(|_| KvStore::new(cpu, slots, kv_dim))
                .collect(),
            v: (0..n_layers)
                .map(|_| KvStore::new(cpu, slots, kv_dim))
                .collect(),
        })
    }

    /// Bytes one token takes across all layers (K and V) stored as `dtype`.
    pub fn bytes_per_token(n_layers: usize, kv_dim: usize, dtype: KvDtype) -> usize {
        2 * n_layers * dtype.row_bytes(kv_dim)
    }

    /// Slots (tokens) the pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvStore::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse_print_and_size() {
        for (s, d) in [
            ("auto", KvDtype::F16),
            ("f16", KvDtype::F16),
            ("f32", KvDtype::F32),
            ("q8_0", KvDtype::Q8_0),
            ("fp8", KvDtype::Fp8),
            ("FP8_E4M3", KvDtype::Fp8),
        ] {
            assert_eq!(s.parse::<KvDtype>(), Ok(d), "{s}");
            assert_eq!(d.to_string().parse::<KvDtype>(), Ok(d));
        }
        let e = "int4".parse::<KvDtype>().unwrap_err();
        assert!(e.contains("fp8") && e.contains("int4"), "{e}");
        // One byte per value: Llama 3 70B's 80 layers x 1024 K and V values per token.
        assert_eq!(KvCache::bytes_per_token(80, 1024, KvDtype::Fp8), 160 * 1024);
        assert_eq!(KvCache::bytes_per_token(80, 1024, KvDtype::F16), 320 * 1024);
        assert_eq!(KvCache::bytes_per_token(1, 64, KvDtype::Q8_0), 2 * 68);
    }

    /// The CPU's pool has no FP8 storage: a clear error naming it, not a silent f16 pool.
    #[test]
    fn fp8_on_the_cpu_is_an_error_that_names_it() {
        let e = KvCache::new(2, 64, 32, KvDtype::Fp8, 16, 4)
            .err()
            .expect("fp8 has no CPU pool")
            .to_string();
        assert!(
            e.contains("--kv-cache-dtype fp8") && e.contains("CUDA"),
            "{e}"
        );
        assert!(KvCache::new(2, 64, 32, KvDtype::F16, 16, 4).is_ok());
    }
}
