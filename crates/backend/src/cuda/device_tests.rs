//! Each device operation against the CPU's on the same inputs, with tolerances fit to bf16
//! (products read bf16 inputs and weights; K/V are stored bf16). They need a GPU: without one each
//! test says it skipped (`scripts/gpu-check.sh` runs this binary on a lent GPU).

use half::bf16;

use super::fp8::{kv_decode, kv_encode};
use super::launch::{attention_splits, attention_workspace, AttnArgs, DevMatrix, KvPtrs};
use super::{Gpu, GpuBuf};
use crate::cpu::{self, Activation};
use crate::ops::Heads;

fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}

/// A seeded stream of values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn bf_read(g: &Gpu, b: &GpuBuf<bf16>, n: usize) -> Vec<f32> {
    g.read(b, n).unwrap().iter().map(|v| v.to_f32()).collect()
}

#[test]
fn matmul_matches_the_cpu_on_bf16_inputs() {
    let Some(g) = gpu() else { return };
    let (n, inp, out) = (5, 96, 40);
    let x = rounded(&values(n * inp, 1));
    let w = rounded(&values(out * inp, 2));
    let mut want = vec![0f32; n * out];
    for r in 0..n {
        for o in 0..out {
            want[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
        }
    }
    let dx = g.upload(&bf(&x)).unwrap();
    let dw = DevMatrix {
        rows: out,
        cols: inp,
        data: g.upload(&bf(&w)).unwrap(),
    };
    let mut y = g.zeros::<f32>(n * out).unwrap();
    g.matmul(&dx, &dw, &mut y, n).unwrap();
    let got = g.read(&y, n * out).unwrap();
    assert!(rel_err(&got, &want) < 1e-4, "{}", rel_err(&got, &want));
}

#[test]
fn residual_norm_and_glu_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let (n, dim, ffn) = (3, 64, 48);
    let x = values(n * dim, 3);
    let add = values(n * dim, 4);
    let w = values(dim, 5);
    let sum: Vec<f32> = x.iter().zip(&add).map(|(a, b)| a + b).collect();
    let mut want = vec![0f32; n * dim];
    cpu::rms_norm(&sum, &w, 1e-5, &mut want);
    let mut dx = g.upload(&x).unwrap();
    let da = g.upload(&add).unwrap();
    let dw = g.upload(&w).unwrap();
    let mut out = g.zeros::<bf16>(n * dim).unwrap();
    g.residual_norm(&mut dx, Some((&da, None)), &dw, 1e-5, &mut out, n)
        .unwrap();
    assert!(rel_err(&bf_read(&g, &out, n * dim), &want) < 1e-2);
    assert!(rel_err(&g.read(&dx, n * dim).unwrap(), &sum) < 1e-6);

    let gu: Vec<f32> = values(n * 2 * ffn, 6).iter().map(|v| v * 4.0).collect();
    for act in [Activation::Silu, Activation::GeluTanh] {
        let mut want = vec![0f32; n * ffn];
        cpu::glu_rows(act, &gu, &mut want, ffn);
        let dgu = g.upload(&gu).unwrap();
        let mut h = g.zeros::<bf16>(n * ffn).unwrap();
        g.glu(act, &dgu, ffn, &mut h, n).unwrap();
        assert!(rel_err(&bf_read(&g, &h, n * ffn), &want) < 1e-2, "{act:?}");
    }
}

#[test]
fn argmax_takes_the_lowest_id_on_ties() {
    let Some(g) = gpu() else { return };
    let vocab = 5000;
    let mut l = values(3 * vocab, 7);
    l[1234] = 9.0;
    l[vocab + 77] = 9.0;
    l[vocab + 4000] = 9.0;
    l[2 * vocab + vocab - 1] = 9.0;
    let dl = g.upload(&l).unwrap();
    let mut out = g.zeros::<u32>(3).unwrap();
    g.argmax_rows(&dl, vocab, &mut out, 3).unwrap();
    assert_eq!(g.read(&out, 3).unwrap(), [1234, 77, vocab as u32 - 1]);
}

/// One attention case: `rows` rows of sequences whose contexts are `ctx` (row t attends to
/// positions 0..ctx[t], or the last `window`), K/V in scattered blocks of 4.
struct Case {
    heads: Heads,
    ctx: Vec<usize>,
    window: usize,
}

