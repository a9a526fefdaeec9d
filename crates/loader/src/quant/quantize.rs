//! Reference quantizers, after ggml's `quantize_row_*_ref`: round to nearest, no importance
//! matrix. One function per type, each encoding one block of values into one block of bytes.

use super::dequant::{f16_at, scale_min_k4};
use crate::ggml_type::QK_K;
use crate::GgmlType;

/// Runs `f` over matching (block values, block bytes) pairs. Lengths were checked by the caller.
#[inline(always)]
fn blocks<const BL: usize, const BB: usize>(
    src: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; BL], &mut [u8; BB]),
) {
    for (x, d) in src.chunks_exact(BL).zip(dst.chunks_exact_mut(BB)) {
        if let (Ok(x), Ok(d)) = (<&[f32; BL]>::try_from(x), <&mut [u8; BB]>::try_from(d)) {
            f(x, d);
        }
    }
}

/// Dispatches on `ty`; the caller checked that `ty` is supported and `dst` has the exact size.
pub(super) fn run(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    use GgmlType::*;
    match ty {
        F32 => blocks::<1, 4>(src, dst, |x, b| *b = x[0].to_le_bytes()),
        F16 => blocks::<1, 2>(src, dst, |x, b| *b = f16_bits(x[0]).to_le_bytes()),
        BF16 => blocks::<1, 2>(src, dst, |x, b| *b = bf16_bits(x[0]).to_le_bytes()),
        Q4_0 => blocks::<32, 18>(src, dst, q4_0),
        Q4_1 => blocks::<32, 20>(src, dst, q4_1),
        Q5_0 => blocks::<32, 22>(src, dst, q5_0),
        Q5_1 => blocks::<32, 24>(src, dst, q5_1),
        Q8_0 => blocks::<32, 34>(src, dst, q8_0),
        Q4K => blocks::<QK_K, 144>(src, dst, q4_k),
        Q5K => blocks::<QK_K, 176>(src, dst, q5_k),
        Q6K => blocks::<QK_K, 210>(src, dst, q6_k),
        _ => unreachable!("checked by can_quantize"),
    }
}

/// ggml's fp32 -> fp16: round to nearest even.
fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// ggml's fp32 -> bf16: NaN stays a quiet NaN, everything else rounds to nearest even.
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Stores `x` as f16 at byte `at` and returns the value as stored.
fn put_f16(b: &mut [u8], at: usize, x: f32) -> f32 {
    b[at..at + 2].copy_from_slice(&f16_bits(x).to_le_bytes());
    f16_at(b, at)
}

/// ggml's nearest_int: round half to even (the `x + 12582912.f` trick) for |x| < 2^22.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The value of largest magnitude, sign kept (the first one on ties), and its magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml quantize_row_q4_0_ref: d = max / -8 (max keeps its sign), q = min(15, trunc(x/d + 8.5)).
fn q4_0(x: &[f32; 32], b: &mut [u8; 18]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    for j in 0..16 {
        let x0 = (x[j] * id + 8.5) as i8;
        let x1 = (x[j + 16] * id + 8.5) as i8;
        b[2 + j] = (x0.min(15) as u8) | ((x1.min(15) as u8) << 4);
    }
}

/// ggml quantize_row_q4_1_ref: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + .5)).
fn q4_1(x: &[f32; 32], b: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    for j in 0..16 {
        let x0 = ((x[j] - min) * id + 0.5) as i8;
        let x1 = ((x[j + 16] - min) * id + 0.5) as i8;
        b[4 + j] = (x0.min(15) as u8) | ((x1.min(15) as u8) << 4);
    }
}

