//! FP8 E4M3 (the `e4m3fn` of OCP's 8-bit formats, NVIDIA's `__nv_fp8_e4m3`): 1 sign bit, 4
//! exponent bits (bias 7), 3 mantissa bits; no infinities; `S.1111.111` is NaN; the largest finite
//! magnitude is 448 (`S.1111.110`), the smallest subnormal 2^-9.
//!
//! Weights are stored as FP8 codes with an f32 scale per tensor or per output row
//! ([`Fp8Scaling`]): `w ≈ decode(code) * scale`, `scale = amax / 448` so the largest magnitude maps
//! to the largest code. This is the layout cuBLASLt's FP8 GEMM reads on Hopper (codes plus a scale
//! applied to the product), and what `--quantization fp8` and `--kv-cache-dtype fp8` store on a
//! GPU. Encoding rounds to nearest, ties to even, and saturates (CUDA's `__NV_SATFINITE`): a
//! finite value past 448 and ±inf become ±448; NaN stays NaN. [`Fp8Matrix::dequantize`] is the
//! CPU reference a device's results are checked against.
//!
//! Error bound of a round trip (tested): `|x - x'| <= max(|x| / 16, scale / 1024)`: half a unit
//! in the last place of a 3-bit mantissa for normal codes (relative 2^-4), half the subnormal step
//! 2^-9 below the smallest normal 2^-6.

use half::{bf16, f16};

use crate::{Error, Result};

/// The largest finite E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// The code of NaN (positive sign).
pub const E4M3_NAN: u8 = 0x7f;

/// The value of an E4M3 code.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = (code >> 3) & 0xf;
    let man = (code & 7) as f32;
    if exp == 0xf && code & 7 == 7 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        man / 8.0 * (-6f32).exp2()
    } else {
        (1.0 + man / 8.0) * (exp as f32 - 7.0).exp2()
    };
    sign * mag
}

/// The E4M3 code nearest `x` (ties to even), saturating at ±448; NaN gives [`E4M3_NAN`].
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // Below the smallest normal 2^-6, codes are multiples of 2^-9; `a * 512` is exact, and a
    // rounding up to 8 is the smallest normal's code (exponent 1, mantissa 0), as it should be.
    if a < (-6f32).exp2() {
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127; // -6..=8
    let man = bits & 0x7f_ffff;
    let (top, rest) = (man >> 20, man & 0xf_ffff);
    let up = rest > 0x8_0000 || (rest == 0x8_0000 && top & 1 == 1);
    // A mantissa carry moves into the exponent, as it should; 448 + half a step rounds to 480's
    // code 0x7f (NaN), which saturation keeps at 0x7e.
    let code = (((exp + 7) as u32) << 3) + top + u32::from(up);
    sign | code.min(0x7e) as u8
}

/// Values an FP8 matrix can be made from.
pub trait Fp8Source: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl Fp8Source for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl Fp8Source for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Fp8Source for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// One scale for the whole matrix, or one per output row (tighter where rows differ in range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    PerTensor,
    PerRow,
}

/// A matrix (rows, cols), row-major, as E4M3 codes and scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols) codes.
    pub codes: Vec<u8>,
    /// (1,) per tensor or (rows,) per row: a code's value times its scale is the weight.
    pub scales: Vec<f32>,
}

