//! The AVX-512 VNNI path for Q4_0, Q4_1 and Q8_0 at every batch size: the weights repacked once
//! into groups of [`G`] rows so that the 16 i32 lanes of a `vpdpbusd` are 16 different weight rows
//! (4 elements each) against 4 bytes of x broadcast to all lanes. A block of 32 then takes 8
//! `vpdpbusd` accumulated in i32 (exact), and only one conversion, one scale product and two
//! fused multiply-adds per (row of x, 16 rows of w, block): the float work that capped the tiled
//! kernel at a quarter of the int8 peak is divided by 8.
//!
//! Per (row of x `i`, row of w `r`) the operations are the same whatever the batch size or the
//! tile shape (each x row has its own accumulators; i32 sums are exact):
//! `acc = 0; for b: acc = fma(f32(Σ_32 uw·qx), dw[r][b]·dx[i][b], acc);
//!  acc = fma(mw[r][b], sx[i][2b] + sx[i][2b+1], acc)`,
//! so batch composition cannot change a row's result.
//!
//! Packed layout, per group of 16 rows (the last zero-padded), per block `b` of the row:
//! codes (Q4: 4 × 64 bytes, register `j` lane `s` holds row `s`'s GGUF bytes `4j..4j+4`, whose low
//! nibbles are elements `4j..` and high nibbles `16+4j..`; Q8_0: 8 × 64 bytes, register `k` lane
//! `s` holds elements `4k..4k+4` xor 0x80), then the 16 rows' `d` as GGUF's f16, then for Q4_1
//! their 16 f16 `m`. The kernel widens them to `dw` and `mw` (the offset: Q4_0 `-8d`, Q4_1 `m`,
//! Q8_0 `-128d`, made by multiplying `dw` by a power of two: exact, the same f32 values an f32
//! copy would hold). A single-stream decode step reads every weight once from DRAM, so the
//! packed copy keeps GGUF's size: 96 MB read per SmolLM2-135M step instead of 115 MB with f32
//! scales (on the 2-core EPYC, quiet: tg128 1.04x at one thread, 1.00x at two, where the step
//! already ran at ~34 GB/s).

use std::arch::x86_64::*;

use std::ops::Range;

use super::{packed256, Acts, Geom, QMatrix, QType, QK, ROW_SPLIT_MIN_ROWS, WIDE_MIN_ROWS};
use crate::cpu::Isa;
use crate::cpu::SendPtr;

/// Weight rows per group: the i32 lanes of a 512-bit register.
pub(crate) const G: usize = 16;
/// Rows of x per register tile (2 groups × MR i32 and f32 accumulators fit in 32 registers).
const MR: usize = 6;

/// Bytes of codes per (group, block): one byte per weight when `wide` (and always for Q8_0),
/// else Q4's nibbles as GGUF packs them.
pub(crate) fn code_bytes(ty: QType, wide: bool) -> usize {
    if ty == QType::Q8_0 || wide {
        512
    } else {
        256
    }
}

/// Bytes per (group, block): codes, then 16 f16 scales, then (Q4_1) 16 f16 offsets.
pub(crate) fn group_block_bytes(ty: QType, wide: bool) -> usize {
    code_bytes(ty, wide) + if ty == QType::Q4_1 { 4 * G } else { 2 * G }
}

/// Where a block's offsets come from: Q4_1 stores them (0), Q4_0 and Q8_0 are `-8d`, `-128d`.
pub(crate) fn offset_mul(ty: QType) -> f32 {
    match ty {
        QType::Q4_0 => -8.0,
        QType::Q8_0 => -128.0,
        _ => 0.0,
    }
}

/// Whether `isa` multiplies `ty` on a packed path: this file's (AVX-512 VNNI) or
/// `packed256.rs` (AVX-VNNI; AVX2 for Q4 only, whose codes cannot overflow `maddubs`).
pub(crate) fn packs(isa: Isa, ty: QType) -> bool {
    match isa {
        Isa::Avx512Vnni | Isa::AvxVnni => matches!(ty, QType::Q4_0 | QType::Q4_1 | QType::Q8_0),
        Isa::Avx2 => matches!(ty, QType::Q4_0 | QType::Q4_1),
        Isa::Scalar => false,
    }
}

