//! Block decoders: one function per type, each turning one block (a fixed-size byte array) into
//! its values (a fixed-size f32 array), exactly as ggml's `dequantize_row_*`.
//!
//! Hot loop: `blocks` below runs once per block of every weight at model load (100M+ values), so
//! the decoders index fixed-size arrays with constant bounds and never allocate.

use crate::ggml_type::QK_K;
use crate::GgmlType;

/// Runs `f` over matching (block bytes, block values) pairs. Lengths were checked by the caller.
#[inline(always)]
fn blocks<const BB: usize, const BL: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; BB], &mut [f32; BL]),
) {
    for (s, d) in src.chunks_exact(BB).zip(dst.chunks_exact_mut(BL)) {
        // `chunks_exact` yields exactly BB / BL items, so these conversions cannot fail.
        if let (Ok(s), Ok(d)) = (<&[u8; BB]>::try_from(s), <&mut [f32; BL]>::try_from(d)) {
            f(s, d);
        }
    }
}

/// A fixed-size view `b[at..at + N]`; `at` and `N` are constants at every call site.
#[inline(always)]
pub(super) fn sub<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    b[at..at + N]
        .try_into()
        .expect("constant in-range sub-array")
}

/// ggml_fp16_t (IEEE half, little-endian) at byte `at`.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(*sub::<2>(b, at))).to_f32()
}

/// Dispatches on `ty`. The caller checked that `ty` is supported and the lengths match.
pub(super) fn run(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => blocks::<4, 1>(src, dst, |b, y| y[0] = f32::from_le_bytes(*b)),
        F16 => f16_slice(src, dst),
        BF16 => blocks::<2, 1>(src, dst, |b, y| {
            y[0] = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16)
        }),
        Q4_0 => blocks::<18, 32>(src, dst, q4_0),
        Q4_1 => blocks::<20, 32>(src, dst, q4_1),
        Q5_0 => blocks::<22, 32>(src, dst, q5_0),
        Q5_1 => blocks::<24, 32>(src, dst, q5_1),
        Q8_0 => blocks::<34, 32>(src, dst, q8_0),
        Q2K => blocks::<84, QK_K>(src, dst, q2_k),
        Q3K => blocks::<110, QK_K>(src, dst, q3_k),
        Q4K => blocks::<144, QK_K>(src, dst, q4_k),
        Q5K => blocks::<176, QK_K>(src, dst, q5_k),
        Q6K => blocks::<210, QK_K>(src, dst, q6_k),
        Q8K => blocks::<292, QK_K>(src, dst, q8_k),
        I8 | I16 | I32 | I64 | F64 => unreachable!("checked by can_dequantize"),
    }
}

/// f16 values, 64 at a time through `half`'s slice conversion (F16C / NEON when available).
fn f16_slice(src: &[u8], dst: &mut [f32]) {
    const N: usize = 64;
    let mut buf = [half::f16::ZERO; N];
    let mut chunks = src.chunks_exact(2 * N).zip(dst.chunks_exact_mut(N));
    for (s, d) in &mut chunks {
        for (h, b) in buf.iter_mut().zip(s.chunks_exact(2)) {
            *h = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(&buf[..], d);
    }
    let done = dst.len() / N * N;
    for (b, y) in src[2 * done..].chunks_exact(2).zip(&mut dst[done..]) {
        *y = f16_at(b, 0);
    }
}

/// block_q4_0 { d: f16, qs: [u8; 16] }: x = d * (q - 8); low nibbles are elements 0..16, high
/// nibbles 16..32.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = sub::<16>(b, 2);
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// block_q4_1 { d: f16, m: f16, qs: [u8; 16] }: x = d * q + m, nibble order as Q4_0.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = sub::<16>(b, 4);
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// block_q5_0 { d: f16, qh: u32 (LE), qs: [u8; 16] }: bit j of qh is bit 4 of element j;
/// x = d * (q - 16).
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes(*sub::<4>(b, 2));
    let qs = sub::<16>(b, 6);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// block_q5_1 { d: f16, m: f16, qh: u32 (LE), qs: [u8; 16] }: x = d * q + m, bits as Q5_0.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes(*sub::<4>(b, 4));
    let qs = sub::<16>(b, 8);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// block_q8_0 { d: f16, qs: [i8; 32] }: x = d * q.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = sub::<32>(b, 2);
    for j in 0..32 {
        y[j] = (qs[j] as i8) as f32 * d;
    }
}

