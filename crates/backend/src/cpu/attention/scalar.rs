//! Portable attention operations: the reference the other paths are tested against.

use half::f16;

use super::{BlockQ8_0, Ops};

pub(crate) struct Scalar;

impl Ops for Scalar {
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize) {
        for (g, qh) in q.chunks_exact(k.len()).enumerate() {
            s[g * stride] = crate::cpu::scalar::dot(qh, k) * scale;
        }
    }

    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - mx).exp();
            sum += *x;
        }
        sum
    }

    #[inline(always)]
    unsafe fn acc(w: &[f32], stride: usize, rows: &[&[f32]], out: &mut [f32]) {
        let Some(hd) = rows.first().map(|r| r.len()) else {
            return;
        };
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            for (j, r) in rows.iter().enumerate() {
                let a = w[g * stride + j];
                for (yi, xi) in o.iter_mut().zip(r.iter()) {
                    *yi += a * xi;
                }
            }
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
