//! quantize -> dequantize on deterministic pseudo-random data, within each format's error bound;
//! and the errors for wrong lengths and unsupported types.

use super::*;

/// A 64-bit LCG (Knuth's MMIX constants); `next` is uniform in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly normal: the sum of four uniforms.
    fn normal(&mut self) -> f32 {
        (self.next() + self.next() + self.next() + self.next()) * 0.9
    }
}

/// 16 super-blocks (4096 values) of varied shape: normal data at different scales, an all-positive
/// block, a block with one outlier, a block of zeros and a constant block.
fn test_data() -> Vec<f32> {
    let mut r = Lcg(0x5eed);
    let mut x = Vec::with_capacity(16 * QK);
    for sb in 0..16 {
        let scale = [0.02, 1.0, 30.0, 0.001][sb % 4];
        for i in 0..QK {
            let v = match sb {
                5 => 0.5 + 0.25 * r.next(), // all positive
                6 if i == 77 => 40.0,       // outlier among small values
                6 => 0.02 * r.normal(),
                7 => 0.0,
                8 => -0.75,
                _ => scale * r.normal(),
            };
            x.push(v);
        }
    }
    x
}

const QK: usize = crate::ggml_type::QK_K;

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut q = Vec::new();
    quantize(ty, x, &mut q).unwrap();
    assert_eq!(q.len(), x.len() / ty.block_len() * ty.block_bytes());
    let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
    assert!(y.iter().all(|v| v.is_finite()), "{ty}: non-finite output");
    y
}

/// Max |x - y| per block of `n`, divided by `bound(block)`, must stay <= 1.
fn check_blocks(ty: GgmlType, n: usize, bound: impl Fn(&[f32]) -> f32) {
    let x = test_data();
    let y = round_trip(ty, &x);
    for (b, (xs, ys)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
        let lim = bound(xs);
        for (i, (a, c)) in xs.iter().zip(ys).enumerate() {
            assert!(
                (a - c).abs() <= lim,
                "{ty} block {b} element {i}: {a} -> {c}, bound {lim}"
            );
        }
    }
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn range(x: &[f32]) -> (f32, f32) {
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(f32::MIN, f32::max);
    (min, max)
}

// f16 keeps 11 significant bits: storing d (or m) costs a relative 2^-11 of each term, or, for
// subnormal f16 (below 2^-14, e.g. d of a block of 1e-3 values), up to half the 2^-24 spacing.
const F16_EPS: f32 = 1.0 / 2048.0;
const F16_SUB: f32 = 1.0 / (1u32 << 25) as f32;

#[test]
fn plain_float_round_trips() {
    let x = test_data();
    assert_eq!(round_trip(GgmlType::F32, &x), x);
    for (a, c) in x.iter().zip(round_trip(GgmlType::F16, &x)) {
        assert!((a - c).abs() <= a.abs() * F16_EPS + 6e-8, "f16 {a} -> {c}");
    }
    for (a, c) in x.iter().zip(round_trip(GgmlType::BF16, &x)) {
        assert!((a - c).abs() <= a.abs() / 256.0, "bf16 {a} -> {c}");
    }
}

#[test]
fn q8_0_round_trip() {
    // Half a step (amax/127) plus the f16 rounding of d applied to |q| <= 127.
    check_blocks(GgmlType::Q8_0, 32, |x| {
        amax(x) * (0.5 / 127.0 + F16_EPS) * 1.001 + 127.0 * F16_SUB
    });
}

#[test]
fn q4_0_round_trip() {
    // Step amax/8; the value opposite in sign to the extreme one clamps at q = 15, a full step.
    check_blocks(GgmlType::Q4_0, 32, |x| {
        amax(x) * (1.0 / 8.0 + F16_EPS) * 1.001 + 8.0 * F16_SUB
    });
}

#[test]
fn q5_0_round_trip() {
    check_blocks(GgmlType::Q5_0, 32, |x| {
        amax(x) * (1.0 / 16.0 + F16_EPS) * 1.001 + 16.0 * F16_SUB
    });
}

#[test]
fn q4_1_round_trip() {
    // Half a step (max-min)/15, plus f16 rounding of d (times q <= 15) and of m.
    check_blocks(GgmlType::Q4_1, 32, |x| {
        let (min, max) = range(x);
        ((max - min) * (0.5 / 15.0 + F16_EPS) + min.abs() * F16_EPS) * 1.001 + 16.0 * F16_SUB
    });
}

#[test]
fn q5_1_round_trip() {
    check_blocks(GgmlType::Q5_1, 32, |x| {
        let (min, max) = range(x);
        ((max - min) * (0.5 / 31.0 + F16_EPS) + min.abs() * F16_EPS) * 1.001 + 32.0 * F16_SUB
    });
}

/// RMS error over RMS value, per super-block with non-zero data.
fn rel_rms(ty: GgmlType) -> f32 {
    let x = test_data();
    let y = round_trip(ty, &x);
    let mut worst = 0f32;
    for (xs, ys) in x.chunks(QK).zip(y.chunks(QK)) {
        let sx: f32 = xs.iter().map(|v| v * v).sum();
        let se: f32 = xs.iter().zip(ys).map(|(a, c)| (a - c) * (a - c)).sum();
        if sx == 0.0 {
            assert_eq!(se, 0.0, "{ty}: zeros must stay zeros");
        } else {
            worst = worst.max((se / sx).sqrt());
        }
    }
    worst
}

#[test]
fn k_quant_round_trips() {
    // 4-, 5- and 6-bit levels: about 1/15, 1/31 and 1/63 of the range per step; RMS error of a
    // rounding is step/sqrt(12), so relative RMS near 0.05, 0.025 and 0.012 on normal data.
    for (ty, limit) in [
        (GgmlType::Q4K, 0.12),
        (GgmlType::Q5K, 0.06),
        (GgmlType::Q6K, 0.03),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q4_0, 0.15),
    ] {
        let e = rel_rms(ty);
        assert!(e < limit, "{ty}: relative RMS error {e} >= {limit}");
    }
}

