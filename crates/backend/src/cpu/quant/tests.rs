use tokenfab_loader::quant::{dequantize, quantize};
use tokenfab_loader::GgmlType;

use super::*;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

const TYPES: [(QType, GgmlType); 8] = [
    (QType::Q4_0, GgmlType::Q4_0),
    (QType::Q4_1, GgmlType::Q4_1),
    (QType::Q5_0, GgmlType::Q5_0),
    (QType::Q5_1, GgmlType::Q5_1),
    (QType::Q8_0, GgmlType::Q8_0),
    (QType::Q4_K, GgmlType::Q4K),
    (QType::Q5_K, GgmlType::Q5K),
    (QType::Q6_K, GgmlType::Q6K),
];

/// A random (rows, cols) matrix of `ty`, its GGUF bytes and their dequantized f32 values.
fn random_q(
    ty: QType,
    gt: GgmlType,
    rows: usize,
    cols: usize,
    seed: &mut u64,
) -> (QMatrix, Vec<f32>) {
    // A per-row offset makes Q4_1/Q4_K's minimum matter.
    let f: Vec<f32> = (0..rows * cols)
        .map(|e| lcg(seed) + 0.3 * ((e / cols) % 3) as f32)
        .collect();
    let mut bytes = Vec::new();
    quantize(gt, &f, &mut bytes).unwrap();
    let mut deq = vec![0f32; rows * cols];
    dequantize(gt, &bytes, &mut deq).unwrap();
    (QMatrix::new(ty, rows, cols, bytes).unwrap(), deq)
}

/// Per output: the f64 product of x and the dequantized weights, and the bound on the error the
/// 8-bit activation rounding can add (|x - x̂| <= d/2 per element, d = max|x|/127 per block).
fn reference(x: &[f32], n: usize, deq: &[f32], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0f64; n * rows];
    let mut bound = vec![0f64; n * rows];
    for i in 0..n {
        let xr = &x[i * cols..(i + 1) * cols];
        for r in 0..rows {
            let wr = &deq[r * cols..(r + 1) * cols];
            let (mut s, mut e) = (0f64, 0f64);
            for b in 0..cols / QK {
                let xb = &xr[b * QK..(b + 1) * QK];
                let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                for j in 0..QK {
                    s += xb[j] as f64 * wr[b * QK + j] as f64;
                    e += wr[b * QK + j].abs() as f64 * (d * 0.5 + 1e-6 * xb[j].abs() as f64);
                }
            }
            want[i * rows + r] = s;
            bound[i * rows + r] = e * 1.01 + 1e-5;
        }
    }
    (want, bound)
}

