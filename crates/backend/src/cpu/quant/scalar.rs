//! Portable quantized kernel: the reference every other instruction set is tested against.

use super::{KernelArgs, QK};

/// # Safety
/// `a.y` must point to an (n, y_stride) buffer whose columns `y_col..y_col + nr` no one else
/// touches during the call.
pub(super) unsafe fn rows(a: &KernelArgs) {
    let g = a.g;
    let t = a.tile;
    for i in 0..a.n {
        let qx = &a.acts.qx[i * g.nbp * QK..(i + 1) * g.nbp * QK];
        let dx = &a.acts.dx[i * g.nbp * 8..(i + 1) * g.nbp * 8];
        let sx = &a.acts.sx[i * g.nhp..(i + 1) * g.nhp];
        for r in 0..a.nr {
            let uw = &t.uw[r * g.nbp * QK..(r + 1) * g.nbp * QK];
            let dw = &t.dw[r * g.nbp * 8..(r + 1) * g.nbp * 8];
            let mw = &t.mw[r * g.nhp..(r + 1) * g.nhp];
            let mut acc = 0f32;
            for lane in 0..g.nb * 8 {
                let (u, q) = (&uw[4 * lane..4 * lane + 4], &qx[4 * lane..4 * lane + 4]);
                let s: i32 = if t.signed {
                    (0..4).map(|e| (u[e] as i8) as i32 * q[e] as i32).sum()
                } else {
                    (0..4).map(|e| u[e] as i32 * q[e] as i32).sum()
                };
                acc += s as f32 * (dw[lane] * dx[lane]);
            }
            for h in 0..2 * g.nb {
                acc += mw[h] * sx[h];
            }
            *a.y.0.add(i * a.y_stride + a.y_col + r) = acc;
        }
    }
}
