//! Compute kernels for tokenfab's models.
//!
//! `cpu` holds the host kernels: a portable scalar path that every test runs, and per-instruction-set
//! files (`cpu/avx2.rs`, ...) picked once at run time by feature detection.
//!
//! Invariant: kernels take plain slices with their shapes written down, allocate nothing per call
//! beyond what they return, and give the same results (within float rounding) on every path.

pub mod cpu;
pub mod cuda;

pub use cpu::{Isa, Matrix};