#[test]
fn every_type_and_path_matches_the_reference_on_odd_shapes() {
    let mut seed = 11;
    for (ty, gt) in TYPES {
        let bl = ty.block_len();
        for &(n, cols, rows) in &[
            (1, bl, 1),
            (3, 2 * bl, 7),
            (5, 3 * bl, 9),
            (17, bl.max(96), 33),
            (64, 2 * bl, 5),
        ] {
            if cols % bl != 0 {
                continue;
            }
            let (w, deq) = random_q(ty, gt, rows, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| 2.0 * lcg(&mut seed)).collect();
            let (want, bound) = reference(&x, n, &deq, rows, cols);
            let mut base = vec![f32::NAN; n * rows];
            matmul_q_isa(Isa::Scalar, &x, n, &w, &mut base);
            for (e, (&got, (&wv, &bd))) in base.iter().zip(want.iter().zip(&bound)).enumerate() {
                assert!(
                    (got as f64 - wv).abs() <= bd,
                    "scalar {ty:?} n={n} {rows}x{cols} out {e}: {got} vs {wv} (bound {bd})"
                );
            }
            // Every other path does the same integer sums; only f32 rounding of the scaling and
            // summation order (and Q8_0's offset form on VNNI) may differ.
            let mag: Vec<f64> = (0..n * rows)
                .map(|e| {
                    let (i, r) = (e / rows, e % rows);
                    (0..cols)
                        .map(|p| (x[i * cols + p] * deq[r * cols + p]).abs() as f64)
                        .sum::<f64>()
                })
                .collect();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n * rows];
                matmul_q_isa(isa, &x, n, &w, &mut y);
                for (e, (&a, &b)) in y.iter().zip(&base).enumerate() {
                    let tol = 2e-5 * (mag[e] + 1.0);
                    assert!(
                        ((a - b) as f64).abs() <= tol,
                        "{isa:?} vs scalar {ty:?} n={n} {rows}x{cols} out {e}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn model_shapes_q4_1_and_q8_0_on_every_path() {
    let mut seed = 5;
    for (ty, gt, rows, cols) in [
        (QType::Q4_1, GgmlType::Q4_1, 192, 576),
        (QType::Q4_1, GgmlType::Q4_1, 70, 1536),
        (QType::Q8_0, GgmlType::Q8_0, 130, 576),
    ] {
        let (w, deq) = random_q(ty, gt, rows, cols, &mut seed);
        for n in [1, 4, 6] {
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let (want, bound) = reference(&x, n, &deq, rows, cols);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n * rows];
                matmul_q_isa(isa, &x, n, &w, &mut y);
                for (e, (&got, (&wv, &bd))) in y.iter().zip(want.iter().zip(&bound)).enumerate() {
                    assert!(
                        (got as f64 - wv).abs() <= bd * 1.01 + 1e-4,
                        "{isa:?} {ty:?} n={n} out {e}: {got} vs {wv}"
                    );
                }
            }
        }
    }
}

#[test]
fn zero_rows_give_zero_and_bad_sizes_are_rejected() {
    let w = QMatrix::new(QType::Q4_0, 2, 32, vec![0; 36]).unwrap();
    let mut y = [1f32; 4];
    matmul_q(&[0.5; 64], 2, &w, &mut y);
    assert_eq!(y, [0.0; 4]);
    let e = QMatrix::new(QType::Q4_0, 2, 48, vec![0; 36]).unwrap_err();
    assert!(e.to_string().contains("multiple of 32"), "{e}");
    let e = QMatrix::new(QType::Q4_K, 1, 256, vec![0; 143]).unwrap_err();
    assert!(e.to_string().contains("must be 144"), "{e}");
}

#[test]
fn a_row_gives_bit_identical_results_at_every_batch_size_and_path() {
    // Batch composition must not change any request's output: every tile height of the packed
    // path (1..6 rows of x, one or two groups of w) and the tiled path compute each (row of x,
    // row of w) with the same operations.
    // The big batch also runs split by rows of x (small matrices on a pool of 2+ threads; the
    // 4-thread pool makes sure of it), the small ones by groups of weight rows.
    let mut seed = 23;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for (ty, gt) in &TYPES[..5] {
        for (rows, cols) in [(37, 32 * 3), (64, 32 * 18), (9, 32 * 7), (200, 32 * 2)] {
            let (w, _) = random_q(*ty, *gt, rows, cols, &mut seed);
            let big = 53;
            let x: Vec<f32> = (0..big * cols).map(|_| lcg(&mut seed)).collect();
            for isa in Isa::available() {
                let mut all = vec![f32::NAN; big * rows];
                matmul_q_isa(isa, &x, big, &w, &mut all);
                let mut all4 = vec![f32::NAN; big * rows];
                pool.install(|| matmul_q_isa(isa, &x, big, &w, &mut all4));
                assert!(
                    all.iter()
                        .zip(&all4)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} {ty:?} {rows}x{cols}: 4 threads"
                );
                for n in (1..=8).chain([12, 13]) {
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_q_isa(isa, &x[..n * cols], n, &w, &mut y);
                    for (e, (&a, &b)) in y.iter().zip(&all).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{isa:?} {ty:?} n={n} {rows}x{cols} out {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_isa_quantizes_activations_bit_identically() {
    // The SIMD quantizer must give the scalar one's bytes and scales exactly (a zero block, a
    // block with a .5 tie, wide magnitudes), so that the paths differ only in the products.
    let mut seed = 31;
    // Groups of 16 blocks at once: 7 and 9 (a lone block at the end of a pair), 12 (more than
    // 8: two partial stores of scales), 37 (two full groups and a tail of 5).
    for nb in [7, 9, 12, 37] {
        let (n, cols) = (20, 32 * nb);
        let mut x: Vec<f32> = (0..n * cols)
            .map(|e| lcg(&mut seed) * (1 + e % 5) as f32 * 10f32.powi((e / 32 % 7) as i32 - 3))
            .collect();
        x[32..64].fill(0.0);
        x[64] = 127.0;
        x[65] = 0.5;
        x[66] = -2.5;
        let g = Geom::new(cols);
        let mut base = Acts::default();
        base.quantize(Isa::Scalar, &x, n, g, false);
        for isa in Isa::available() {
            // packed_only: the AVX-512 quantizer may leave dx and sx empty.
            for (rows, packed_only) in [(1, false), (n, false), (1, true), (n, true)] {
                let mut a = Acts::default();
                a.quantize(isa, &x[..rows * cols], rows, g, packed_only);
                assert_eq!(a.qx[..], base.qx[..rows * g.nbp * 32], "{isa:?} qx");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&a.ds),
                    bits(&base.ds[..rows * g.nbp * 2]),
                    "{isa:?} ds"
                );
                if !packed_only || isa != Isa::Avx512Vnni {
                    assert_eq!(
                        bits(&a.dx),
                        bits(&base.dx[..rows * g.nbp * 8]),
                        "{isa:?} dx"
                    );
                    assert_eq!(bits(&a.sx), bits(&base.sx[..rows * g.nhp]), "{isa:?} sx");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn packed_paths_agree_bit_for_bit_across_instruction_sets() {
    // The AVX-512, AVX-VNNI and AVX2 packed kernels read one buffer and do the same operations
    // per (row of x, row of w, block): any lane or half mixed up shows as a different bit.
    let mut seed = 41;
    for (ty, gt) in [
        (QType::Q4_0, GgmlType::Q4_0),
        (QType::Q4_1, GgmlType::Q4_1),
        (QType::Q8_0, GgmlType::Q8_0),
    ] {
        let isas: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|&i| super::packed::packs(i, ty))
            .collect();
        for (rows, cols) in [(37, 32 * 3), (48, 32 * 18), (200, 32 * 2)] {
            let (w, _) = random_q(ty, gt, rows, cols, &mut seed);
            for n in [1, 2, 3, 5, 16, 21] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                let outs: Vec<Vec<u32>> = isas
                    .iter()
                    .map(|&isa| {
                        let mut y = vec![f32::NAN; n * rows];
                        matmul_q_isa(isa, &x, n, &w, &mut y);
                        y.iter().map(|v| v.to_bits()).collect()
                    })
                    .collect();
                for (isa, o) in isas.iter().zip(&outs) {
                    assert_eq!(
                        o, &outs[0],
                        "{isa:?} vs {:?}: {ty:?} n={n} {rows}x{cols}",
                        isas[0]
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn neon_and_dotprod_agree_bit_for_bit() {
    // `smull`/`smlal` and `sdot` fill the same i32 lanes with the same exact sums, and the float
    // work after them is shared: a lane or half mixed up on either side shows as a different bit
    // (Q6_K's halves carry different scales).
    let isas = Isa::available();
    if !isas.contains(&Isa::NeonDot) {
        eprintln!("skipped: this CPU has no dotprod");
        return;
    }
    let mut seed = 43;
    for (ty, gt) in TYPES {
        let bl = ty.block_len();
        for (rows, cols) in [(9, bl), (37, 3 * bl), (6, 8 * bl.min(64))] {
            let (w, _) = random_q(ty, gt, rows, cols, &mut seed);
            for n in [1, 3, 4, 7] {
                let x: Vec<f32> = (0..n * cols).map(|_| 3.0 * lcg(&mut seed)).collect();
                let [a, b] = [Isa::Neon, Isa::NeonDot].map(|isa| {
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_q_isa(isa, &x, n, &w, &mut y);
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                });
                assert_eq!(a, b, "{ty:?} n={n} {rows}x{cols}");
            }
        }
    }
}

/// A product into a column range of a wider output equals the plain product there, on every
/// path (tiled, packed narrow and wide, split by rows), and leaves the other columns alone.
#[test]
fn column_views_write_their_columns_only() {
    let mut seed = 41;
    for (ty, gt) in TYPES {
        for &(n, rows) in &[(1, 37), (5, 48), (40, 70)] {
            let cols = 2 * ty.block_len();
            let (w, _) = random_q(ty, gt, rows, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let (stride, col) = (rows + 19, 11);
            for isa in Isa::available() {
                let mut want = vec![0f32; n * rows];
                matmul_q_isa(isa, &x, n, &w, &mut want);
                let mut y = vec![-7.0f32; n * stride];
                matmul_q_cols_isa(isa, &x, n, &w, &mut y, stride, col);
                for i in 0..n {
                    let r = &y[i * stride..(i + 1) * stride];
                    assert_eq!(
                        &r[col..col + rows],
                        &want[i * rows..(i + 1) * rows],
                        "{ty:?} {isa:?}"
                    );
                    assert!(
                        r[..col].iter().chain(&r[col + rows..]).all(|&v| v == -7.0),
                        "{ty:?} {isa:?} n {n}: wrote outside its columns"
                    );
                }
            }
        }
    }
}

/// SwiGLU/GeGLU fused into the product's quantization gives the bits of `glu_rows_isa` then
/// `matmul_q_isa`, on every path and format: at 1 and 5 rows (quantized on the calling thread),
/// 40 (the packed path's split by rows of x on two or more threads) and 64 (wide packing).
#[test]
fn glu_fused_into_the_product_gives_the_bits_of_the_two_passes() {
    use crate::cpu::{glu_rows_isa, Activation};
    let mut seed = 31;
    let (rows, cols) = (40, 256);
    for &(ty, gt) in &[TYPES[0], TYPES[1], TYPES[4], TYPES[5], TYPES[7]] {
        let (w, _) = random_q(ty, gt, rows, cols, &mut seed);
        for n in [1, 5, 40, 64] {
            let gu: Vec<f32> = (0..n * 2 * cols).map(|_| lcg(&mut seed) * 12.0).collect();
            for act in [Activation::Silu, Activation::GeluTanh] {
                for isa in Isa::available() {
                    let mut h = vec![0f32; n * cols];
                    glu_rows_isa(isa, act, &gu, &mut h, cols);
                    let mut want = vec![0f32; n * rows];
                    matmul_q_isa(isa, &h, n, &w, &mut want);
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_q_glu_isa(isa, act, &gu, n, &w, &mut got);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{ty:?} {isa:?} {act:?} n={n}");
                }
            }
        }
    }
}

/// SwiGLU written by the gate | up product itself gives the bits of `matmul_q_isa` then
/// `glu_rows_isa`, at every batch size (nibble and wide packing, row and group splits, row
/// tiles of every height); where no fused kernel runs it says so and leaves `h` alone.
#[test]
fn gate_up_product_writing_its_glu_gives_the_bits_of_the_two_passes() {
    use crate::cpu::{glu_rows_isa, Activation};
    let mut seed = 37;
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for &(ty, gt) in &[TYPES[0], TYPES[1], TYPES[4]] {
        // Halves of 3 groups of 16: a gate group's partner is 3 groups on.
        let (ffn, cols) = (48, 96);
        let (w, _) = random_q(ty, gt, 2 * ffn, cols, &mut seed);
        for n in [1, 5, 7, 16, 40, 97] {
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 3.0).collect();
            for isa in Isa::available() {
                for act in [Activation::Silu, Activation::GeluTanh] {
                    let mut gu = vec![0f32; n * 2 * ffn];
                    matmul_q_isa(isa, &x, n, &w, &mut gu);
                    let mut want = vec![0f32; n * ffn];
                    glu_rows_isa(isa, act, &gu, &mut want, ffn);
                    let mut h = vec![f32::NAN; n * ffn];
                    let fused = matmul_q_to_glu_isa(isa, act, &x, n, &w, &mut h);
                    let expect = isa == Isa::Avx512Vnni && act == Activation::Silu;
                    assert_eq!(fused, expect, "{ty:?} {isa:?} {act:?}");
                    if fused {
                        assert_eq!(bits(&h), bits(&want), "{ty:?} {isa:?} n={n}");
                    } else {
                        assert!(h.iter().all(|v| v.is_nan()), "{ty:?} {isa:?}: h written");
                    }
                }
            }
        }
        // Halves that are not whole groups: no fused kernel.
        let (w, _) = random_q(ty, gt, 40, cols, &mut seed);
        let x = vec![0.5f32; 3 * cols];
        let mut h = vec![f32::NAN; 3 * 20];
        assert!(!matmul_q_to_glu_isa(
            Isa::detect(),
            Activation::Silu,
            &x,
            3,
            &w,
            &mut h
        ));
    }
}