/// `w` (Q4_0, Q4_1 or Q8_0) in the packed layout: (ceil(rows / 16), nb, group_block_bytes).
/// `wide` unpacks Q4's nibbles to one byte per weight, laid out as Q8_0's codes (register `k`
/// lane `s` holds elements `4k..4k+4` of row `s`), so the kernel runs without the unpack.
pub(crate) fn pack(w: &QMatrix, wide: bool) -> Vec<u8> {
    let nb = w.cols / QK;
    let bb = w.ty.block_bytes();
    let (cb, gbb) = (code_bytes(w.ty, wide), group_block_bytes(w.ty, wide));
    let groups = w.rows.div_ceil(G);
    let mut out = vec![0u8; groups * nb * gbb];
    for (gi, gdata) in out.chunks_exact_mut(nb * gbb).enumerate() {
        for (b, dst) in gdata.chunks_exact_mut(gbb).enumerate() {
            for s in 0..G.min(w.rows - gi * G) {
                let blk = &w.row(gi * G + s)[b * bb..(b + 1) * bb];
                let qs = match w.ty {
                    QType::Q4_0 => &blk[2..18],
                    QType::Q4_1 => &blk[4..20],
                    _ => &blk[2..34],
                };
                for k in 0..cb / 64 {
                    for t in 0..4 {
                        let e = 4 * k + t;
                        dst[k * 64 + s * 4 + t] = match (w.ty, wide) {
                            (QType::Q8_0, _) => qs[e] ^ 0x80,
                            // Element e of a Q4 block: low nibble of byte e, high of byte e - 16.
                            (_, true) if e < 16 => qs[e] & 0x0F,
                            (_, true) => qs[e - 16] >> 4,
                            (_, false) => qs[e],
                        };
                    }
                }
                // d, and Q4_1's m, as GGUF's f16 bytes.
                dst[cb + 2 * s..cb + 2 * s + 2].copy_from_slice(&blk[..2]);
                if w.ty == QType::Q4_1 {
                    dst[cb + 32 + 2 * s..cb + 32 + 2 * s + 2].copy_from_slice(&blk[2..4]);
                }
            }
        }
    }
    out
}

/// A task: groups `g0..g1` of the packed `w` against all `n` rows of x.
pub(crate) struct PackedArgs<'a> {
    pub w: &'a QMatrix,
    pub packed: &'a [u8],
    pub acts: &'a Acts,
    pub g: Geom,
    /// rows `i0..i1` of x
    pub i0: usize,
    pub i1: usize,
    pub g0: usize,
    pub g1: usize,
    /// weight blocks ahead to prefetch (0: none)
    pub prefetch: usize,
    /// (n, y_stride) output; this matrix's rows are its columns `y_col..y_col + w.rows` (with
    /// [`run_glu`]: `h`'s columns `y_col..y_col + w.rows / 2`)
    pub y: SendPtr,
    pub y_stride: usize,
    pub y_col: usize,
}