/// The scale that maps the largest finite magnitude of `v` to 448; 1 when there is none (all
/// zeros, or no finite value). NaN and ±inf do not count: one stray value must not flatten a
/// whole tensor to zeros.
fn scale_of<T: Fp8Source>(v: &[T]) -> f32 {
    let amax = v
        .iter()
        .map(|x| x.to_f32().abs())
        .filter(|a| a.is_finite())
        .fold(0.0f32, f32::max);
    if amax > 0.0 {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

impl Fp8Matrix {
    /// Quantizes `values` (rows, cols), row-major.
    pub fn quantize<T: Fp8Source>(
        values: &[T],
        rows: usize,
        cols: usize,
        scaling: Fp8Scaling,
    ) -> Result<Self> {
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(Error::BadTensor {
                name: "<fp8 matrix>".into(),
                reason: format!("{} values are not a ({rows}, {cols}) matrix", values.len()),
            });
        }
        let scales = match scaling {
            Fp8Scaling::PerTensor => vec![scale_of(values)],
            Fp8Scaling::PerRow => values.chunks(cols.max(1)).map(scale_of).collect(),
        };
        let mut codes = vec![0u8; values.len()];
        for (r, (out, row)) in codes
            .chunks_mut(cols.max(1))
            .zip(values.chunks(cols.max(1)))
            .enumerate()
        {
            let inv = 1.0 / scales[r.min(scales.len() - 1)];
            for (o, &x) in out.iter_mut().zip(row) {
                *o = f32_to_e4m3(x.to_f32() * inv);
            }
        }
        Ok(Self {
            rows,
            cols,
            codes,
            scales,
        })
    }

    /// The scale of row `r`.
    pub fn scale(&self, r: usize) -> f32 {
        self.scales[if self.scales.len() == 1 { 0 } else { r }]
    }

    /// Row `r` as f32 into `out` (cols,): the CPU reference of the device's dequantization.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let s = self.scale(r);
        let row = &self.codes[r * self.cols..(r + 1) * self.cols];
        for (o, &c) in out.iter_mut().zip(row) {
            *o = e4m3_to_f32(c) * s;
        }
    }

    /// The whole matrix as f32 (rows, cols).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_mut(self.cols.max(1)).enumerate().take(self.rows) {
            self.dequantize_row(r, o);
        }
        out
    }

    /// Bytes on a device: a byte per weight plus the scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// A half-precision tensor's values read straight from its little-endian bytes (bf16 or f16).
fn half_values(bytes: &[u8], bf: bool) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(2).map(move |b| {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        if bf {
            bf16::from_bits(bits).to_f32()
        } else {
            f16::from_bits(bits).to_f32()
        }
    })
}

