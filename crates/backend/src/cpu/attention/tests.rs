//! Paged attention on every instruction set against a plain two-pass softmax in f64 over the same
//! (widened) K/V rows.

use super::*;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// One row: its sequence's block table and the positions `start..ctx` it attends to.
struct Row {
    table: Vec<u32>,
    start: usize,
    ctx: usize,
}

/// The reference: scores of every position, softmax in f64, weighted sum of V rows.
fn reference(
    sh: &AttnShape,
    q: &[f32],
    q_stride: usize,
    rows: &[Row],
    k: &KvStore,
    v: &KvStore,
) -> Vec<f32> {
    let (hd, w) = (sh.head_dim, k.width());
    let group = sh.n_heads / sh.n_kv_heads;
    let mut out = vec![0f32; rows.len() * sh.n_heads * hd];
    let (mut kr, mut vr) = (vec![0f32; w], vec![0f32; w]);
    for (t, row) in rows.iter().enumerate() {
        for h in 0..sh.n_heads {
            let off = h / group * hd;
            let qh = &q[t * q_stride + h * hd..][..hd];
            let slot = |p: usize| {
                row.table[p / sh.block_size] as usize * sh.block_size + p % sh.block_size
            };
            let scores: Vec<f64> = (row.start..row.ctx)
                .map(|p| {
                    k.read(slot(p), &mut kr);
                    let d: f64 = (0..hd).map(|i| qh[i] as f64 * kr[off + i] as f64).sum();
                    d * sh.scale as f64
                })
                .collect();
            let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            let o = &mut out[(t * sh.n_heads + h) * hd..][..hd];
            let mut acc = vec![0f64; hd];
            for (p, w) in (row.start..).zip(&e) {
                v.read(slot(p), &mut vr);
                for i in 0..hd {
                    acc[i] += w / sum * vr[off + i] as f64;
                }
            }
            for i in 0..hd {
                o[i] = acc[i] as f32;
            }
        }
    }
    out
}

/// K and V pools of `slots` random rows of `width`. Large-ish K values, so that softmax is peaked
/// and the online max moves between tiles.
fn random_pool(dtype: KvDtype, slots: usize, width: usize, seed: &mut u64) -> (KvStore, KvStore) {
    let mut k = KvStore::new(dtype, slots, width);
    let mut v = KvStore::new(dtype, slots, width);
    for slot in 0..slots {
        let kr: Vec<f32> = (0..width).map(|_| 6.0 * lcg(seed)).collect();
        let vr: Vec<f32> = (0..width).map(|_| lcg(seed)).collect();
        k.write(slot, &kr);
        v.write(slot, &vr);
    }
    (k, v)
}

/// SmolLM2-135M's attention: 9 query heads over 3 KV heads of 64, blocks of 16.
fn smollm2_shape() -> AttnShape {
    AttnShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        block_size: 16,
        scale: 1.0 / 8.0,
    }
}

/// Every value of `got` within attention's tolerance of the f64 reference `want`.
fn assert_near(got: &[f32], want: &[f32], what: &str) {
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
            "{what}: [{i}] {a} vs {b}"
        );
    }
}

fn check(dtype: KvDtype, n_heads: usize, n_kv_heads: usize, head_dim: usize, block_size: usize) {
    let mut seed = (n_heads * 1000 + head_dim * 10 + block_size) as u64;
    let sh = AttnShape {
        n_heads,
        n_kv_heads,
        head_dim,
        block_size,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let num_blocks = 12;
    let width = n_kv_heads * head_dim;
    let (k, v) = random_pool(dtype, num_blocks * block_size, width, &mut seed);
    // Non-contiguous tables; contexts not a multiple of the block size, one of one position, and
    // ones longer than a tile; sliding windows starting inside a block, of one position, and
    // longer than a tile.
    let row = |table: &[u32], start: usize, ctx: usize| Row {
        table: table.to_vec(),
        start,
        ctx,
    };
    let t1 = [7, 2, 9, 0, 4, 11, 1, 3, 5];
    let t2 = [10, 8, 6, 3, 1, 2, 0, 4, 5, 7, 9, 11];
    let t3 = [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];
    let long = (12 * block_size).min(TILE * 2 + 5);
    let rows = [
        row(&t1, 0, 1),
        row(&t1, 0, 3 * block_size + 1),
        row(&t2, 0, long),
        row(&[5, 6], 0, 2 * block_size),
        row(&t3, 0, 12 * block_size - 3),
        row(&t1, block_size + 1, 3 * block_size + 1),
        row(&t2, long - 1, long),
        row(&t3, 3, 12 * block_size - 3),
    ];
    let q_dim = n_heads * head_dim;
    let q_stride = q_dim + 2 * width;
    let q: Vec<f32> = (0..rows.len() * q_stride).map(|_| lcg(&mut seed)).collect();
    let want = reference(&sh, &q, q_stride, &rows, &k, &v);
    let inp = AttnInput {
        shape: sh,
        q: &q,
        q_stride,
        rows: |t: usize| RowKv {
            block_table: &rows[t].table,
            start: rows[t].start,
            ctx: rows[t].ctx,
        },
        k: &k,
        v: &v,
    };
    let mut x86: Option<Vec<u32>> = None;
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; rows.len() * q_dim];
        let mut scratch = vec![f32::NAN; scratch_len(&sh)];
        paged_attention_isa(isa, &inp, &mut out, &mut scratch);
        let what =
            format!("{dtype} {isa:?} heads {n_heads}/{n_kv_heads} hd {head_dim} bs {block_size}");
        assert_near(&out, &want, &what);
        // Every x86 SIMD path (AVX-512's packed K tiles included) gives AVX2's bits.
        if matches!(isa, Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni) {
            let bits: Vec<u32> = out.iter().map(|f| f.to_bits()).collect();
            assert!(
                *x86.get_or_insert_with(|| bits.clone()) == bits,
                "{what}: not AVX2's bits"
            );
        }
    }
}