/// f64 attention over the bf16 K/V the device holds: the reference.
fn attention_reference(
    c: &Case,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    slot_of: &[Vec<usize>],
) -> Vec<f32> {
    let h = c.heads;
    let (hd, qkv) = (h.head_dim, h.qkv_dim());
    let group = h.n_heads / h.n_kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; c.ctx.len() * h.q_dim()];
    for (t, &ctx) in c.ctx.iter().enumerate() {
        let start = if c.window > 0 && ctx > c.window {
            ctx - c.window
        } else {
            0
        };
        for head in 0..h.n_heads {
            let kh = head / group;
            let qv = &q[t * qkv + head * hd..][..hd];
            let scores: Vec<f64> = (start..ctx)
                .map(|p| {
                    let kr = &k[slot_of[t][p] * h.kv_dim() + kh * hd..][..hd];
                    qv.iter()
                        .zip(kr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let o: f64 = (start..ctx)
                    .zip(&e)
                    .map(|(p, w)| w * v[slot_of[t][p] * h.kv_dim() + kh * hd + d] as f64)
                    .sum();
                out[t * h.q_dim() + head * hd + d] = (o / z) as f32;
            }
        }
    }
    out
}

/// `paged_attention` of case `c` against the reference, over every row, or over the rows of
/// `only` through a row list (the decode rows of a step with prefill tiles): those rows get
/// their answers, the others stay zero.
fn check_attention(g: &Gpu, c: &Case, splits: usize, only: Option<&[i32]>) -> f32 {
    let h = c.heads;
    let bs = 4;
    let n = c.ctx.len();
    // Each row's sequence gets its own blocks, in reverse order, so tables matter.
    let mut tables = Vec::new();
    let mut row_table = Vec::new();
    let mut slot_of = Vec::new();
    let mut next = 0usize;
    for &ctx in &c.ctx {
        let nb = ctx.div_ceil(bs);
        row_table.push(tables.len() as i32);
        let blocks: Vec<usize> = (0..nb).map(|i| next + nb - 1 - i).collect();
        next += nb;
        tables.extend(blocks.iter().map(|&b| b as i32));
        slot_of.push(
            (0..ctx)
                .map(|p| blocks[p / bs] * bs + p % bs)
                .collect::<Vec<_>>(),
        );
    }
    let slots = next * bs;
    let q = values(n * h.qkv_dim(), 11);
    let k = rounded(&values(slots * h.kv_dim(), 12));
    let v = rounded(&values(slots * h.kv_dim(), 13));
    let mut want = attention_reference(c, &q, &k, &v, &slot_of);
    if let Some(rows) = only {
        for (t, w) in want.chunks_mut(h.q_dim()).enumerate() {
            if !rows.contains(&(t as i32)) {
                w.fill(0.0);
            }
        }
    }
    let dq = g.upload(&q).unwrap();
    let (dk, dv) = (g.upload(&bf(&k)).unwrap(), g.upload(&bf(&v)).unwrap());
    let dt = g.upload(&tables).unwrap();
    let drows = only.map(|r| g.upload(r).unwrap());
    let drt = g.upload(&row_table).unwrap();
    let ctx: Vec<i32> = c.ctx.iter().map(|&x| x as i32).collect();
    let dctx = g.upload(&ctx).unwrap();
    let mut out = g.zeros::<bf16>(n * h.q_dim()).unwrap();
    let mut part = g
        .zeros::<f32>(n * h.n_heads * splits * (h.head_dim + 2))
        .unwrap();
    let a = AttnArgs {
        heads: h,
        block_size: bs,
        scale: 1.0 / (h.head_dim as f32).sqrt(),
        window: c.window,
        tables: &dt,
        row_table: &drt,
        row_ctx: &dctx,
        rows: drows.as_ref(),
        splits,
    };
    let served = only.map_or(n, <[i32]>::len);
    g.paged_attention(&dq, (&dk, &dv), &a, (&mut out, &mut part), served)
        .unwrap();
    rel_err(&bf_read(g, &out, n * h.q_dim()), &want)
}

/// GQA groups of 1, 3, 8 and 16 (two blocks per KV head), head dims 64, 96 (lanes beyond it
/// idle) and 128, windows, and split-K against the unsplit kernel and the reference.
#[test]
fn attention_matches_an_f64_reference_for_every_group_split_and_window() {
    let Some(g) = gpu() else { return };
    let hs = |n_heads, n_kv_heads, head_dim| Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    };
    for heads in [
        hs(4, 4, 64),
        hs(9, 3, 64),
        hs(16, 2, 128),
        hs(32, 2, 128),
        hs(6, 2, 96),
    ] {
        for window in [0, 5] {
            let c = Case {
                heads,
                ctx: vec![1, 7, 33, 200],
                window,
            };
            for splits in [1, 3, attention_splits(4, heads, g.info.multiprocessors)] {
                let e = check_attention(&g, &c, splits, None);
                assert!(e < 1e-2, "{heads:?} window {window} splits {splits}: {e}");
                // Rows 3 and 1 alone, through a row list (partials indexed by list entry).
                let e = check_attention(&g, &c, splits, Some(&[3, 1]));
                assert!(
                    e < 1e-2,
                    "{heads:?} window {window} splits {splits}, row list: {e}"
                );
            }
        }
    }
    assert!(attention_workspace(4, hs(16, 2, 128), g.info.multiprocessors) > 0);
}

