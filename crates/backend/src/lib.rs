//! Compute kernels for tokenfab's models.
//!
//! `cpu` holds the host kernels: a portable scalar path that every test runs, and per-instruction-set
//! files (`cpu/avx2.rs`, `cpu/quant/avx512.rs`, ...) picked once at run time by feature detection.
//! `cuda` holds the GPU's. `ops` is the set of device operations a model's forward pass is written
//! in, implemented on both (`cpu::ops`, `cuda::ops`); `rope` the rotary embedding they share.
//!
//! Invariant: kernels take plain slices with their shapes written down, allocate nothing per call
//! beyond what they return (quantized products grow a per-thread scratch buffer once), and give the
//! same results (within float rounding) on every path.

pub mod cpu;
pub mod cuda;
mod error;
pub mod ops;
pub mod rope;

pub use cpu::{matmul_q, Isa, Matrix, QMatrix, QType};
pub use error::{Error, Result};
