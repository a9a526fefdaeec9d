//! Where a single-stream decode step's kernel time goes, against the machine's memory bandwidth.
//!
//! `cargo bench -p tokenfab-backend --bench decode` builds SmolLM2-135M's 30 layers of matrices
//! (q|k|v, o, gate|up, down in Q4_1, the tied Q8_0 output: random codes, so every layer is its
//! own memory, ~85 MB as GGUF like the real model and more than any L3) and prints:
//! - the read bandwidth of one thread and of the whole pool over a buffer larger than L3;
//! - the cost of one fork-join over the pool (an empty parallel loop of one task per thread)
//!   started from a thread outside the pool, as the engine thread does, and from inside it;
//! - one decode step's matrix products (121 of them at batch 1, in the model's order), from
//!   outside and from inside the pool, in ms per step, with the bytes they read and the GB/s
//!   that makes: the gap between that and the pool's read bandwidth is what the kernels and the
//!   fork-joins leave on the table.
//!
//! Figures are the median of several passes; on a shared machine, run it when nothing else runs.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;
use tokenfab_backend::cpu::{matmul_q, tuning, QMatrix, QType};

const LAYERS: usize = 30;
const DIM: usize = 576;
const FFN: usize = 1536;
const QKV: usize = 960;
const VOCAB: usize = 49152;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 16
}

/// A matrix of random codes with small f16 scales (no quantization pass: only the bytes matter).
fn random(ty: QType, rows: usize, cols: usize, seed: &mut u64) -> QMatrix {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    let blocks = rows * cols / bl;
    let mut bytes = vec![0u8; blocks * bb];
    for blk in bytes.chunks_exact_mut(bb) {
        for v in blk.iter_mut() {
            *v = lcg(seed) as u8;
        }
        let d = half::f16::from_f32(0.01 + (lcg(seed) % 100) as f32 * 1e-4).to_le_bytes();
        blk[..2].copy_from_slice(&d);
        if ty == QType::Q4_1 {
            let m = half::f16::from_f32(-0.05).to_le_bytes();
            blk[2..4].copy_from_slice(&m);
        }
    }
    QMatrix::new(ty, rows, cols, bytes).expect("qmatrix")
}

/// Median of `reps` timings of `f`, in seconds.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

/// Sums `buf` in 8 independent lanes (the compiler vectorizes it): a pure read stream.
fn read_sum(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in buf.chunks_exact(8) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    acc.iter().fold(0, |s, v| s.wrapping_add(*v))
}

fn main() {
    let cfg = tuning::get();
    let threads = rayon::current_num_threads();
    println!("{}", cfg.describe());
    println!("{threads} pool threads");

    // Read bandwidth over 256 MiB (8x a 32 MiB L3).
    let buf: Vec<u64> = (0..32usize << 20).map(|i| i as u64).collect();
    let bytes = (buf.len() * 8) as f64;
    let one = median(5, || {
        black_box(read_sum(&buf));
    });
    let chunk = buf.len() / threads;
    let all = median(5, || {
        buf.par_chunks(chunk).for_each(|c| {
            black_box(read_sum(c));
        })
    });
    println!(
        "read bandwidth: {:.1} GB/s one thread, {:.1} GB/s pool",
        bytes / one / 1e9,
        bytes / all / 1e9
    );
    drop(buf);

    // One fork-join, empty tasks.
    let fj = |iters: usize| {
        let s = Instant::now();
        for _ in 0..iters {
            (0..threads).into_par_iter().for_each(|i| {
                black_box(i);
            });
        }
        s.elapsed().as_secs_f64() / iters as f64
    };
    let outside = (0..5).map(|_| fj(20_000)).fold(f64::MAX, f64::min);
    let inside = rayon::scope(|_| (0..5).map(|_| fj(20_000)).fold(f64::MAX, f64::min));
    println!(
        "fork-join of {threads} empty tasks: {:.2} µs from outside the pool, {:.2} µs inside",
        outside * 1e6,
        inside * 1e6
    );

    let mut seed = 7;
    let layers: Vec<[QMatrix; 4]> = (0..LAYERS)
        .map(|_| {
            [
                random(QType::Q4_1, QKV, DIM, &mut seed),
                random(QType::Q4_1, DIM, DIM, &mut seed),
                random(QType::Q4_1, 2 * FFN, DIM, &mut seed),
                random(QType::Q4_1, DIM, FFN, &mut seed),
            ]
        })
        .collect();
    let output = random(QType::Q8_0, VOCAB, DIM, &mut seed);
    let gguf: usize = layers
        .iter()
        .flat_map(|l| l.iter().map(|m| m.bytes().len()))
        .sum::<usize>()
        + output.bytes().len();
    let x: Vec<f32> = (0..FFN).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; VOCAB];
    // One step; `per` collects the seconds spent in each kind of product (q|k|v, o, gate|up,
    // down, output).
    let step = |y: &mut [f32], per: &mut [f64; 5]| {
        let mut timed = |k: usize, f: &mut dyn FnMut()| {
            let s = Instant::now();
            f();
            per[k] += s.elapsed().as_secs_f64();
        };
        for [qkv, o, gu, down] in &layers {
            timed(0, &mut || matmul_q(&x[..DIM], 1, qkv, &mut y[..QKV]));
            timed(1, &mut || matmul_q(&x[..DIM], 1, o, &mut y[..DIM]));
            timed(2, &mut || matmul_q(&x[..DIM], 1, gu, &mut y[..2 * FFN]));
            timed(3, &mut || matmul_q(&x[..FFN], 1, down, &mut y[..DIM]));
        }
        timed(4, &mut || matmul_q(&x[..DIM], 1, &output, y));
    };
    step(&mut y, &mut [0.0; 5]);
    let read: usize = layers
        .iter()
        .flatten()
        .chain([&output])
        .map(QMatrix::packed_bytes)
        .sum();
    let kinds: Vec<usize> = (0..4)
        .map(|k| layers.iter().map(|l| l[k].packed_bytes()).sum())
        .chain([output.packed_bytes()])
        .collect();
    let names = ["q|k|v", "o", "gate|up", "down", "output"];
    // Best step of 15 (the one least disturbed by other processes) and the median.
    let run = |y: &mut [f32]| {
        let mut steps: Vec<(f64, [f64; 5])> = (0..15)
            .map(|_| {
                let mut per = [0.0; 5];
                let s = Instant::now();
                step(y, &mut per);
                (s.elapsed().as_secs_f64(), per)
            })
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        (steps[0], steps[7].0)
    };
    for (label, ((best, per), med)) in [
        ("outside the pool", run(&mut y)),
        ("inside the pool", rayon::scope(|_| run(&mut y))),
    ] {
        println!(
            "decode step from {label}, {} products at batch 1: best {:.2} ms (median {:.2}), \
             reads {:.1} MB ({:.1} MB as GGUF): {:.1} GB/s",
            4 * LAYERS + 1,
            best * 1e3,
            med * 1e3,
            read as f64 / 1e6,
            gguf as f64 / 1e6,
            read as f64 / best / 1e9
        );
        for k in 0..5 {
            println!(
                "  {:>8}: {:.2} ms, {:.1} MB, {:.1} GB/s",
                names[k],
                per[k] * 1e3,
                kinds[k] as f64 / 1e6,
                kinds[k] as f64 / per[k] / 1e9
            );
        }
    }
}