/// The sampling kernel gives its CPU twin's tokens on the same rows: greedy, temperature with
/// top-k, top-p, min-p, edits, vocabularies inside and past the pool (ties included).
#[test]
fn sample_rows_matches_its_cpu_twin() {
    use super::sampling::{sample_row, Edit, SampleParams};
    let Some(g) = gpu() else { return };
    for vocab in [500, 5000, 50_000] {
        let mut params = Vec::new();
        let mut edits = Vec::new();
        let mut logits = Vec::new();
        for r in 0..24 {
            let mut row: Vec<f32> = values(vocab, 100 + r).iter().map(|v| v * 6.0).collect();
            if r % 5 == 0 {
                row.iter_mut().for_each(|v| *v = v.round()); // many ties
            }
            logits.extend(row);
            let start = edits.len() as i32;
            edits.push(Edit {
                token: (r as u32 * 37) % vocab as u32,
                bias: 3.0,
                rep: 1.3,
                sub: 0.2,
            });
            params.push(SampleParams {
                temperature: [0.0, 0.7, 1.0, 1.5][r as usize % 4],
                top_k: [0, 1, 40, 2000][(r as usize / 4) % 4],
                top_p: [1.0, 0.9, 0.5][r as usize % 3],
                min_p: [0.0, 0.05][r as usize % 2],
                u: values(1, 500 + r)[0].abs(),
                edits_start: start,
                edits_len: 1,
                want_logprob: 1,
            });
        }
        let n = params.len();
        let dl = g.upload(&logits).unwrap();
        let mut work = g.zeros::<f32>(n * vocab).unwrap();
        let (dp, de) = (g.upload(&params).unwrap(), g.upload(&edits).unwrap());
        let (mut tok, mut lp) = (g.zeros::<u32>(n).unwrap(), g.zeros::<f32>(n).unwrap());
        g.sample_rows((&dl, vocab), &mut work, (&dp, &de), (&mut tok, &mut lp), n)
            .unwrap();
        let (tok, lp) = (g.read(&tok, n).unwrap(), g.read(&lp, n).unwrap());
        for (r, p) in params.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let e = &edits[p.edits_start as usize..][..1];
            let want = sample_row(row, p, e);
            assert_eq!(tok[r], want.token, "vocab {vocab} row {r}: {p:?}");
            assert!(
                (lp[r] - want.logprob).abs() < 1e-4,
                "{} vs {}",
                lp[r],
                want.logprob
            );
        }
    }
}

/// `mask_rows` leaves a row's allowed logits as they were and sets the others to -inf, as its
/// CPU twin does.
#[test]
fn mask_rows_matches_its_cpu_twin() {
    use super::token_mask::{mask_row, mask_words};
    let Some(g) = gpu() else { return };
    let (vocab, rows) = (1000, 4);
    let words = mask_words(vocab);
    let logits = values(rows * vocab, 7);
    let masks: Vec<u32> = (0..2 * words)
        .map(|i| (values(1, 900 + i as u64)[0].to_bits()) ^ 0x5555_5555)
        .collect();
    let mut dl = g.upload(&logits).unwrap();
    let (dr, dm) = (g.upload(&[3i32, 1]).unwrap(), g.upload(&masks).unwrap());
    g.mask_rows((&mut dl, vocab), &dr, &dm, 2).unwrap();
    let got = g.read(&dl, rows * vocab).unwrap();
    let mut want = logits.clone();
    mask_row(&mut want[3 * vocab..4 * vocab], &masks[..words]);
    mask_row(&mut want[vocab..2 * vocab], &masks[words..]);
    assert_eq!(got, want);
}

/// `feed_tokens` rewrites exactly the fed rows, as its CPU twin does, over more rows than one
/// block.
#[test]
fn feed_tokens_matches_its_cpu_twin() {
    use super::feed::feed_rows;
    let Some(g) = gpu() else { return };
    let rows = 600;
    let prev: Vec<u32> = (0..300).map(|i| 1000 + i).collect();
    let feed: Vec<i32> = (0..rows as i32)
        .map(|i| if i % 3 == 0 { -1 } else { (i * 7) % 300 })
        .collect();
    let tokens: Vec<u32> = (0..rows as u32).collect();
    let mut dt = g.upload(&tokens).unwrap();
    let (df, dp) = (g.upload(&feed).unwrap(), g.upload(&prev).unwrap());
    g.feed_tokens(&mut dt, &df, &dp, rows).unwrap();
    let mut want = tokens.clone();
    feed_rows(&mut want, &feed, &prev);
    assert_eq!(g.read(&dt, rows).unwrap(), want);
}