/// ggml quantize_row_q5_0_ref: d = max / -16, q = min(31, trunc(x/d + 16.5)); bit 4 of element j
/// goes to bit j of qh.
fn q5_0(x: &[f32; 32], b: &mut [u8; 22]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (x[j] * id + 16.5) as i8;
        let x1 = (x[j + 16] * id + 16.5) as i8;
        let (x0, x1) = (x0.min(31) as u8, x1.min(31) as u8);
        b[6 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// ggml quantize_row_q5_1_ref: d = (max - min) / 31, m = min, q = trunc((x - min)/d + 0.5).
fn q5_1(x: &[f32; 32], b: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    let mut qh = 0u32;
    for j in 0..16 {
        // ggml does not clamp here; (x - min) * id <= 31 up to rounding, and `as u8` saturates.
        let x0 = ((x[j] - min) * id + 0.5) as u8;
        let x1 = ((x[j + 16] - min) * id + 0.5) as u8;
        b[8 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// ggml quantize_row_q8_0_ref: d = amax / 127, q = round(x / d) (half away from zero).
fn q8_0(x: &[f32; 32], b: &mut [u8; 34]) {
    let (amax, _) = signed_absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    for j in 0..32 {
        b[2 + j] = ((x[j] * id).round() as i8) as u8;
    }
}

/// Parameters of ggml's make_qkx2_quants search.
struct Qkx2 {
    nmax: u8,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// ggml make_qkx2_quants (use_mad = false): fits x ~ scale * L - min with L in 0..=nmax by a
/// weighted least-squares search over nstep+1 trial scales. Returns (scale, min) with min >= 0.
fn make_qkx2_quants(p: &Qkx2, x: &[f32; 32], w: &[f32; 32], l_out: &mut [u8; 32]) -> (f32, f32) {
    let nmax = p.nmax as i32;
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..32 {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..32 {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        l_out[i] = l;
        let diff = scale * l as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let lf = l as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                *l_out = laux;
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The shared front half of ggml's Q4_K / Q5_K reference quantizers: per sub-block of 32 a
/// (scale, min) fit, both quantized to 6 bits against the block maxima and packed into the 12
/// scale bytes; then every value re-rounded against the stored scales. Writes d, dmin and scales
/// into b[0..16] and returns the levels L (0..=nmax) in element order.
fn k_scales_and_levels(p: &Qkx2, x: &[f32; QK_K], b: &mut [u8]) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().expect("32 values");
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let ls: &mut [u8; 32] = (&mut levels[32 * j..32 * j + 32]).try_into().expect("32");
        (scales[j], mins[j]) = make_qkx2_quants(p, xs, &w, ls);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t (wrapping), then takes min(63, .).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = put_f16(b, 0, max_scale / 63.0);
    let dmin = put_f16(b, 2, max_min / 63.0);
    b[4..16].copy_from_slice(&packed);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = d * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, p.nmax as i32) as u8;
        }
    }
    levels
}

/// ggml quantize_row_q4_K_ref (make_qkx2_quants with nmax 15, rmin -1, rdelta 0.1, 20 steps).
fn q4_k(x: &[f32; QK_K], b: &mut [u8; 144]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    let levels = k_scales_and_levels(&p, x, b);
    for g in 0..4 {
        for l in 0..32 {
            b[16 + 32 * g + l] = levels[64 * g + l] | (levels[64 * g + 32 + l] << 4);
        }
    }
}

/// ggml quantize_row_q5_K_ref (make_qkx2_quants with nmax 31, rmin -0.5, rdelta 0.1, 15 steps).
fn q5_k(x: &[f32; QK_K], b: &mut [u8; 176]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
    };
    let levels = k_scales_and_levels(&p, x, b);
    let mut qh = [0u8; 32];
    for g in 0..4 {
        let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for j in 0..32 {
            let (mut l1, mut l2) = (levels[64 * g + j], levels[64 * g + 32 + j]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            b[48 + 32 * g + j] = l1 | (l2 << 4);
        }
    }
    b[16..48].copy_from_slice(&qh);
}

/// ggml's GROUP_MAX_EPS: groups whose largest magnitude is below this quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml make_qx_quants with rmse_type 1 and no importance weights (weights x^2): symmetric levels
/// L in 0..2*nmax (value L - nmax), scale searched over 19 trial inverse scales. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32; 16], l_out: &mut [u8; 16]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let trial = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l_out: &mut [u8; 16]| {
        for (o, &v) in l_out.iter_mut().zip(x) {
            *o = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = trial(iscale);
    fill(iscale, l_out);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = trial(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l_out);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml quantize_row_q6_K_ref: 16 sub-blocks of 16 fitted by make_qx_quants(nmax 32), scales
/// quantized to int8 against the largest, values re-rounded against the stored scales.
fn q6_k(x: &[f32; QK_K], b: &mut [u8; 210]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let xs: &[f32; 16] = x[16 * ib..16 * ib + 16].try_into().expect("16 values");
        let ls: &mut [u8; 16] = (&mut levels[16 * ib..16 * ib + 16]).try_into().expect("16");
        scales[ib] = make_qx_quants(32, xs, ls);
        if scales[ib].abs() > max_abs_scale {
            max_abs_scale = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = put_f16(b, 208, 1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        b[192 + ib] = sc[ib] as u8;
    }
    for (j, &s) in sc.iter().enumerate() {
        let dj = d * s as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let (l, ql, qh) = (128 * half, 64 * half, 128 + 32 * half);
        for i in 0..32 {
            let (q1, q2) = (levels[l + i], levels[l + i + 32]);
            let (q3, q4) = (levels[l + i + 64], levels[l + i + 96]);
            b[ql + i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            b[ql + i + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            b[qh + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}
