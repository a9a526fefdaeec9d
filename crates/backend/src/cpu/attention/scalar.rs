//! Portable attention operations: the reference the other paths are tested against.

use half::f16;

use super::{BlockQ8_0, Ops};

pub(crate) struct Scalar;

impl Ops for Scalar {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        crate::cpu::scalar::dot(a, b)
    }

    #[inline(always)]
    unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }

    #[inline(always)]
    unsafe fn scale(a: f32, y: &mut [f32]) {
        y.iter_mut().for_each(|v| *v *= a);
    }

    #[inline(always)]
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    #[inline(always)]
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]) {
        for (o, b) in dst.chunks_exact_mut(super::QK8_0).zip(src) {
            let d = b.d.to_f32();
            for (o, &q) in o.iter_mut().zip(&b.qs) {
                *o = d * q as f32;
            }
        }
    }
}
