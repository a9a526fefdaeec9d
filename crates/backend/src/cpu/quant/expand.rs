//! Unpacks one weight row's GGUF blocks into a [`WTile`] slot: one code byte per weight, a scale
//! per 4-element lane, an offset per half block (see the formula in `quant/mod.rs`).

use half::f16;

use super::{Geom, QMatrix, QType, WTile, QK};

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Writes row `r` of `w` (or zeros when `r` is None) into slot `s` of `tile`.
pub(super) fn row(w: &QMatrix, r: Option<usize>, g: Geom, tile: &mut WTile, s: usize) {
    let uw = &mut tile.uw[s * g.nbp * QK..(s + 1) * g.nbp * QK];
    let dw = &mut tile.dw[s * g.nbp * 8..(s + 1) * g.nbp * 8];
    let mw = &mut tile.mw[s * g.nhp..(s + 1) * g.nhp];
    let Some(r) = r else {
        uw.fill(0);
        dw.fill(0.0);
        mw.fill(0.0);
        return;
    };
    let src = w.row(r);
    let bb = w.ty.block_bytes();
    let blocks = src.chunks_exact(bb);
    // out: (codes of 32, lane scales of 8, half offsets of 2) for each block of 32 in order
    let mut outs = uw
        .chunks_exact_mut(QK)
        .zip(dw.chunks_exact_mut(8))
        .zip(mw.chunks_exact_mut(2));
    match w.ty {
        QType::Q4_0 | QType::Q4_1 => {
            let has_m = w.ty == QType::Q4_1;
            let qs_at = if has_m { 4 } else { 2 };
            for (blk, ((u, d), m)) in blocks.zip(&mut outs) {
                let dd = f16_at(blk, 0);
                let off = if has_m { f16_at(blk, 2) } else { -8.0 * dd };
                nibbles(&blk[qs_at..qs_at + 16], u);
                d.fill(dd);
                m.fill(off);
            }
        }
        QType::Q5_0 | QType::Q5_1 => {
            let has_m = w.ty == QType::Q5_1;
            let qh_at = if has_m { 4 } else { 2 };
            for (blk, ((u, d), m)) in blocks.zip(&mut outs) {
                let dd = f16_at(blk, 0);
                let off = if has_m { f16_at(blk, 2) } else { -16.0 * dd };
                let qh = u32::from_le_bytes(blk[qh_at..qh_at + 4].try_into().expect("4 bytes"));
                nibbles(&blk[qh_at + 4..qh_at + 20], u);
                for (j, c) in u.iter_mut().enumerate() {
                    *c |= (((qh >> j) & 1) << 4) as u8;
                }
                d.fill(dd);
                m.fill(off);
            }
        }
        QType::Q8_0 => {
            for (blk, ((u, d), m)) in blocks.zip(&mut outs) {
                let dd = f16_at(blk, 0);
                let flip = if tile.signed { 0 } else { 0x80 };
                for (c, &q) in u.iter_mut().zip(&blk[2..34]) {
                    *c = q ^ flip;
                }
                d.fill(dd);
                m.fill(if tile.signed { 0.0 } else { -128.0 * dd });
            }
        }
        QType::Q4_K | QType::Q5_K => {
            let five = w.ty == QType::Q5_K;
            let qs_at = if five { 48 } else { 16 };
            for blk in blocks {
                let dd = f16_at(blk, 0);
                let dmin = f16_at(blk, 2);
                let scales: &[u8; 12] = blk[4..16].try_into().expect("12 bytes");
                for j in 0..8 {
                    let ((u, d), m) = outs.next().expect("row has 8 sub-blocks per block");
                    let (sc, mn) = scale_min_k4(j, scales);
                    let q = &blk[qs_at + 32 * (j / 2)..qs_at + 32 * (j / 2) + 32];
                    let shift = 4 * (j % 2);
                    for (l, c) in u.iter_mut().enumerate() {
                        *c = (q[l] >> shift) & 0x0F;
                        if five {
                            *c |= ((blk[16 + l] >> j) & 1) << 4;
                        }
                    }
                    d.fill(dd * sc as f32);
                    m.fill(-dmin * mn as f32);
                }
            }
        }
        QType::Q6_K => {
            for blk in blocks {
                let dd = f16_at(blk, 208);
                for half in 0..2 {
                    let ql = &blk[64 * half..64 * half + 64];
                    let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &blk[192 + 8 * half..192 + 8 * half + 8];
                    // sub-block j of this half: values 32j..32j+32, low nibbles of ql[0..32]
                    // (j = 0, 2) or ql[32..64] (j = 1, 3), high nibbles for j >= 2
                    for j in 0..4 {
                        let ((u, d), m) = outs.next().expect("row has 8 sub-blocks per block");
                        let lo = &ql[32 * (j % 2)..32 * (j % 2) + 32];
                        let shift = 4 * (j / 2);
                        for (l, c) in u.iter_mut().enumerate() {
                            *c = ((lo[l] >> shift) & 0x0F) | (((qh[l] >> (2 * j)) & 3) << 4);
                        }
                        let (s0, s1) = (
                            dd * (sc[2 * j] as i8) as f32,
                            dd * (sc[2 * j + 1] as i8) as f32,
                        );
                        d[..4].fill(s0);
                        d[4..].fill(s1);
                        m[0] = -32.0 * s0;
                        m[1] = -32.0 * s1;
                    }
                }
            }
        }
    }
    let done = g.nb;
    uw[done * QK..].fill(0);
    dw[done * 8..].fill(0.0);
    mw[2 * done..].fill(0.0);
}

/// 16 bytes of nibbles: low nibbles are elements 0..16, high nibbles 16..32.
#[inline(always)]
fn nibbles(q: &[u8], u: &mut [u8]) {
    for l in 0..16 {
        u[l] = q[l] & 0x0F;
        u[l + 16] = q[l] >> 4;
    }
}

/// ggml's get_scale_min_k4: sub-block j's 6-bit (scale, min) from Q4_K/Q5_K's 12 scale bytes.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