#[test]
fn k_quants_keep_constant_and_outlier_blocks_close() {
    let x = test_data();
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        let y = round_trip(ty, &x);
        // Super-block 8 is constant -0.75; super-block 6 has a 40.0 outlier at index 77.
        let c = &y[8 * QK..9 * QK];
        assert!(c.iter().all(|v| (v + 0.75).abs() < 0.01), "{ty}: constant");
        let o = y[6 * QK + 77];
        assert!((o - 40.0).abs() < 2.0, "{ty}: outlier 40 -> {o}");
    }
}

#[test]
fn zeros_quantize_to_zeros() {
    let x = vec![0.0f32; 2 * QK];
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert!(round_trip(ty, &x).iter().all(|&v| v == 0.0), "{ty}");
    }
}

#[test]
fn bf16_rounds_like_ggml() {
    // 1 + 2^-8 is a tie between bf16 1.0 and 1.0078125: to even (1.0). 1 + 3*2^-8 -> up.
    let mut out = Vec::new();
    quantize(
        GgmlType::BF16,
        &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [0x80, 0x3F, 0x82, 0x3F]);
}

fn reason(e: Error) -> String {
    e.to_string()
}

#[test]
fn wrong_lengths_are_errors() {
    let mut y = vec![0f32; 33];
    let e = dequantize(GgmlType::Q4_0, &[0; 18], &mut y).unwrap_err();
    assert!(matches!(e, Error::BadTensor { .. }));
    assert!(reason(e).contains("33 values"));

    let mut y = vec![0f32; 32];
    let e = dequantize(GgmlType::Q4_0, &[0; 17], &mut y).unwrap_err();
    let msg = reason(e);
    assert!(msg.contains("18 bytes") && msg.contains("got 17"), "{msg}");
    assert!(dequantize(GgmlType::Q4_0, &[0; 19], &mut y).is_err());

    let mut y = vec![0f32; QK];
    assert!(dequantize(GgmlType::Q6K, &[0; 209], &mut y).is_err());
    assert!(dequantize(GgmlType::Q6K, &[0; 210], &mut y).is_ok());

    // Empty is fine.
    assert!(dequantize(GgmlType::Q4K, &[], &mut []).is_ok());

    let mut q = Vec::new();
    let e = quantize(GgmlType::Q4K, &[0.0; 100], &mut q).unwrap_err();
    assert!(reason(e).contains("100 values"));
    assert!(q.is_empty(), "nothing appended on error");
}

#[test]
fn huge_counts_fail_without_allocating() {
    assert!(dequantize_to_vec(GgmlType::F32, &[0; 8], 1 << 60).is_err());
    let n = usize::MAX - usize::MAX % 32;
    assert!(dequantize_to_vec(GgmlType::Q4_0, &[0; 18], n).is_err());
}

#[test]
fn unsupported_types_are_errors() {
    let mut y = vec![0f32; 4];
    let e = dequantize(GgmlType::I32, &[0; 16], &mut y).unwrap_err();
    assert!(matches!(e, Error::UnsupportedType { ref ty, .. } if ty == "I32"));
    let mut q = Vec::new();
    for ty in [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q8K, GgmlType::I8] {
        let e = quantize(ty, &[0.0; QK], &mut q).unwrap_err();
        assert!(matches!(e, Error::UnsupportedType { .. }), "{ty}");
    }
    assert!(can_dequantize(GgmlType::Q3K) && !can_quantize(GgmlType::Q3K));
}