/// Groups `gi..gi + GR` against the M rows of x from `i0`; `WIDE`: one byte per code (Q8_0, or
/// Q4 packed wide), else Q4 nibbles. `GLU` (with GR = 2): the groups are `gi` of the gate half
/// and `gi` of the up half of a stacked gate | up matrix, and the tile writes
/// `silu(gate) · up` ([`super::super::avx512::silu_mul16`], the bits of `glu_rows`) to `h`'s
/// columns `16 gi..` instead of both products.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const WIDE: bool, const M: usize, const GR: usize, const GLU: bool>(
    a: &PackedArgs,
    gi: usize,
    i0: usize,
) {
    let g = a.g;
    let nb = g.nb;
    let (gbb, cb) = (group_block_bytes(a.w.ty, WIDE), code_bytes(a.w.ty, WIDE));
    let (mul, stored) = (offset_mul(a.w.ty), a.w.ty == QType::Q4_1);
    let half = a.w.rows.div_ceil(G) / 2;
    let group = |q: usize| if GLU { gi + q * half } else { gi + q };
    let base: [*const u8; GR] = std::array::from_fn(|q| a.packed.as_ptr().add(group(q) * nb * gbb));
    let qx: [*const u8; M] =
        std::array::from_fn(|i| a.acts.qx.as_ptr().add((i0 + i) * g.nbp * QK) as *const u8);
    let ds: [*const f32; M] = std::array::from_fn(|i| a.acts.ds.as_ptr().add((i0 + i) * g.nbp * 2));
    let bx =
        |i: usize, at: usize| _mm512_set1_epi32((qx[i].add(at) as *const i32).read_unaligned());
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_ps(); GR]; M];
    // Hot loop: per block, 8 vpdpbusd per (row of x, group) accumulated in i32.
    for b in 0..nb {
        let blk: [*const u8; GR] = std::array::from_fn(|q| base[q].add(b * gbb));
        // The block `prefetch` ahead, every cache line: on the first pass over x the weights
        // stream from L3/DRAM; later passes find them in L1.
        if a.prefetch > 0 {
            for q in 0..GR {
                for line in (0..gbb).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(blk[q].wrapping_add(a.prefetch * gbb + line) as _);
                }
            }
        }
        let mut s = [[_mm512_setzero_si512(); GR]; M];
        if WIDE {
            for k in 0..8 {
                let wv = simd_array!(GR, _mm512_setzero_si512(), |q| _mm512_loadu_si512(
                    blk[q].add(64 * k) as _
                ));
                for i in 0..M {
                    let xv = bx(i, b * QK + 4 * k);
                    for q in 0..GR {
                        s[i][q] = _mm512_dpbusd_epi32(s[i][q], wv[q], xv);
                    }
                }
            }
        } else {
            for j in 0..4 {
                let v = simd_array!(GR, _mm512_setzero_si512(), |q| _mm512_loadu_si512(
                    blk[q].add(64 * j) as _
                ));
                let lo = simd_array!(GR, _mm512_setzero_si512(), |q| _mm512_and_si512(v[q], low));
                for i in 0..M {
                    let xv = bx(i, b * QK + 4 * j);
                    for q in 0..GR {
                        s[i][q] = _mm512_dpbusd_epi32(s[i][q], lo[q], xv);
                    }
                }
                let hi = simd_array!(GR, _mm512_setzero_si512(), |q| _mm512_and_si512(
                    _mm512_srli_epi16(v[q], 4),
                    low
                ));
                for i in 0..M {
                    let xv = bx(i, b * QK + 16 + 4 * j);
                    for q in 0..GR {
                        s[i][q] = _mm512_dpbusd_epi32(s[i][q], hi[q], xv);
                    }
                }
            }
        }
        let dw = simd_array!(GR, _mm512_setzero_ps(), |q| _mm512_cvtph_ps(
            _mm256_loadu_si256(blk[q].add(cb) as _)
        ));
        let mw = simd_array!(GR, _mm512_setzero_ps(), |q| if stored {
            _mm512_cvtph_ps(_mm256_loadu_si256(blk[q].add(cb + 32) as _))
        } else {
            _mm512_mul_ps(dw[q], _mm512_set1_ps(mul))
        });
        for i in 0..M {
            let xd = _mm512_set1_ps(*ds[i].add(2 * b));
            let xs = _mm512_set1_ps(*ds[i].add(2 * b + 1));
            for q in 0..GR {
                let sc = _mm512_mul_ps(dw[q], xd);
                acc[i][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][q]), sc, acc[i][q]);
                acc[i][q] = _mm512_fmadd_ps(mw[q], xs, acc[i][q]);
            }
        }
    }
    if GLU {
        for i in 0..M {
            let h = crate::cpu::avx512::silu_mul16(acc[i][0], acc[i][1]);
            _mm512_storeu_ps(a.y.0.add((i0 + i) * a.y_stride + a.y_col + gi * G), h);
        }
        return;
    }
    let m = a.w.rows;
    for q in 0..GR {
        let c0 = (gi + q) * G;
        let valid = (m - c0).min(G);
        let mask: __mmask16 = if valid == G {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        for i in 0..M {
            _mm512_mask_storeu_ps(
                a.y.0.add((i0 + i) * a.y_stride + a.y_col + c0),
                mask,
                acc[i][q],
            );
        }
    }
}

#[inline(always)]
unsafe fn rows_of<const WIDE: bool, const GR: usize, const GLU: bool>(a: &PackedArgs, gi: usize) {
    let mut i0 = a.i0;
    while i0 < a.i1 {
        let mm = (a.i1 - i0).min(MR);
        match mm {
            6 => tile::<WIDE, 6, GR, GLU>(a, gi, i0),
            5 => tile::<WIDE, 5, GR, GLU>(a, gi, i0),
            4 => tile::<WIDE, 4, GR, GLU>(a, gi, i0),
            3 => tile::<WIDE, 3, GR, GLU>(a, gi, i0),
            2 => tile::<WIDE, 2, GR, GLU>(a, gi, i0),
            _ => tile::<WIDE, 1, GR, GLU>(a, gi, i0),
        }
        i0 += mm;
    }
}

/// Groups `g0..g1` against all rows of x, two groups per tile.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `a.packed` is `pack(a.w, WIDE)` (or
/// `pack(a.w, false)` of a Q8_0 matrix with `WIDE`); `a.y` points to an
/// (n, y_stride) buffer whose columns `y_col + 16 g0..y_col + 16 g1` (clipped to w.rows) no one
/// else touches.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn run<const WIDE: bool>(a: &PackedArgs) {
    let mut gi = a.g0;
    while gi + 2 <= a.g1 {
        rows_of::<WIDE, 2, false>(a, gi);
        gi += 2;
    }
    if gi < a.g1 {
        rows_of::<WIDE, 1, false>(a, gi);
    }
}

