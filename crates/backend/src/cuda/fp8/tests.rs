//! The FP8 conversions' CPU twins (run everywhere), then the device against them (skipped
//! without a GPU; `scripts/gpu-check.sh` runs them on one).

use half::bf16;
use tokenfab_loader::quant::fp8::{e4m3_to_f32, E4M3_MAX};

use super::*;

/// A seeded stream of values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64).map(|i| dummy_value(seed, i)).collect()
}

fn bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// `y = x · wᵀ` in f64 on the unquantized values, and Σ|x||w| per output (the error scale).
fn exact(x: &[f32], w: &[f32], n: usize, inp: usize, out: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; n * out];
    let mut mag = vec![0f64; n * out];
    for r in 0..n {
        for o in 0..out {
            for i in 0..inp {
                let p = x[r * inp + i] as f64 * w[o * inp + i] as f64;
                y[r * out + o] += p;
                mag[r * out + o] += p.abs();
            }
        }
    }
    (y, mag)
}

/// FP8's error in a product: each operand within 2^-4 of itself (half a 3-bit mantissa step),
/// so each term within ~2 x 2^-4 + 2^-8 of itself, plus the subnormal floor of each operand.
#[test]
fn fp8_product_reference_is_within_fp8_error_of_the_exact_product() {
    let (n, inp, out) = (6, 128, 48);
    // Activations with one outlier row (its own scale; the other rows keep theirs).
    let mut x = values(n * inp, 11);
    x[3 * inp + 5] = 9.0;
    let w: Vec<f32> = values(out * inp, 12).iter().map(|v| v * 0.05).collect();
    let xq = quantize_rows_reference(&x, n, inp).unwrap();
    let wq = quantize_reference(&w, out, inp).unwrap();
    assert_eq!(
        (xq.scales.len(), wq.scales.len()),
        (n, 1),
        "a scale per row, one per weight"
    );
    assert_eq!(
        xq.scales[3],
        9.0 / E4M3_MAX,
        "the outlier sets its own row's scale only"
    );
    assert!(xq.scales[2] < 1.0 / E4M3_MAX);
    let got = gemm_reference(&xq, &wq);
    let (want, mag) = exact(&x, &w, n, inp, out);
    let sw = wq.scales[0] as f64;
    let xmax = x.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let wmax = w.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    for i in 0..n * out {
        let sx = xq.scales[i / out] as f64;
        let floor = inp as f64 * (sx / 1024.0 * wmax + sw / 1024.0 * xmax);
        let bound = mag[i] * (2.0 / 16.0 + 1.0 / 256.0) + floor + 1e-6;
        assert!(
            (got[i] as f64 - want[i]).abs() <= bound,
            "[{i}] {} vs {} (bound {bound})",
            got[i],
            want[i]
        );
    }
    // And the error is real FP8 error, not zero: the reference does quantize.
    let worst = (0..n * out).fold(0f64, |m, i| m.max((got[i] as f64 - want[i]).abs()));
    assert!(worst > 1e-5, "{worst}");
}

/// Quantizing bf16 activations: the twin of `fp8_quantize_rows` takes each row's largest
/// magnitude, ignores NaN/inf for the scale, and saturates inf; a row's codes do not depend on
/// the other rows.
#[test]
fn activation_quantization_twin() {
    let mut x = values(4 * 32, 3);
    x[7] = f32::INFINITY;
    x[9] = f32::NAN;
    x[40] = -2.5;
    let xb: Vec<f32> = bf(&x).iter().map(|v| v.to_f32()).collect();
    let q = quantize_rows_reference(&xb, 4, 32).unwrap();
    assert_eq!(q.scales.len(), 4);
    assert_eq!(q.scales[1], 2.5 / E4M3_MAX);
    assert_eq!(q.codes[40], 0xfe, "the amax maps to -448");
    assert_eq!(q.codes[7], 0x7e, "inf saturates");
    assert_eq!(q.codes[9], 0x7f, "NaN stays NaN");
    let alone = quantize_rows_reference(&xb[64..96], 1, 32).unwrap();
    assert_eq!(alone.codes, q.codes[64..96], "row 2 alone or in a batch");
    assert_eq!(alone.scales[0], q.scales[2]);
    let q = quantize_reference(&xb, 4, 32).unwrap();
    // Quantizing what a quantization gave back gives the same codes (weights uploaded from a
    // model already rounded through FP8 are not rounded twice).
    let back = q.dequantize();
    let finite: Vec<f32> = back
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    let again = quantize_reference(&finite, 4, 32).unwrap();
    for (i, (a, b)) in q.codes.iter().zip(&again.codes).enumerate() {
        if i != 9 {
            assert_eq!(a, b, "[{i}]");
        }
    }
    // All zeros: scale 1, codes 0.
    let z = quantize_reference(&[0.0; 16], 1, 16).unwrap();
    assert_eq!((z.scales[0], z.codes.iter().all(|&c| c == 0)), (1.0, true));
}

