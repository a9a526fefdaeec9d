//! Paged attention on SmolLM2-135M's shapes (9 query heads over 3 KV heads of 64, blocks of 16):
//! `cpu::attention` with an f32, f16 and Q8_0 pool, next to the per-(row, head) loop it replaced
//! (f32 pool, a scores vector per head, `dot` / `softmax` / `axpy`). Decode: `rows` sequences of
//! one token each at context `ctx`, blocks scattered over the pool. Prefill: one sequence's `n`
//! rows at positions 0..n (causal), f16 pool, as tasks of several rows (each K/V tile widened once
//! for all of them) and one row per task. Served prefill: 64 (or 8) sequences' 64 causal rows
//! in one call (the 64-stream load's prompts arriving at once, or one step's share of them). Prints µs per call and the K/V values read per second.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use tokenfab_backend::cpu::attention::{
    paged_attention, scratch_len, scratch_len_unsplit, AttnInput, AttnShape, KvDtype, KvStore,
    RowKv,
};
use tokenfab_backend::cpu::{axpy, dot, softmax};

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HD: usize = 64;
const BS: usize = 16;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// The loop `llama.rs` had: one task per (row, query head), a scores vector as long as the context.
fn per_head(q: &[f32], tables: &[Vec<u32>], ctx: usize, k: &[f32], v: &[f32], out: &mut [f32]) {
    let (kv_dim, group) = (KV_HEADS * HD, HEADS / KV_HEADS);
    let scale = 1.0 / (HD as f32).sqrt();
    out.par_chunks_mut(HD)
        .enumerate()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, o)| {
            let (t, head) = (i / HEADS, i % HEADS);
            let kh = head / group;
            let qh = &q[t * HEADS * HD + head * HD..][..HD];
            let table = &tables[t];
            let slot = |p: usize| (table[p / BS] as usize * BS + p % BS) * kv_dim + kh * HD;
            scores.clear();
            scores.extend((0..ctx).map(|p| dot(qh, &k[slot(p)..slot(p) + HD]) * scale));
            softmax(scores);
            o.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                axpy(w, &v[slot(p)..slot(p) + HD], o);
            }
        });
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("attention");
    let kv_dim = KV_HEADS * HD;
    let shape = AttnShape {
        n_heads: HEADS,
        n_kv_heads: KV_HEADS,
        head_dim: HD,
        block_size: BS,
        scale: 1.0 / (HD as f32).sqrt(),
    };
    for &(rows, ctx) in &[(1usize, 512usize), (1, 4096), (16, 1024), (64, 128)] {
        let blocks_per_seq = ctx.div_ceil(BS);
        let num_blocks = rows * blocks_per_seq;
        let slots = num_blocks * BS;
        let mut seed = 5;
        let kf: Vec<f32> = (0..slots * kv_dim).map(|_| 4.0 * lcg(&mut seed)).collect();
        let vf: Vec<f32> = (0..slots * kv_dim).map(|_| lcg(&mut seed)).collect();
        // Sequence t owns blocks t, t + rows, t + 2 rows, ...: scattered, as a busy pool leaves them.
        let tables: Vec<Vec<u32>> = (0..rows)
            .map(|t| (0..blocks_per_seq).map(|b| (b * rows + t) as u32).collect())
            .collect();
        let q: Vec<f32> = (0..rows * HEADS * HD).map(|_| lcg(&mut seed)).collect();
        let mut out = vec![0f32; rows * HEADS * HD];
        let kv_values = (2 * rows * ctx * kv_dim) as u64;
        let id = format!("rows {rows} ctx {ctx}");
        g.throughput(Throughput::Elements(kv_values));
        g.bench_function(BenchmarkId::new("per-head f32 (old)", &id), |b| {
            b.iter(|| per_head(black_box(&q), &tables, ctx, &kf, &vf, &mut out))
        });
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
            let (mut k, mut v) = (
                KvStore::new(dtype, slots, kv_dim),
                KvStore::new(dtype, slots, kv_dim),
            );
            for s in 0..slots {
                k.write(s, &kf[s * kv_dim..(s + 1) * kv_dim]);
                v.write(s, &vf[s * kv_dim..(s + 1) * kv_dim]);
            }
            let mut scratch = vec![0f32; scratch_len(&shape)];
            let inp = input(shape, &q, &k, &v, |t: usize| RowKv {
                block_table: &tables[t],
                start: 0,
                ctx,
            });
            g.bench_function(BenchmarkId::new(format!("paged {dtype}"), &id), |b| {
                b.iter(|| paged_attention(black_box(&inp), &mut out, &mut scratch))
            });
            if dtype == KvDtype::F16 {
                // No room to split a context over threads: one task per (row, KV head).
                let unsplit = &mut scratch[..scratch_len_unsplit(&shape)];
                g.bench_function(BenchmarkId::new("paged f16 unsplit", &id), |b| {
                    b.iter(|| paged_attention(black_box(&inp), &mut out, unsplit))
                });
            }
        }
    }
    prefill(&mut g, shape);
    served_prefill(&mut g, shape, 64);
    served_prefill(&mut g, shape, 8);
    g.finish();
    c.final_summary();
}