/// [`run`] over a stacked gate | up matrix (`w.rows` a multiple of 32: whole groups in each
/// half), writing `h = silu(gate) · up`: `g0..g1` index group pairs (gate group j, up group j),
/// that is `h`'s columns `16 g0..16 g1`.
///
/// # Safety
/// As [`run`], with `a.y` an (n, y_stride) buffer whose columns `y_col + 16 g0..y_col + 16 g1`
/// no one else touches.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn run_glu<const WIDE: bool>(a: &PackedArgs) {
    debug_assert!(a.w.rows.is_multiple_of(2 * G));
    for j in a.g0..a.g1 {
        rows_of::<WIDE, 2, true>(a, j);
    }
}

/// How [`plan`] splits a matmul over the pool.
pub(super) struct PackedPlan {
    /// groups of 16 output rows (with `glu`: pairs of a gate group and its up group)
    pub groups: usize,
    /// More than 1: tasks are blocks of x rows, each quantizing its rows and multiplying them by
    /// every group (small matrices and big batches: no wait between quantizing and multiplying,
    /// no quantized row read on another core, at the cost of each thread reading all weights).
    pub row_blocks: usize,
    /// Otherwise tasks are runs of whole group pairs against all rows of x.
    pub group_tasks: usize,
    pub groups_per_task: usize,
}

/// The packed path (Q4_0/Q4_1/Q8_0 where [`packs`] says so, any batch size): its split over the
/// pool and the task body, `run(acts, rows of x, groups)`; with `glu` (AVX-512 only), groups are
/// [`run_glu`]'s pairs.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan<'a>(
    isa: Isa,
    n: usize,
    g: Geom,
    w: &'a QMatrix,
    y: &mut [f32],
    y_stride: usize,
    y_col: usize,
    glu: bool,
) -> (
    PackedPlan,
    impl Fn(&Acts, Range<usize>, Range<usize>) + Sync + 'a,
) {
    let wide = w.ty == QType::Q8_0 || n >= WIDE_MIN_ROWS;
    let packed = if w.ty != QType::Q8_0 && wide {
        w.wide.get_or_init(|| pack(w, true))
    } else {
        w.packed.get_or_init(|| pack(w, false))
    };
    let groups = if glu {
        w.rows / (2 * G)
    } else {
        w.rows.div_ceil(G)
    };
    let threads = rayon::current_num_threads();
    let tune = crate::cpu::tuning::get().tuning;
    let row_blocks = if threads > 1
        && n >= ROW_SPLIT_MIN_ROWS * threads
        && packed.len() * threads <= tune.row_split_max_bytes
    {
        threads
    } else {
        1
    };
    let tasks = threads * tune.tasks_per_thread;
    // Whole group pairs per task (a pair is one unit with `glu`).
    let per = if glu {
        groups.div_ceil(tasks)
    } else {
        groups.div_ceil(tasks).next_multiple_of(2)
    };
    let out = SendPtr(y.as_mut_ptr());
    let run = move |acts: &Acts, rows: Range<usize>, gr: Range<usize>| {
        let a = PackedArgs {
            w,
            packed,
            acts,
            g,
            i0: rows.start,
            i1: rows.end,
            g0: gr.start,
            g1: gr.end,
            prefetch: tune.prefetch_blocks,
            y: out,
            y_stride,
            y_col,
        };
        debug_assert!(!glu || isa == Isa::Avx512Vnni);
        // SAFETY: `packs(isa, w.ty)` held, so the CPU has the kernel's features and the type is
        // one it reads; `packed` is `pack(w, wide)` (Q8_0 is always wide); each task writes only
        // its own (rows, groups) block of y, disjoint across tasks, and y outlives the loop.
        unsafe {
            match (isa, wide) {
                (Isa::Avx512Vnni, true) if glu => run_glu::<true>(&a),
                (Isa::Avx512Vnni, false) if glu => run_glu::<false>(&a),
                (Isa::Avx512Vnni, true) => run::<true>(&a),
                (Isa::Avx512Vnni, false) => run::<false>(&a),
                (Isa::AvxVnni, true) => packed256::run_vnni::<true>(&a),
                (Isa::AvxVnni, false) => packed256::run_vnni::<false>(&a),
                (_, true) => packed256::run_avx2::<true>(&a),
                (_, false) => packed256::run_avx2::<false>(&a),
            }
        }
    };
    let plan = PackedPlan {
        groups,
        row_blocks,
        group_tasks: groups.div_ceil(per),
        groups_per_task: per,
    };
    (plan, run)
}
