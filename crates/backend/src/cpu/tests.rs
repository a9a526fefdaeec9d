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

/// Inputs for the exp and SiLU tests: a stride through every f32 bit pattern (both signs, all
/// exponents, NaNs and infinities), a dense sweep of the range where e^x is neither 0 nor
/// infinite, the points where x / ln 2 is halfway between integers (n's rounding), and the edges.
fn exp_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (0..=u32::MAX / 4099)
        .map(|i| f32::from_bits(i * 4099))
        .collect();
    v.extend((0..400_000).map(|i| -110.0 + i as f32 * (200.0 / 400_000.0)));
    for k in -152..=130 {
        let half = (k as f32 + 0.5) * std::f32::consts::LN_2;
        v.extend([half, half.next_up(), half.next_down()]);
    }
    v.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        f32::from_bits(1),
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        88.722_83,
        88.722_84,
        -87.336_55,
        -103.972_08,
        -103.972_09,
        -104.0,
        104.0,
        -200.0,
        200.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
    ]);
    let pad = v.len().next_multiple_of(16);
    v.resize(pad, 1.0);
    v
}

/// Distance in ulps between two f32 of the same sign (0 and -0 apart by 0).
fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN - i
        } else {
            i
        }
    };
    key(a).abs_diff(key(b))
}

fn same_bits_or_both_nan(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Each instruction set's vector exp over `x` (a multiple of 16 long).
fn exp_on(isa: Isa, x: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn on_avx2(x: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        for (x, o) in x.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            _mm256_storeu_ps(o.as_mut_ptr(), avx2::exp_ulp(_mm256_loadu_ps(x.as_ptr())));
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn on_avx512(x: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        for (x, o) in x.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
            _mm512_storeu_ps(o.as_mut_ptr(), avx512::exp_ulp(_mm512_loadu_ps(x.as_ptr())));
        }
    }
    #[cfg(target_arch = "aarch64")]
    unsafe fn on_neon(x: &[f32], out: &mut [f32]) {
        use std::arch::aarch64::*;
        for (x, o) in x.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            vst1q_f32(o.as_mut_ptr(), neon::exp_ulp(vld1q_f32(x.as_ptr())));
        }
    }
    let mut out = vec![f32::NAN; x.len()];
    // SAFETY: `isa` is available (the callers take it from `Isa::available`), which implies the
    // features each function enables; the lengths are multiples of 16.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => on_avx512(x, &mut out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => on_avx2(x, &mut out),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot => on_neon(x, &mut out),
            _ => out
                .iter_mut()
                .zip(x)
                .for_each(|(o, &x)| *o = scalar::exp(x)),
        }
    }
    out
}