#[test]
fn matches_the_reference_on_every_path_dtype_and_shape() {
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
        // (n_heads, n_kv_heads, head_dim, block_size): GQA groups of 3, 4 and 1, MHA.
        for &(h, kvh, hd, bs) in &[(9, 3, 64, 16), (8, 2, 32, 4), (4, 4, 32, 5), (6, 1, 96, 16)] {
            check(dtype, h, kvh, hd, bs);
        }
    }
    // Head sizes that are not a multiple of 8 (remainder loops); not storable as q8_0.
    for dtype in [KvDtype::F32, KvDtype::F16] {
        check(dtype, 4, 2, 20, 3);
        check(dtype, 2, 1, 13, 7);
    }
}

#[test]
fn stores_round_trip() {
    let mut seed = 3;
    let x: Vec<f32> = (0..64).map(|_| 4.0 * lcg(&mut seed)).collect();
    let mut out = vec![0f32; 64];
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
        let mut s = KvStore::new(dtype, 3, 64);
        assert_eq!(s.bytes(), 3 * dtype.row_bytes(64));
        s.write(1, &x);
        s.read(1, &mut out);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tol = match dtype {
            KvDtype::F32 => 0.0,
            KvDtype::F16 => amax / 1024.0,
            KvDtype::Q8_0 => amax / 127.0,
        };
        for (a, b) in out.iter().zip(&x) {
            assert!((a - b).abs() <= tol, "{dtype}: {a} vs {b}");
        }
    }
    assert_eq!(KvDtype::Q8_0.row_bytes(64), 68);
    assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
    assert!(KvDtype::Q8_0.check_head_dim(48).is_err());
    assert_eq!("auto".parse::<KvDtype>(), Ok(KvDtype::F16));
    assert_eq!("Q8_0".parse::<KvDtype>(), Ok(KvDtype::Q8_0));
    assert!("q4"
        .parse::<KvDtype>()
        .unwrap_err()
        .contains("--kv-cache-dtype"));
}

#[test]
fn f16_rows_round_as_one_value_at_a_time() {
    // The pool's row conversion (vectorized where the processor has F16C) must give the bits
    // of `f16::from_f32` for every value, rounding ties, subnormals and overflow included.
    let mut seed = 11;
    let mut x: Vec<f32> = (0..150)
        .map(|i| lcg(&mut seed) * 10f32.powi(i % 13 - 8))
        .collect();
    x.extend([
        0.0,
        -0.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        6e-8,
        -3e-8,
        1.0 + 1.0 / 2048.0,
    ]);
    x.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        2.0f32.powi(-24),
        5.960_464_5e-8 * 1.5,
    ]);
    x.resize(x.len().next_multiple_of(8) + 3, 0.25);
    let mut s = KvStore::new(KvDtype::F16, 2, x.len());
    s.write(1, &x);
    let mut out = vec![0f32; x.len()];
    s.read(1, &mut out);
    for (o, v) in out.iter().zip(&x) {
        assert_eq!(o.to_bits(), f16::from_f32(*v).to_f32().to_bits(), "{v}");
    }
}

