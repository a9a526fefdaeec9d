//! Compute kernels for tokenfab's models.
//!
//! `cpu` holds the host kernels: a portable scalar path that every test runs, and per-instruction-set
//! files (`cpu/avx2.rs`, `cpu/quant/avx512.rs`, ...) picked once at run time by feature detection.
//!
//! Invariant: kernels take plain slices with their shapes written down, allocate nothing per call
//! beyond what they return (quantized products grow a per-thread scratch buffer once), and give the
//! same results (within float rounding) on every path.

pub mod cpu;
pub mod cuda;
mod error;

pub use cpu::{matmul_q, Isa, Matrix, QMatrix, QType};
pub use error::{Error, Result};