/// One sequence's `n` causal rows (a prompt's prefill) over an f16 pool.
fn prefill(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    shape: AttnShape,
) {
    let kv_dim = KV_HEADS * HD;
    for n in [128usize, 512] {
        let blocks = n.div_ceil(BS);
        let mut seed = 9;
        let (mut k, mut v) = (
            KvStore::new(KvDtype::F16, blocks * BS, kv_dim),
            KvStore::new(KvDtype::F16, blocks * BS, kv_dim),
        );
        for s in 0..blocks * BS {
            let kr: Vec<f32> = (0..kv_dim).map(|_| 4.0 * lcg(&mut seed)).collect();
            let vr: Vec<f32> = (0..kv_dim).map(|_| lcg(&mut seed)).collect();
            k.write(s, &kr);
            v.write(s, &vr);
        }
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let q: Vec<f32> = (0..n * HEADS * HD).map(|_| lcg(&mut seed)).collect();
        let mut out = vec![0f32; n * HEADS * HD];
        let mut scratch = vec![0f32; scratch_len(&shape)];
        // Causal: row t reads t + 1 positions.
        g.throughput(Throughput::Elements((n * (n + 1) * kv_dim) as u64));
        let id = format!("prefill {n} rows");
        let tiled = input(shape, &q, &k, &v, |t: usize| RowKv {
            block_table: &table,
            start: 0,
            ctx: t + 1,
        });
        g.bench_function(BenchmarkId::new("paged f16 rows per task", &id), |b| {
            b.iter(|| paged_attention(black_box(&tiled), &mut out, &mut scratch))
        });
        // A table per row (equal contents): no two rows share a task.
        let tables: Vec<Vec<u32>> = (0..n).map(|_| table.clone()).collect();
        let alone = input(shape, &q, &k, &v, |t: usize| RowKv {
            block_table: &tables[t],
            start: 0,
            ctx: t + 1,
        });
        g.bench_function(BenchmarkId::new("paged f16 one row per task", &id), |b| {
            b.iter(|| paged_attention(black_box(&alone), &mut out, &mut scratch))
        });
    }
}

/// The served prefill of `scripts/bench-phases.sh`'s 64-stream load: `seqs` sequences' 64-token
/// prompts in one call (row t is position t % 64 of sequence t / 64, causal), each sequence's
/// blocks scattered over an f16 pool. 64 sequences: all prompts at once (q, out and the pool
/// larger than the L2); 8: about one step's share of them (455 prefill rows per step).
fn served_prefill(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    shape: AttnShape,
    seqs: usize,
) {
    let n = 64usize;
    let kv_dim = KV_HEADS * HD;
    let blocks_per_seq = n.div_ceil(BS);
    let slots = seqs * blocks_per_seq * BS;
    let mut seed = 13;
    let (mut k, mut v) = (
        KvStore::new(KvDtype::F16, slots, kv_dim),
        KvStore::new(KvDtype::F16, slots, kv_dim),
    );
    for s in 0..slots {
        let kr: Vec<f32> = (0..kv_dim).map(|_| 4.0 * lcg(&mut seed)).collect();
        let vr: Vec<f32> = (0..kv_dim).map(|_| lcg(&mut seed)).collect();
        k.write(s, &kr);
        v.write(s, &vr);
    }
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|t| (0..blocks_per_seq).map(|b| (b * seqs + t) as u32).collect())
        .collect();
    let q: Vec<f32> = (0..seqs * n * HEADS * HD).map(|_| lcg(&mut seed)).collect();
    let mut out = vec![0f32; seqs * n * HEADS * HD];
    let mut scratch = vec![0f32; scratch_len(&shape)];
    g.throughput(Throughput::Elements((seqs * n * (n + 1) * kv_dim) as u64));
    let inp = input(shape, &q, &k, &v, |t: usize| RowKv {
        block_table: &tables[t / n],
        start: 0,
        ctx: t % n + 1,
    });
    g.bench_function(
        BenchmarkId::new("paged f16", format!("served prefill {seqs} x {n} rows")),
        |b| b.iter(|| paged_attention(black_box(&inp), &mut out, &mut scratch)),
    );
}

/// SmolLM2's shapes over `q` and the pools, rows described by `rows`.
fn input<'a, F>(
    shape: AttnShape,
    q: &'a [f32],
    k: &'a KvStore,
    v: &'a KvStore,
    rows: F,
) -> AttnInput<'a, F> {
    AttnInput {
        shape,
        q,
        q_stride: HEADS * HD,
        rows,
        k,
        v,
    }
}