#[test]
fn long_contexts_split_over_threads_give_the_unsplit_results_bit_for_bit() {
    // One sequence decoding over a long context: its 3 (row, KV head) tasks are too few for a
    // pool of 4, so the context's chunks run as tasks and are merged after. The row must come out
    // exactly as when the same chunks are folded on one thread: with no room to split, and inside
    // a batch big enough not to split.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let (bs, hd) = (16, 64);
    let sh = smollm2_shape();
    let width = 3 * hd;
    let blocks = 72;
    let mut seed = 77;
    for dtype in [KvDtype::F32, KvDtype::F16] {
        let (k, v) = random_pool(dtype, blocks * bs, width, &mut seed);
        // Row 0 is the long one (5 chunks, the last partial; or, windowed, 3 chunks starting
        // inside a block); the others fill the batch.
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        for start in [0, CHUNK + 5] {
            let row = |start: usize, ctx: usize| Row {
                table: table.clone(),
                start,
                ctx,
            };
            let rows = [
                row(start, 4 * CHUNK + 37),
                row(0, 300),
                row(7, 9),
                row(0, 999),
            ];
            let q_dim = 9 * hd;
            let q: Vec<f32> = (0..rows.len() * q_dim).map(|_| lcg(&mut seed)).collect();
            let want = reference(&sh, &q, q_dim, &rows[..1], &k, &v);
            let inp = |n: usize| AttnInput {
                shape: sh,
                q: &q[..n * q_dim],
                q_stride: q_dim,
                rows: |t: usize| RowKv {
                    block_table: &rows[t].table,
                    start: rows[t].start,
                    ctx: rows[t].ctx,
                },
                k: &k,
                v: &v,
            };
            for isa in Isa::available() {
                pool.install(|| {
                    let len = scratch_len(&sh);
                    let own = 4 * sh.task_scratch();
                    let mut scratch = vec![f32::NAN; len];
                    let mut split = vec![f32::NAN; q_dim];
                    paged_attention_isa(isa, &inp(1), &mut split, &mut scratch);
                    assert!(
                        !scratch[own..].iter().all(|v| v.is_nan()),
                        "{isa:?}: the context was not split"
                    );
                    let mut unsplit = vec![f32::NAN; q_dim];
                    paged_attention_isa(isa, &inp(1), &mut unsplit, &mut scratch[..own]);
                    let mut batch = vec![f32::NAN; rows.len() * q_dim];
                    paged_attention_isa(isa, &inp(rows.len()), &mut batch, &mut scratch);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&split),
                        bits(&unsplit),
                        "{dtype} {isa:?}: split vs one thread"
                    );
                    assert_eq!(
                        bits(&split),
                        bits(&batch[..q_dim]),
                        "{dtype} {isa:?}: in a batch"
                    );
                    assert_near(&split, &want, &format!("{dtype} {isa:?} from {start}"));
                });
            }
        }
    }
}

#[test]
fn windowed_rows_keep_their_last_positions() {
    let r = RowKv {
        block_table: &[0, 1],
        start: 0,
        ctx: 10,
    };
    assert_eq!(r.windowed(None).start, 0);
    assert_eq!(r.windowed(Some(4)).start, 6);
    assert_eq!(r.windowed(Some(10)).start, 0);
    assert_eq!(r.windowed(Some(512)).start, 0);
    assert_eq!(r.windowed(Some(4)).span(), 4);
}

