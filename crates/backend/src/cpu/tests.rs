use super::*;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn naive(x: &[f32], n: usize, w: &Matrix) -> Vec<f32> {
    let mut y = vec![0f32; n * w.rows];
    for i in 0..n {
        for r in 0..w.rows {
            let mut s = 0f64;
            for p in 0..w.cols {
                s += x[i * w.cols + p] as f64 * w.data[r * w.cols + p] as f64;
            }
            y[i * w.rows + r] = s as f32;
        }
    }
    y
}

#[test]
fn matmul_matches_naive_on_every_path_and_odd_shapes() {
    let mut seed = 7;
    for &(n, k, m) in &[
        (1, 8, 1),
        (1, 576, 200),
        (5, 37, 11),
        (9, 64, 97),
        (17, 100, 49),
    ] {
        let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let w = Matrix::new(m, k, (0..m * k).map(|_| lcg(&mut seed)).collect());
        let want = naive(&x, n, &w);
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut y = vec![f32::NAN; n * m];
            matmul_isa(isa, &x, n, &w, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{isa:?} {n}x{k}x{m}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn dot_matches_scalar() {
    let mut seed = 3;
    for len in [0, 1, 7, 8, 15, 16, 17, 100] {
        let a: Vec<f32> = (0..len).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f32> = (0..len).map(|_| lcg(&mut seed)).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-5, "len {len}");
        assert!((scalar::dot(&a, &b) - want).abs() < 1e-5, "len {len}");
    }
}

#[test]
fn norms_and_activations() {
    let x = [1.0f32, -2.0, 3.0, -4.0];
    let w = [1.0f32, 1.0, 2.0, 0.5];
    let mut out = [0f32; 4];
    rms_norm(&x, &w, 0.0, &mut out);
    let rms = (30.0f32 / 4.0).sqrt();
    assert!((out[2] - 3.0 / rms * 2.0).abs() < 1e-6);

    let mut inplace = x;
    rms_norm_in_place(&mut inplace, &w, 0.0);
    assert_eq!(inplace, out);

    let mut h = [0f32; 2];
    glu_rows_isa(
        Isa::Scalar,
        Activation::Silu,
        &[0.0, 1.0, 5.0, 2.0],
        &mut h,
        2,
    );
    assert_eq!(h[0], 0.0);
    assert!((h[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    // GELU's tanh form, written out.
    let g = 1.3f32;
    let want = 0.5 * g * (1.0 + (0.797_884_6 * (g + 0.044715 * g * g * g)).tanh()) * 2.0;
    glu_rows_isa(Isa::Scalar, Activation::GeluTanh, &[g, 2.0], &mut h[..1], 1);
    assert!((h[0] - want).abs() < 1e-6, "{} vs {want}", h[0]);

    let mut s = [1.0f32, 2.0, 3.0];
    softmax(&mut s);
    assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    let mut ls = [0f32; 3];
    log_softmax(&[1.0, 2.0, 3.0], &mut ls);
    for (a, b) in ls.iter().zip(&s) {
        assert!((a.exp() - b).abs() < 1e-6);
    }
}

/// Every instruction set's GLU against the scalar one, over the range activations take (and far
/// past it), for lengths with and without a SIMD tail; SiLU bit for bit (every path computes it
/// with the library's exp).
#[test]
fn glu_matches_scalar_on_every_path() {
    let mut seed = 5;
    for act in [Activation::Silu, Activation::GeluTanh] {
        for (rows, ffn) in [(1, 1), (3, 7), (2, 64), (5, 203)] {
            let gu: Vec<f32> = (0..rows * 2 * ffn)
                .map(|i| lcg(&mut seed) * if i % 11 == 0 { 400.0 } else { 16.0 })
                .collect();
            let mut want = vec![0f32; rows * ffn];
            glu_rows_isa(Isa::Scalar, act, &gu, &mut want, ffn);
            for isa in Isa::available() {
                let mut h = vec![f32::NAN; rows * ffn];
                glu_rows_isa(isa, act, &gu, &mut h, ffn);
                if act == Activation::Silu {
                    assert_eq!(h, want, "{isa:?} {rows}x{ffn}");
                }
                for (i, (a, b)) in h.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-6 * (1.0 + b.abs()),
                        "{isa:?} {act:?} {rows}x{ffn} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn two_phase_runs_every_item_once_and_the_second_phase_after_the_first() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Many calls at once from several threads (as tests and nested pools do), each on the
    // shared pool: none may deadlock, and each must see all of its first phase done.
    std::thread::scope(|s| {
        for caller in 0..4usize {
            s.spawn(move || {
                for (n1, n2) in [(0, 3), (1, 1), (3, 0), (7, 13), (64, 5)] {
                    let first: Vec<AtomicUsize> = (0..n1).map(|_| AtomicUsize::new(0)).collect();
                    let second: Vec<AtomicUsize> = (0..n2).map(|_| AtomicUsize::new(0)).collect();
                    two_phase(
                        n1,
                        |c| {
                            // Uneven work, so threads finish the first phase at different times.
                            std::thread::sleep(std::time::Duration::from_micros(
                                (c * 37 + caller) as u64 % 200,
                            ));
                            first[c].fetch_add(1, Ordering::Relaxed);
                        },
                        n2,
                        |t| {
                            let done = first.iter().filter(|f| f.load(Ordering::Relaxed) == 1);
                            assert_eq!(done.count(), n1, "second phase began early");
                            second[t].fetch_add(1, Ordering::Relaxed);
                        },
                    );
                    assert!(first.iter().all(|f| f.load(Ordering::Relaxed) == 1));
                    assert!(second.iter().all(|f| f.load(Ordering::Relaxed) == 1));
                }
            });
        }
    });
}

#[cfg(target_arch = "aarch64")]
#[test]
fn every_aarch64_cpu_gets_neon() {
    // NEON is part of the aarch64 base; the tests above compare it against scalar only if
    // detection lists it.
    assert!(
        Isa::available().contains(&Isa::Neon),
        "{:?}",
        Isa::available()
    );
    eprintln!("instruction sets: {:?}", &Isa::available()[..]);
}