/// The scalar exp within 1 ulp of the correctly rounded e^x wherever that is a normal number,
/// and IEEE's answers at the edges: subnormals within 1 ulp, 0 below, infinity above, NaN kept.
#[test]
fn exp_is_within_one_ulp_and_right_at_the_edges() {
    let mut worst = (0, 0.0f32);
    for &x in &exp_inputs() {
        let got = scalar::exp(x);
        let want = (x as f64).exp() as f32;
        if x.is_nan() {
            assert!(got.is_nan(), "exp(NaN) = {got}");
            continue;
        }
        let d = ulps(got, want);
        assert!(
            d <= 1,
            "exp({x:e}) = {got:e}, correctly rounded {want:e}: {d} ulps"
        );
        if d > worst.0 {
            worst = (d, x);
        }
    }
    assert_eq!(scalar::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(scalar::exp(-104.0), 0.0);
    assert_eq!(scalar::exp(88.8), f32::INFINITY);
    assert_eq!(scalar::exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(scalar::exp(0.0), 1.0);
    eprintln!("worst: {} ulp at {:e}", worst.0, worst.1);
}

/// Every instruction set's vector exp gives the scalar twin's bits on every input, NaN aside
/// (any NaN).
#[test]
fn exp_gives_the_same_bits_on_every_path() {
    let x = exp_inputs();
    let want = exp_on(Isa::Scalar, &x);
    for isa in Isa::available() {
        let got = exp_on(isa, &x);
        for ((&x, &a), &b) in x.iter().zip(&got).zip(&want) {
            assert!(
                same_bits_or_both_nan(a, b),
                "{isa:?} exp({x:e} = {:#010x}): {a:e} vs scalar {b:e}",
                x.to_bits()
            );
        }
    }
}

/// SiLU times up on every path: the scalar's bits (lengths with every SIMD tail), within 3 ulp of
/// f64's `g / (1 + e^-g) · u` while e^-g is finite, and the limits: silu(-100) is -0,
/// silu(100) is 100, NaN stays NaN.
#[test]
fn silu_gives_the_same_bits_on_every_path_and_is_accurate() {
    let g = exp_inputs();
    let mut seed = 11;
    let u: Vec<f32> = (0..g.len())
        .map(|i| {
            if i % 2 == 0 {
                1.0
            } else {
                lcg(&mut seed) * 8.0
            }
        })
        .collect();
    // gate | up rows of 1, 7, 17 and the rest, so every path runs its tail.
    let total = g.len();
    for ffn in [1, 7, 17, total] {
        let rows = total / ffn;
        let mut gu = Vec::with_capacity(2 * rows * ffn);
        for r in 0..rows {
            gu.extend_from_slice(&g[r * ffn..(r + 1) * ffn]);
            gu.extend_from_slice(&u[r * ffn..(r + 1) * ffn]);
        }
        let mut want = vec![0f32; rows * ffn];
        glu_rows_isa(Isa::Scalar, Activation::Silu, &gu, &mut want, ffn);
        for isa in Isa::available() {
            let mut h = vec![f32::NAN; rows * ffn];
            glu_rows_isa(isa, Activation::Silu, &gu, &mut h, ffn);
            for (i, (&a, &b)) in h.iter().zip(&want).enumerate() {
                assert!(
                    same_bits_or_both_nan(a, b),
                    "{isa:?} ffn {ffn} [{i}] silu({:e}) * {:e}: {a:e} vs scalar {b:e}",
                    g[i],
                    u[i]
                );
            }
        }
    }
    let mut h = vec![0f32; g.len()];
    scalar::silu(&g, &u, &mut h);
    for ((&x, &u), &y) in g.iter().zip(&u).zip(&h) {
        let exact = x as f64 / (1.0 + (-(x as f64)).exp()) * u as f64;
        if x.is_nan() {
            assert!(y.is_nan());
        } else if x > -88.0 && x.is_finite() {
            let want = exact as f32;
            let d = ulps(y, want);
            assert!(
                d <= 3 || (want.abs() < f32::MIN_POSITIVE && (y - want).abs() <= 1e-44),
                "silu({x:e}) * {u:e} = {y:e}, exact {exact:e}: {d} ulps"
            );
        } else if x < -89.0 {
            // e^-x is infinite in f32: -0 (times up), where the exact value is below 1e-36.
            assert!(y == 0.0 || y.is_nan(), "silu({x:e}) * {u:e} = {y:e}");
        }
    }
    let one = |g: f32| {
        let mut h = [0f32];
        scalar::silu(&[g], &[1.0], &mut h);
        h[0]
    };
    assert_eq!(one(-100.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(one(100.0), 100.0);
    assert_eq!(one(f32::INFINITY), f32::INFINITY);
    assert_eq!(one(0.0).to_bits(), 0);
    assert!(one(f32::NAN).is_nan());
}

/// The three norms on every instruction set: the scalar path's bits (rows with and without a
/// 16-lane tail, several rows, values over many magnitudes), the residual sum written back alike,
/// in place equal to out of place, and within a few ulp of f64's norm.
#[test]
fn norms_give_the_same_bits_on_every_path() {
    let mut seed = 11;
    for d in [1, 7, 16, 40, 64, 576] {
        let rows = 3;
        let x: Vec<f32> = (0..rows * d)
            .map(|i| lcg(&mut seed) * [1.0, 30.0, 1e-3, 4e3][i % 4])
            .collect();
        let add: Vec<f32> = (0..rows * d).map(|_| lcg(&mut seed) * 2.0).collect();
        let w: Vec<f32> = (0..d).map(|_| 0.5 + lcg(&mut seed)).collect();
        let eps = 1e-5;
        let run = |isa: Isa| {
            let mut out = vec![f32::NAN; rows * d];
            rms_norm_isa(isa, &x, &w, eps, &mut out);
            let mut inplace = x.clone();
            rms_norm_in_place_isa(isa, &mut inplace, &w, eps);
            assert_eq!(inplace, out, "{isa:?} d {d}: in place");
            let (mut sum, mut added) = (x.clone(), vec![f32::NAN; rows * d]);
            add_rms_norm_isa(isa, &mut sum, &add, &w, eps, &mut added);
            (out, sum, added)
        };
        let want = run(Isa::Scalar);
        for isa in Isa::available() {
            assert!(run(isa) == want, "{isa:?} d {d}: not the scalar bits");
        }
        let (out, sum, added) = want;
        for (r, xr) in x.chunks_exact(d).enumerate() {
            let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
            let scale = 1.0 / (ss / d as f64 + eps as f64).sqrt();
            for (i, &v) in xr.iter().enumerate() {
                let exact = v as f64 * scale * w[i] as f64;
                let got = out[r * d + i] as f64;
                assert!(
                    (got - exact).abs() <= 4.0 * f32::EPSILON as f64 * exact.abs(),
                    "d {d} [{r}][{i}]: {got:e} vs {exact:e}"
                );
                assert_eq!(sum[r * d + i], v + add[r * d + i]);
            }
        }
        let mut normed_sum = vec![0f32; rows * d];
        rms_norm(&sum, &w, eps, &mut normed_sum);
        assert_eq!(
            added, normed_sum,
            "d {d}: add_rms_norm is add, then rms_norm"
        );
    }
}

/// RoPE compiled for every instruction set gives the bits of the pair-by-pair rotation, both
/// pairings, on heads longer than the rotated part (whose tail stays as it was).
#[test]
fn rope_gives_the_same_bits_on_every_path() {
    use crate::rope::{Rope, RopeKind};
    let mut seed = 3;
    for kind in [RopeKind::Normal, RopeKind::Neox] {
        for (dim, head_dim, heads) in [(64, 64, 12), (32, 48, 3), (2, 3, 1)] {
            let half = dim / 2;
            let rope = Rope {
                kind,
                dim,
                inv_freq: (0..half)
                    .map(|i| 1e4f64.powf(-(i as f64) / half as f64))
                    .collect(),
                mscale: 1.0,
            };
            let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
            rope.angles(777, &mut cos, &mut sin);
            let x: Vec<f32> = (0..heads * head_dim)
                .map(|_| lcg(&mut seed) * 8.0)
                .collect();
            let mut want = x.clone();
            for head in want.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match kind {
                        RopeKind::Normal => (2 * i, 2 * i + 1),
                        RopeKind::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
            for isa in Isa::available() {
                let mut got = x.clone();
                rope_isa(isa, &rope, &mut got, head_dim, &cos, &sin);
                assert_eq!(got, want, "{isa:?} {kind:?} dim {dim} head {head_dim}");
            }
        }
    }
}

/// The K/V pool's f16 conversion gives `half::f16::from_f32`'s bits: ties, subnormals, overflow,
/// infinities, and lengths with a tail.
#[test]
fn f16_rows_round_as_half_does() {
    let mut seed = 9;
    let mut src: Vec<f32> = (0..1000)
        .map(|i| lcg(&mut seed) * [1.0, 7e4, 1e-5, 3e-8][i % 4])
        .collect();
    src.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        65520.0,
        -65504.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        -0.0,
        f32::MIN_POSITIVE,
    ]);
    for len in [src.len(), 7, 0] {
        let mut got = vec![half::f16::ZERO; len];
        f32_to_f16(&src[..len], &mut got);
        for (g, &s) in got.iter().zip(&src) {
            assert_eq!(g.to_bits(), half::f16::from_f32(s).to_bits(), "{s:e}");
        }
    }
}