/// Tiled prefill attention against the f64 reference on the same inputs (and so against
/// `paged_attention`'s answer): chunks of 1 to 45 rows starting at positions 0 and 21, GQA
/// groups 1 to 16, head dims 64, 96, 128 and 256, windows; K/V in bf16 and as E4M3 codes with
/// scales (`prefill_attention_fp8`, the reference on the codes' values).
#[test]
fn prefill_attention_matches_an_f64_reference() {
    use super::prefill_attention::tiles;
    let Some(g) = gpu() else { return };
    let bs = 4;
    for (nh, nkv, hd) in [
        (4, 4, 64),
        (9, 3, 64),
        (16, 2, 128),
        (6, 2, 96),
        (8, 1, 256),
    ] {
        let h = Heads {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        for window in [0, 5] {
            // (first position, rows) per sequence: a whole prompt, a later chunk, one row.
            let seqs = [(0usize, 45usize), (21, 30), (9, 1), (0, 16)];
            let (mut tables, mut row_table, mut ctx, mut slot_of) =
                (vec![], vec![], vec![], vec![]);
            let (mut ranges, mut next, mut row) = (vec![], 0usize, 0usize);
            for &(start, rows) in &seqs {
                let nb = (start + rows).div_ceil(bs);
                let blocks: Vec<usize> = (0..nb).map(|i| next + nb - 1 - i).collect();
                next += nb;
                let off = tables.len() as i32;
                tables.extend(blocks.iter().map(|&b| b as i32));
                let slots: Vec<usize> = (0..start + rows)
                    .map(|p| blocks[p / bs] * bs + p % bs)
                    .collect();
                for r in 0..rows {
                    row_table.push(off);
                    ctx.push(start + r + 1);
                    slot_of.push(slots.clone());
                }
                ranges.push(row..row + rows);
                row += rows;
            }
            let n = row;
            let c = Case {
                heads: h,
                ctx: ctx.clone(),
                window,
            };
            let q = values(n * h.qkv_dim(), 21);
            let k = rounded(&values(next * bs * h.kv_dim(), 22));
            let v = rounded(&values(next * bs * h.kv_dim(), 23));
            let want = attention_reference(&c, &q, &k, &v, &slot_of);
            let dq = g.upload(&q).unwrap();
            let (dk, dv) = (g.upload(&bf(&k)).unwrap(), g.upload(&bf(&v)).unwrap());
            // E4M3 codes of K / k_scale and V / v_scale, and the reference on their values.
            let (ks, vs) = (0.004f32, 0.0025f32);
            let codes = |x: &[f32], s: f32| -> Vec<u8> {
                x.iter().map(|&x| kv_encode(x, 1.0 / s)).collect()
            };
            let (k8, v8) = (codes(&k, ks), codes(&v, vs));
            let decoded =
                |c: &[u8], s: f32| -> Vec<f32> { c.iter().map(|&c| kv_decode(c, s)).collect() };
            let want8 = attention_reference(&c, &q, &decoded(&k8, ks), &decoded(&v8, vs), &slot_of);
            let (dk8, dv8) = (g.upload(&k8).unwrap(), g.upload(&v8).unwrap());
            let dt = g.upload(&tables).unwrap();
            let drt = g.upload(&row_table).unwrap();
            let ictx: Vec<i32> = ctx.iter().map(|&x| x as i32).collect();
            let dctx = g.upload(&ictx).unwrap();
            let t = tiles(&ranges);
            let dtiles = g.upload(&t).unwrap();
            let mut out = g.zeros::<bf16>(n * h.q_dim()).unwrap();
            let a = AttnArgs {
                heads: h,
                block_size: bs,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                tables: &dt,
                row_table: &drt,
                row_ctx: &dctx,
                rows: None,
                splits: 1,
            };
            g.prefill_attention(&dq, (&dk, &dv), &a, (&dtiles, t.len() / 2), &mut out, n)
                .unwrap();
            let e = rel_err(&bf_read(&g, &out, n * h.q_dim()), &want);
            assert!(e < 1e-2, "{h:?} window {window}: {e}");
            let kv8 = KvPtrs {
                fp8_scales: Some((ks, vs)),
                ..g.bf16_kv(&dk8, &dv8)
            };
            g.launch_prefill_attention(&dq, kv8, &a, (&dtiles, t.len() / 2), &mut out, n)
                .unwrap();
            let e8 = rel_err(&bf_read(&g, &out, n * h.q_dim()), &want8);
            assert!(e8 < 1e-2, "{h:?} window {window} fp8: {e8}");
        }
    }
}