#[test]
fn kv_codes_round_trip_within_fp8_error() {
    let scale = 0.02f32;
    for v in values(4096, 5) {
        let x = v * 3.0;
        let back = kv_decode(kv_encode(x, 1.0 / scale), scale);
        let bound = (x.abs() / 16.0).max(scale / 1024.0) * (1.0 + 1e-6);
        assert!((x - back).abs() <= bound, "{x} -> {back}");
    }
    // Past 448 x scale the cache saturates instead of storing NaN.
    assert_eq!(kv_decode(kv_encode(1e9, 1.0 / scale), scale), 448.0 * scale);
}

/// The dummy generator: uniform in [-1, 1), mean near 0, and the FP8 codes are the values times
/// 448 rounded, so `code x a / 448` is within FP8 error of `u x a`.
#[test]
fn dummy_values_and_codes() {
    let key = 0x1234_5678_9abc_def0;
    let v: Vec<f32> = (0..20000).map(|i| dummy_value(key, i)).collect();
    assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    assert!(mean.abs() < 0.02, "{mean}");
    assert_ne!(dummy_value(key, 1), dummy_value(key + 1, 1));
    let a = 0.03f32;
    for (i, &u) in v.iter().enumerate().take(5000) {
        let w = e4m3_to_f32(dummy_code(key, i as u64)) * (a / E4M3_MAX);
        let bound = ((u * a).abs() / 16.0).max(a / E4M3_MAX / 1024.0) * (1.0 + 1e-5);
        assert!((w - u * a).abs() <= bound, "[{i}] {w} vs {}", u * a);
    }
}

#[test]
fn fp8_needs_ada_or_hopper() {
    check_fp8_device("--quantization fp8", (9, 0)).unwrap();
    check_fp8_device("--quantization fp8", (8, 9)).unwrap();
    for cc in [(8, 0), (8, 6), (7, 5)] {
        let e = check_fp8_device("--quantization fp8", cc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--quantization fp8") && e.contains(&format!("sm_{}{}", cc.0, cc.1)),
            "{e}"
        );
    }
}

fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) if g.info.compute_capability >= (8, 9) => Some(g),
        Ok(g) => {
            eprintln!("skipped: {} has no FP8 tensor cores", g.info.arch());
            None
        }
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}

/// The device's activation codes and row scales equal the twin's exactly; its FP8 product is the
/// reference's up to f32 summation order (tolerance fit to FP8 against the exact product is the
/// test above).
#[test]
fn device_fp8_product_matches_the_cpu_reference() {
    let Some(g) = gpu() else { return };
    for (n, inp, out) in [(1, 64, 32), (5, 128, 48), (37, 4096, 256)] {
        let x: Vec<f32> = bf(&values(n * inp, 21))
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let w: Vec<f32> = values(out * inp, 22).iter().map(|v| v * 0.02).collect();
        let xq = quantize_rows_reference(&x, n, inp).unwrap();
        let wq = quantize_reference(&w, out, inp).unwrap();
        let dx = g.upload(&bf(&x)).unwrap();
        let dw = DevFp8Matrix {
            rows: out,
            cols: inp,
            codes: g.upload(&wq.codes).unwrap(),
            scale: g.upload(&wq.scales).unwrap(),
        };
        let mut s = Fp8Scratch::new(&g, n, inp).unwrap();
        let mut y = g.zeros::<f32>(n * out).unwrap();
        g.matmul_fp8(&dx, &dw, &mut y, n, &mut s).unwrap();
        assert_eq!(g.read(&s.codes, n * inp).unwrap(), xq.codes, "({n}, {inp})");
        assert_eq!(g.read(&s.row_scale, n).unwrap(), xq.scales);
        let got = g.read(&y, n * out).unwrap();
        let want = gemm_reference(&xq, &wq);
        let top = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / top;
        assert!(err < 1e-3, "({n}, {inp}, {out}): {err}");
        eprintln!("fp8 product ({n} x {inp}) · ({out} x {inp})ᵀ: {err:.2e} of the largest output");
    }
}

#[test]
fn device_dummy_weights_equal_the_twin() {
    let Some(g) = gpu() else { return };
    let (n, key, a) = (100_003usize, 77u64, 0.05f32);
    // Two tensors side by side in one buffer, as stacked matrices are made.
    let mut b = g.zeros::<bf16>(2 * n).unwrap();
    g.dummy_fill_bf16(&mut b, (0, n), key, a).unwrap();
    g.dummy_fill_bf16(&mut b, (n, n), key + 1, a).unwrap();
    let twin = |k: u64| (0..n as u64).map(move |i| bf16::from_f32(dummy_value(k, i) * a));
    let want: Vec<bf16> = twin(key).chain(twin(key + 1)).collect();
    assert_eq!(g.read(&b, 2 * n).unwrap(), want);
    let mut c = g.zeros::<u8>(n + 5).unwrap();
    g.dummy_fill_fp8(&mut c, (5, n), key).unwrap();
    let want: Vec<u8> = [0u8; 5]
        .into_iter()
        .chain((0..n as u64).map(|i| dummy_code(key, i)))
        .collect();
    assert_eq!(g.read(&c, n + 5).unwrap(), want);
    assert!(
        g.dummy_fill_fp8(&mut c, (6, n), key).is_err(),
        "past the buffer"
    );
}