/// Per-tensor FP8 rounding of a bf16 (`bf = true`) or f16 tensor of `cols`-wide rows, read
/// straight from its little-endian `bytes` in two passes (the largest magnitude, then a row at a
/// time): `row` receives each row's values `decode(code) x scale`, bit for bit what
/// [`Fp8Matrix::quantize`] with [`Fp8Scaling::PerTensor`] then [`Fp8Matrix::dequantize`] give,
/// without an f32 copy of the tensor (one row of f32 at a time).
pub fn round_half_rows(
    bytes: &[u8],
    bf: bool,
    cols: usize,
    mut row: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let cols = cols.max(1);
    if !bytes.len().is_multiple_of(2 * cols) {
        return Err(Error::BadTensor {
            name: "<fp8 matrix>".into(),
            reason: format!("{} bytes are not rows of {cols} half values", bytes.len()),
        });
    }
    let amax = half_values(bytes, bf)
        .map(f32::abs)
        .filter(|a| a.is_finite())
        .fold(0.0f32, f32::max);
    let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
    let inv = 1.0 / scale;
    let mut buf = Vec::with_capacity(cols);
    for r in bytes.chunks(2 * cols) {
        buf.clear();
        buf.extend(half_values(r, bf).map(|x| e4m3_to_f32(f32_to_e4m3(x * inv)) * scale));
        row(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounding a bf16/f16 tensor from its bytes a row at a time equals quantizing its f32 copy
    /// per tensor and decoding it, bit for bit (NaN, infinities, zeros and subnormals included);
    /// an all-zero tensor keeps scale 1.
    #[test]
    fn half_rows_round_as_the_f32_copy_does() {
        let mut seed = 5u64;
        let mut vals: Vec<f32> = (0..96 * 40)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        vals[5] = f32::NAN;
        vals[77] = f32::INFINITY;
        vals[78] = -0.0;
        vals[200] = 1e-6;
        for bf in [true, false] {
            for v in [vals.clone(), vec![0.0; 96 * 3]] {
                let bytes: Vec<u8> = v
                    .iter()
                    .flat_map(|&x| match bf {
                        true => bf16::from_f32(x).to_le_bytes(),
                        false => f16::from_f32(x).to_le_bytes(),
                    })
                    .collect();
                let f: Vec<f32> = half_values(&bytes, bf).collect();
                let want = Fp8Matrix::quantize(&f, f.len() / 96, 96, Fp8Scaling::PerTensor)
                    .unwrap()
                    .dequantize();
                let mut got = Vec::new();
                round_half_rows(&bytes, bf, 96, |r| {
                    assert_eq!(r.len(), 96);
                    got.extend_from_slice(r);
                    Ok(())
                })
                .unwrap();
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "bf16 {bf}");
            }
        }
        assert!(round_half_rows(&[0; 6], true, 2, |_| Ok(())).is_err());
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            let v = e4m3_to_f32(c);
            if c & 0x7f == 0x7f {
                assert!(v.is_nan(), "{c:#x}");
                assert_eq!(f32_to_e4m3(v), E4M3_NAN);
                continue;
            }
            assert_eq!(f32_to_e4m3(v), c, "{c:#x} = {v}");
        }
        // The format's landmarks.
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0xfe), -448.0);
        assert_eq!(e4m3_to_f32(0x01), (-9f32).exp2());
        assert_eq!(e4m3_to_f32(0x08), (-6f32).exp2());
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // Around 1: steps of 1/8. 1 + 1/16 is a tie between 0x38 (even) and 0x39.
        assert_eq!(f32_to_e4m3(1.0 + 1.0 / 16.0), 0x38);
        assert_eq!(f32_to_e4m3(1.0 + 3.0 / 16.0), 0x3a); // tie 0x39/0x3a -> even
        assert_eq!(f32_to_e4m3(1.0 + 1.0 / 16.0 + 1e-6), 0x39);
        // 1.9375 is between 1.875 (0x3f) and 2 (0x40): a tie, to the even 0x40 (a carry).
        assert_eq!(f32_to_e4m3(1.9375), 0x40);
        // Subnormals: steps of 2^-9; half a step is a tie to even (0).
        assert_eq!(f32_to_e4m3((-10f32).exp2()), 0x00);
        assert_eq!(f32_to_e4m3(3.0 * (-10f32).exp2()), 0x02);
        // Between the largest subnormal (7 * 2^-9) and the smallest normal (8 * 2^-9).
        assert_eq!(f32_to_e4m3(7.5 * (-9f32).exp2()), 0x08);
        // Every value between two neighbouring codes goes to the nearer one.
        for c in 0..0x7eu8 {
            let (a, b) = (e4m3_to_f32(c), e4m3_to_f32(c + 1));
            for t in [0.01f32, 0.3, 0.49, 0.51, 0.7, 0.99] {
                let x = a + (b - a) * t;
                assert_eq!(f32_to_e4m3(x), if t < 0.5 { c } else { c + 1 }, "{x}");
                assert_eq!(f32_to_e4m3(-x), 0x80 | f32_to_e4m3(x));
            }
        }
    }

    #[test]
    fn saturates_and_keeps_nan() {
        for x in [448.0f32, 449.0, 464.0, 480.0, 1e6, f32::MAX, f32::INFINITY] {
            assert_eq!(f32_to_e4m3(x), 0x7e, "{x}");
            assert_eq!(f32_to_e4m3(-x), 0xfe, "{x}");
        }
        assert_eq!(f32_to_e4m3(f32::NAN), E4M3_NAN);
        assert_eq!(f32_to_e4m3(-f32::NAN), E4M3_NAN);
        assert_eq!(f32_to_e4m3(1e-30), 0);
        assert_eq!(f32_to_e4m3(-1e-30), 0x80);
    }

    /// A seeded stream of values spanning many magnitudes, some zero.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let e = ((s >> 3) % 24) as i32 - 16;
                if (s >> 40) & 63 == 0 {
                    0.0
                } else {
                    ((u * 2.0 - 1.0) * 2f64.powi(e)) as f32
                }
            })
            .collect()
    }

    fn assert_within_bound(x: &[f32], m: &Fp8Matrix) {
        let d = m.dequantize();
        for (i, (&a, &b)) in x.iter().zip(&d).enumerate() {
            let s = m.scale(i / m.cols);
            let bound = (a.abs() / 16.0).max(s / 1024.0) * (1.0 + 1e-6);
            assert!((a - b).abs() <= bound, "[{i}] {a} -> {b} (scale {s})");
        }
    }

    #[test]
    fn round_trip_error_is_bounded_for_f32_bf16_and_f16() {
        let (rows, cols) = (12, 80);
        let x = values(rows * cols, 7);
        for scaling in [Fp8Scaling::PerTensor, Fp8Scaling::PerRow] {
            let m = Fp8Matrix::quantize(&x, rows, cols, scaling).unwrap();
            assert_eq!(
                m.scales.len(),
                if scaling == Fp8Scaling::PerRow {
                    rows
                } else {
                    1
                }
            );
            assert_within_bound(&x, &m);
            // The largest magnitude maps to the largest code, so nothing saturates.
            assert!(m.codes.iter().any(|&c| c & 0x7f == 0x7e));
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let xb32: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
            let mb = Fp8Matrix::quantize(&xb, rows, cols, scaling).unwrap();
            assert_eq!(mb, Fp8Matrix::quantize(&xb32, rows, cols, scaling).unwrap());
            assert_within_bound(&xb32, &mb);
            let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let xh32: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
            let mh = Fp8Matrix::quantize(&xh, rows, cols, scaling).unwrap();
            assert_within_bound(&xh32, &mh);
        }
    }

    #[test]
    fn per_row_scales_keep_small_rows_precise() {
        // Row 0 is 1e5 times row 1: one scale puts row 1 among the coarse subnormals.
        let row: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 32.0).collect();
        let x: Vec<f32> = row
            .iter()
            .map(|v| v * 1e5)
            .chain(row.iter().copied())
            .collect();
        let err = |m: &Fp8Matrix| {
            let d = m.dequantize();
            (64..128)
                .map(|i| (x[i] - d[i]).abs())
                .fold(0.0f32, f32::max)
        };
        let t = Fp8Matrix::quantize(&x, 2, 64, Fp8Scaling::PerTensor).unwrap();
        let r = Fp8Matrix::quantize(&x, 2, 64, Fp8Scaling::PerRow).unwrap();
        assert!(err(&r) * 4.0 < err(&t), "{} vs {}", err(&r), err(&t));
        assert_eq!(r.bytes(), 128 + 8);
        assert_eq!(t.bytes(), 128 + 4);
    }

    #[test]
    fn nan_and_inf_do_not_set_the_scale() {
        let x = [
            1.0f32,
            f32::NAN,
            -2.0,
            f32::INFINITY,
            0.5,
            f32::NEG_INFINITY,
        ];
        let m = Fp8Matrix::quantize(&x, 1, 6, Fp8Scaling::PerTensor).unwrap();
        assert_eq!(m.scales, vec![2.0 / 448.0]);
        let d = m.dequantize();
        assert!(d[1].is_nan());
        assert_eq!(d[2], -2.0);
        assert_eq!(d[3], 2.0, "inf saturates to the largest code");
        assert_eq!(d[5], -2.0);
        assert!((d[0] - 1.0).abs() <= 1.0 / 16.0);
        // All zeros: scale 1, codes 0.
        let z = Fp8Matrix::quantize(&[0.0f32; 8], 2, 4, Fp8Scaling::PerRow).unwrap();
        assert_eq!(z.scales, vec![1.0, 1.0]);
        assert!(z.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_wrong_shape_is_an_error() {
        let e = Fp8Matrix::quantize(&[1.0f32; 10], 3, 4, Fp8Scaling::PerRow)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(3, 4)"), "{e}");
    }
}
