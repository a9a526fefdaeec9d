//! Portable kernels: the reference every other instruction set is tested against.

use super::Block;

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler vectorizes this, and rounding stays close to the SIMD paths.
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// # Safety
/// `b.y` must point to an (n, y_stride) buffer whose columns `y_col..y_col + rows` no one else
/// touches during the call.
pub unsafe fn gemm_block(b: &Block) {
    for i in 0..b.n {
        let xr = &b.x[i * b.k..(i + 1) * b.k];
        for r in 0..b.rows {
            let v = dot(xr, &b.w[r * b.k..(r + 1) * b.k]);
            *b.y.0.add(i * b.y_stride + b.y_col + r) = v;
        }
    }
}

/// `h = silu(gate) * up`, `silu(g) = g / (1 + e^-g)` with the library's `exp`.
pub fn silu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `h = gelu(gate) * up`, GELU's tanh form as `g / (1 + e^-2u)` with the library's `exp`: the
/// reference of the SIMD paths.
pub fn gelu(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        let z = -2.0 * super::SQRT_2_OVER_PI * g * (1.0 + super::GELU_COEF_A * g * g);
        *o = g / (1.0 + z.exp()) * u;
    }
}