/// block_q2_K { scales: [u8; 16] (low nibble scale, high nibble min), qs: [u8; 64], d: f16,
/// dmin: f16 }. Each 128-value half uses 32 bytes of qs; within it, 2-bit field `j` (shift 2j) of
/// bytes 0..16 and 16..32 gives sub-blocks 2j and 2j+1 of 16 values. x = d*sc*q - dmin*m.
fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales = sub::<16>(b, 0);
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for half in 0..2 {
        let q = sub::<32>(b, 16 + 32 * half);
        for j in 0..4 {
            let shift = 2 * j;
            for h in 0..2 {
                let sc = scales[8 * half + 2 * j + h];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let out = 128 * half + 32 * j + 16 * h;
                for l in 0..16 {
                    y[out + l] = dl * ((q[16 * h + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K's 16 six-bit scales from 12 bytes: scale j has low nibble `b[j] & 15` (j < 8) or
/// `b[j - 8] >> 4` (j >= 8), and high two bits `(b[8 + j % 4] >> (2 * (j / 4))) & 3`.
pub(super) fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }. Low two bits as Q2_K;
/// the high bit of element (half, j, h, l) is bit `4*half + j` of hmask[16h + l], and a clear bit
/// subtracts 4. x = d * (scale - 32) * q.
fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let hm = sub::<32>(b, 0);
    let scales = q3_k_scales(sub::<12>(b, 96));
    let d_all = f16_at(b, 108);
    for half in 0..2 {
        let q = sub::<32>(b, 32 + 32 * half);
        for j in 0..4 {
            let shift = 2 * j;
            let m = 1u8 << (4 * half + j);
            for h in 0..2 {
                let dl = d_all * scales[8 * half + 2 * j + h] as f32;
                let out = 128 * half + 32 * j + 16 * h;
                for l in 0..16 {
                    let low = ((q[16 * h + l] >> shift) & 3) as i32;
                    let sub4 = if hm[16 * h + l] & m != 0 { 0 } else { 4 };
                    y[out + l] = dl * (low - sub4) as f32;
                }
            }
        }
    }
}

/// ggml's get_scale_min_k4: sub-block j's 6-bit (scale, min) from Q4_K/Q5_K's 12 scale bytes.
/// j < 4: low 6 bits of bytes j and j+4. j >= 4: low/high nibble of byte j+4 plus the top two
/// bits of bytes j-4 (scale) and j (min).
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }: 8 sub-blocks of 32. Group g
/// of 64 values uses qs[32g..32g+32]: low nibbles are sub-block 2g, high nibbles 2g+1.
/// x = d*sc*q - dmin*m.
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = sub::<12>(b, 4);
    for g in 0..4 {
        let q = sub::<32>(b, 16 + 32 * g);
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * g + l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[64 * g + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }: as Q4_K, plus
/// bit 2g (low nibbles) or 2g+1 (high nibbles) of qh[l] adds 16.
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = sub::<12>(b, 4);
    let qh = sub::<32>(b, 16);
    for g in 0..4 {
        let ql = sub::<32>(b, 48 + 32 * g);
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * g + l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            y[64 * g + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }. Per 128-value half:
/// ql[0..32] low/high nibbles are values 0..32 / 64..96, ql[32..64] are 32..64 / 96..128, and
/// qh[l] bits (0-1, 2-3, 4-5, 6-7) are bits 4-5 of values l, l+32, l+64, l+96. Value i uses
/// scale i / 16. x = d * scale * (q - 32).
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    let sc = sub::<16>(b, 192);
    for half in 0..2 {
        let ql = sub::<64>(b, 64 * half);
        let qh = sub::<32>(b, 128 + 32 * half);
        let sc = sub::<8>(sc, 8 * half);
        let y: &mut [f32; 128] = (&mut y[128 * half..128 * half + 128])
            .try_into()
            .expect("constant in-range sub-array");
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// block_q8_K { d: f32, qs: [i8; 256], bsums: [i16; 16] }: x = d * q (bsums unused here).
fn q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes(*sub::<4>(b, 0));
    let qs = sub::<QK_K>(b, 4);
    for j in 0..QK_K {
        y[j] = (qs[j] as i8) as f32 * d;
    }
}