#[test]
fn rows_sharing_a_task_come_out_as_when_each_runs_alone() {
    // A prefill's rows of one sequence share tasks (and each widened K/V tile); a row's result
    // must be bit-identical to the row run alone, on every path and storage, whatever the rows
    // around it: a run crossing a chunk boundary and task boundaries (of MAX_TASK_ROWS rows on
    // one thread, fewer on more), another sequence in between, the first sequence again, and
    // sliding-window rows (each alone).
    let (bs, hd) = (16, 64);
    let sh = smollm2_shape();
    let width = 3 * hd;
    let blocks = 48;
    let mut seed = 91;
    let ta: Vec<u32> = (0..24).rev().collect();
    let tb: Vec<u32> = (24..blocks as u32).collect();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut rows: Vec<Row> = Vec::new();
    let row = |table: &Vec<u32>, start: usize, ctx: usize| Row {
        table: table.clone(),
        start,
        ctx,
    };
    rows.extend((CHUNK - 120..CHUNK + 120).map(|p| row(&ta, 0, p + 1)));
    rows.extend((0..5).map(|p| row(&tb, 0, p + 1)));
    rows.extend((40..43).map(|p| row(&ta, 0, p + 1)));
    rows.extend((100..104).map(|p| row(&tb, p - 30, p + 1)));
    let tables: Vec<&Vec<u32>> = rows
        .iter()
        .map(|r| if r.table == ta { &ta } else { &tb })
        .collect();
    let q_dim = 9 * hd;
    let q: Vec<f32> = (0..rows.len() * q_dim).map(|_| lcg(&mut seed)).collect();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
        let (k, v) = random_pool(dtype, blocks * bs, width, &mut seed);
        let want = reference(&sh, &q, q_dim, &rows, &k, &v);
        let mut x86: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let inp = AttnInput {
                shape: sh,
                q: &q,
                q_stride: q_dim,
                rows: |t: usize| RowKv {
                    // One table per sequence, as the model hands them.
                    block_table: tables[t],
                    start: rows[t].start,
                    ctx: rows[t].ctx,
                },
                k: &k,
                v: &v,
            };
            let mut scratch = vec![f32::NAN; scratch_len(&sh)];
            let mut all = vec![f32::NAN; rows.len() * q_dim];
            paged_attention_isa(isa, &inp, &mut all, &mut scratch);
            let mut on_one = vec![f32::NAN; rows.len() * q_dim];
            one_thread.install(|| {
                assert!(MAX_TASK_ROWS * TASKS_PER_THREAD <= rows.len() * 3);
                let mut scratch = vec![f32::NAN; scratch_len(&sh)];
                paged_attention_isa(isa, &inp, &mut on_one, &mut scratch);
            });
            assert_eq!(bits(&all), bits(&on_one), "{dtype} {isa:?}: on one thread");
            for t in 0..rows.len() {
                let one = AttnInput {
                    shape: sh,
                    q: &q[t * q_dim..(t + 1) * q_dim],
                    q_stride: q_dim,
                    rows: |_: usize| RowKv {
                        block_table: tables[t],
                        start: rows[t].start,
                        ctx: rows[t].ctx,
                    },
                    k: &k,
                    v: &v,
                };
                let mut alone = vec![f32::NAN; q_dim];
                let unsplit = scratch_len_unsplit(&sh);
                paged_attention_isa(isa, &one, &mut alone, &mut scratch[..unsplit]);
                assert_eq!(
                    bits(&alone),
                    bits(&all[t * q_dim..(t + 1) * q_dim]),
                    "{dtype} {isa:?}: row {t}"
                );
            }
            assert_near(&all, &want, &format!("{dtype} {isa:?}"));
            // Every x86 SIMD path gives the same bits, so a model's numbers do not depend on
            // whether the processor has AVX-512.
            if matches!(isa, Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni) {
                let first = x86.get_or_insert_with(|| all.clone());
                assert_eq!(bits(first), bits(&all), "{dtype} {isa:?} against AVX2");
            }
        }
    }
}

#[test]
fn block_scores_equal_one_position_at_a_time_within_rounding() {
    // The block kernels against the per-position dot products, for every block length (short
    // last blocks included) and a GQA group of 3.
    let mut seed = 5;
    for hd in [16usize, 32, 64, 24] {
        let rows: Vec<Vec<f32>> = (0..TILE)
            .map(|_| (0..hd).map(|_| 4.0 * lcg(&mut seed)).collect())
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| &r[..]).collect();
        let q: Vec<f32> = (0..3 * hd).map(|_| lcg(&mut seed)).collect();
        for np in 1..=TILE {
            let mut want = vec![0f32; 3 * TILE];
            // SAFETY: the scalar path needs nothing.
            unsafe { scalar::Scalar::scores(&q, &refs[..np], 0.125, &mut want, TILE) };
            #[allow(unused_mut)]
            let mut got: Vec<(Isa, Vec<f32>, Vec<f32>)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            for isa in Isa::available() {
                let mut s = vec![f32::NAN; 3 * TILE];
                // SAFETY: each path only where the CPU has it.
                unsafe {
                    match isa {
                        Isa::Avx2 | Isa::AvxVnni => {
                            avx2::Avx2::scores(&q, &refs[..np], 0.125, &mut s, TILE)
                        }
                        Isa::Avx512Vnni => {
                            avx512::Avx512::scores(&q, &refs[..np], 0.125, &mut s, TILE)
                        }
                        _ => continue,
                    }
                }
                // The same path over the whole tile.
                let mut full = vec![f32::NAN; 3 * TILE];
                // SAFETY: as above.
                unsafe {
                    match isa {
                        Isa::Avx512Vnni => {
                            avx512::Avx512::scores(&q, &refs, 0.125, &mut full, TILE)
                        }
                        _ => avx2::Avx2::scores(&q, &refs, 0.125, &mut full, TILE),
                    }
                }
                got.push((isa, s, full));
            }
            for (isa, s, full) in got {
                // A position's score does not depend on how many share its block.
                for g in 0..3 {
                    let at = g * TILE..g * TILE + np;
                    assert_eq!(
                        s[at.clone()]
                            .iter()
                            .map(|f| f.to_bits())
                            .collect::<Vec<_>>(),
                        full[at].iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} hd {hd} np {np}"
                    );
                }
                for g in 0..3 {
                    for j in 0..TILE {
                        let (a, b) = (s[g * TILE + j], want[g * TILE + j]);
                        if j < np {
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{isa:?} hd {hd}");
                        } else {
                            assert!(a.is_nan(), "{isa:?} hd {hd}: wrote past the block");
                        }
                    }
                }
            }
        }
    }
}
