//! AVX-512 attention operations (x86-64), on the CPUs that [`crate::cpu::Isa::Avx512Vnni`] is
//! detected on (AVX-512 F/BW/VL, plus AVX2, FMA and F16C): K tiles packed so that one 16-lane
//! FMA serves two positions (see [`pack_k`]), softmax's exp sixteen values at a time, f16 rows
//! widened sixteen values per instruction and, for heads of up to 64 values, V rows added into
//! outputs held in registers. Every result is bit-identical to the AVX2 path's (the same
//! operations on each value, in the same order), so a model gives the same numbers on every x86
//! processor.
#![cfg(target_arch = "x86_64")]
// Register tiles are indexed by head alongside pointer offsets; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::avx2::Avx2;
use super::fold::{self, KTile, RowStep};
use super::kv::KvData;
use super::{acc_grouped, BlockQ8_0, HeadGroups, KvStore, Ops, Outs, Task, QK8_0, TILE};
use crate::cpu::avx2::hsum;

pub(crate) struct Avx512;

/// [`HeadGroups::acc_n`] for heads of `16 * C` values (at most 64): all `N` heads' outputs held
/// in registers while the rows go by, each row's weight broadcast once per head. Each output
/// value gets the same operations, in the same order, as column by column. `onto_zero`: `out`
/// is taken as zeros (not read).
#[inline(always)]
unsafe fn acc_in_registers<const N: usize, const C: usize>(
    w: *const f32,
    stride: usize,
    rows: &[&[f32]],
    out: *mut f32,
    onto_zero: bool,
) {
    let hd = 16 * C;
    let mut a = [[_mm512_setzero_ps(); C]; N];
    if !onto_zero {
        for g in 0..N {
            for c in 0..C {
                a[g][c] = _mm512_loadu_ps(out.add(g * hd + 16 * c));
            }
        }
    }
    for (j, r) in rows.iter().enumerate() {
        let pr = r.as_ptr();
        for g in 0..N {
            let wg = _mm512_set1_ps(*w.add(g * stride + j));
            for c in 0..C {
                a[g][c] = _mm512_fmadd_ps(wg, _mm512_loadu_ps(pr.add(16 * c)), a[g][c]);
            }
        }
    }
    for g in 0..N {
        for c in 0..C {
            _mm512_storeu_ps(out.add(g * hd + 16 * c), a[g][c]);
        }
    }
}

impl HeadGroups for Avx512 {
    #[inline(always)]
    unsafe fn dots_n<const N: usize>(
        q: *const f32,
        k: &[f32],
        scale: f32,
        s: *mut f32,
        stride: usize,
    ) {
        Avx2::dots_n::<N>(q, k, scale, s, stride)
    }

    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for `N` heads of `out` (rows of `hd`): held in
    /// registers for heads of up to 64 values, else the AVX2 kernel's eight columns at a time.
    #[inline(always)]
    unsafe fn acc_n<const N: usize>(
        w: *const f32,
        stride: usize,
        rows: &[&[f32]],
        out: *mut f32,
        hd: usize,
    ) {
        match hd {
            64 => acc_in_registers::<N, 4>(w, stride, rows, out, false),
            32 => acc_in_registers::<N, 2>(w, stride, rows, out, false),
            16 => acc_in_registers::<N, 1>(w, stride, rows, out, false),
            _ => Avx2::acc_n::<N>(w, stride, rows, out, hd),
        }
    }
}

impl Ops for Avx512 {
    #[inline(always)]
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize) {
        Avx2::dots(q, k, scale, s, stride)
    }

    /// AVX2's (for K rows [`pack_k`] leaves as they are).
    #[inline(always)]
    unsafe fn scores(q: &[f32], rows: &[&[f32]], scale: f32, s: &mut [f32], stride: usize) {
        Avx2::scores(q, rows, scale, s, stride)
    }

    #[inline(always)]
    unsafe fn pack_k(k: &KvStore, at: &[usize], hd: usize, buf: &mut [f32]) -> bool {
        pack_k(k, at, hd, buf)
    }

    /// On a packed tile: [`scores_packed`], then each head's softmax update on its scores in
    /// registers ([`softmax_head`]), then the V rows. Else [`fold::row_tile`].
    #[inline(always)]
    unsafe fn row_tile(k: &KTile, st: RowStep) {
        let KTile::Packed(buf) = k else {
            return fold::row_tile::<Self>(k, st);
        };
        let RowStep {
            vrows,
            q,
            scale,
            scores,
            m,
            l,
            out,
            first,
        } = st;
        let np = vrows.len();
        let hd = out.len() / m.len();
        scores_packed(q, buf, np, scale, scores);
        for (g, s) in scores.chunks_exact_mut(TILE).take(m.len()).enumerate() {
            // A first tile's output is not rescaled (the max was -inf), only started from zero.
            softmax_head(s, np, &mut m[g], &mut l[g], &mut out[g * hd..(g + 1) * hd]);
        }
        if first {
            acc_first(scores, vrows, out, hd);
        } else {
            Self::acc(scores, TILE, vrows, out);
        }
    }

    #[inline(always)]
    unsafe fn max(s: &[f32], init: f32) -> f32 {
        let (n, p) = (s.len(), s.as_ptr());
        let mut m = _mm512_set1_ps(init);
        let mut i = 0;
        while i < n {
            let k = lanes(n - i);
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, k, p.add(i)));
            i += 16;
        }
        _mm512_reduce_max_ps(m)
    }

    /// AVX2's exp and sum, sixteen exps at a time: the full groups of eight summed into one
    /// 8-lane accumulator in order, then its lanes as `hsum` does, then the tail one by one.
    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let (n, p) = (s.len(), s.as_mut_ptr());
        let m = _mm512_set1_ps(mx);
        let n8 = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut tail = [0f32; 8];
        let mut i = 0;
        while i < n {
            let k = lanes(n - i);
            // Lanes past the end through exp(0), as AVX2's padded tail.
            let e = exp(_mm512_sub_ps(_mm512_mask_loadu_ps(m, k, p.add(i)), m));
            _mm512_mask_storeu_ps(p.add(i), k, e);
            let (lo, hi) = (
                _mm512_castps512_ps256(e),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e))),
            );
            if i + 8 <= n8 {
                acc = _mm256_add_ps(acc, lo);
            } else {
                _mm256_storeu_ps(tail.as_mut_ptr(), lo);
            }
            if i + 16 <= n8 {
                acc = _mm256_add_ps(acc, hi);
            } else if i + 8 < n {
                _mm256_storeu_ps(tail.as_mut_ptr(), hi);
            }
            i += 16;
        }
        let mut sum = hsum(acc);
        for &v in &tail[..n - n8] {
            sum += v;
        }
        sum
    }

    #[inline(always)]
    unsafe fn acc(w: &[f32], stride: usize, rows: &[&[f32]], out: &mut [f32]) {
        acc_grouped::<Self>(w, stride, rows, out)
    }

    #[inline(always)]
    unsafe fn scale(a: f32, y: &mut [f32]) {
        Avx2::scale(a, y)
    }

    #[inline(always)]
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(ps.add(i) as *const __m256i);
            _mm512_storeu_ps(pd.add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        Avx2::f16_to_f32(&src[i..n], &mut dst[i..n])
    }

    #[inline(always)]
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]) {
        Avx2::q8_to_f32(src, dst)
    }
}

/// The mask of the first `min(n, 16)` lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// `crate::cpu::avx2::exp` sixteen lanes wide, operation for operation (the same bits per lane).
#[inline(always)]
unsafe fn exp(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), f);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(e))
}

/// Packs the K rows that start at `at` (values into the pool, `hd` each, `hd` a multiple of 8)
/// for [`scores_packed`]: positions in units of eight, unit `u` (positions `8u..8u + 8`) taking
/// `8 * hd` f32s; in it, for each 8-value column block `c` of the head, four 16-lane vectors,
/// vector `i` holding position `8u + i`'s values `8c..8c + 8` then position `8u + i + 4`'s.
/// A 16-lane FMA then does two positions' work with AVX2's lane for every value, and the sums
/// come out in position order (see [`reduce_unit`]). Lanes of positions past the end hold a
/// copy of a real row (never read back as scores). Returns false for other head sizes.
#[inline(always)]
unsafe fn pack_k(k: &KvStore, at: &[usize], hd: usize, buf: &mut [f32]) -> bool {
    if hd == 0 || !hd.is_multiple_of(8) {
        return false;
    }
    let (np, cb) = (at.len(), hd / 8);
    assert!(
        np > 0 && buf.len() >= np.div_ceil(8) * 8 * hd,
        "attention: K tile"
    );
    let pb = buf.as_mut_ptr();
    for u in 0..np.div_ceil(8) {
        for i in 0..4 {
            let a = 8 * u + i;
            if a >= np {
                break;
            }
            let (ra, rb) = (at[a], at[(a + 4).min(np - 1)]);
            let dst = |c: usize| pb.add(((u * cb + c) * 4 + i) * 16);
            match &k.data {
                KvData::F32(v) => {
                    let (pa, pbr) = (v[ra..ra + hd].as_ptr(), v[rb..rb + hd].as_ptr());
                    for c in 0..cb {
                        _mm256_storeu_ps(dst(c), _mm256_loadu_ps(pa.add(8 * c)));
                        _mm256_storeu_ps(dst(c).add(8), _mm256_loadu_ps(pbr.add(8 * c)));
                    }
                }
                KvData::F16(v) => {
                    let (pa, pbr) = (v[ra..ra + hd].as_ptr(), v[rb..rb + hd].as_ptr());
                    for c in 0..cb {
                        let h = _mm256_inserti128_si256::<1>(
                            _mm256_castsi128_si256(_mm_loadu_si128(pa.add(8 * c).cast())),
                            _mm_loadu_si128(pbr.add(8 * c).cast()),
                        );
                        _mm512_storeu_ps(dst(c), _mm512_cvtph_ps(h));
                    }
                }
                KvData::Q8_0(v) => {
                    let (ba, bb) = (
                        &v[ra / QK8_0..][..hd / QK8_0],
                        &v[rb / QK8_0..][..hd / QK8_0],
                    );
                    for c in 0..cb {
                        let (x, y) = (&ba[8 * c / QK8_0], &bb[8 * c / QK8_0]);
                        let o = 8 * c % QK8_0;
                        q8_to_f32_8(x, o, dst(c));
                        q8_to_f32_8(y, o, dst(c).add(8));
                    }
                }
            }
        }
    }
    true
}

/// [`Ops::acc`] (weights (group, TILE) in `w`) into an output `out` (group, `hd`) that holds
/// garbage, as onto zeros: from zeroed registers for heads of 16, 32 or 64 values, heads four at
/// a time; else `out` zeroed first.
#[inline(always)]
unsafe fn acc_first(w: &[f32], rows: &[&[f32]], out: &mut [f32], hd: usize) {
    let gn = out.len() / hd;
    assert!(
        gn == 0 || w.len() >= (gn - 1) * TILE + rows.len(),
        "attention: weights"
    );
    if !matches!(hd, 16 | 32 | 64) {
        out.fill(0.0);
        return Avx512::acc(w, TILE, rows, out);
    }
    let (pw, po) = (w.as_ptr(), out.as_mut_ptr());
    let mut g = 0;
    while g < gn {
        let (wg, og) = (pw.add(g * TILE), po.add(g * hd));
        let c = (gn - g).min(4);
        match (c, hd) {
            (4, 64) => acc_in_registers::<4, 4>(wg, TILE, rows, og, true),
            (3, 64) => acc_in_registers::<3, 4>(wg, TILE, rows, og, true),
            (2, 64) => acc_in_registers::<2, 4>(wg, TILE, rows, og, true),
            (_, 64) => acc_in_registers::<1, 4>(wg, TILE, rows, og, true),
            (4, 32) => acc_in_registers::<4, 2>(wg, TILE, rows, og, true),
            (3, 32) => acc_in_registers::<3, 2>(wg, TILE, rows, og, true),
            (2, 32) => acc_in_registers::<2, 2>(wg, TILE, rows, og, true),
            (_, 32) => acc_in_registers::<1, 2>(wg, TILE, rows, og, true),
            (4, _) => acc_in_registers::<4, 1>(wg, TILE, rows, og, true),
            (3, _) => acc_in_registers::<3, 1>(wg, TILE, rows, og, true),
            (2, _) => acc_in_registers::<2, 1>(wg, TILE, rows, og, true),
            (_, _) => acc_in_registers::<1, 1>(wg, TILE, rows, og, true),
        }
        g += c;
    }
}

/// Values `o..o + 8` of `b` into `dst`, as `Avx2::q8_to_f32` widens them.
#[inline(always)]
unsafe fn q8_to_f32_8(b: &BlockQ8_0, o: usize, dst: *mut f32) {
    let d = _mm256_set1_ps(b.d.to_f32());
    let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.qs.as_ptr().add(o).cast()));
    _mm256_storeu_ps(dst, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
}

/// The scores of one unit of eight positions for one head from its four accumulators (lane l of
/// vector i: the products of values `l % 8 + 8c` of position `i + 4 * (l / 8)`): AVX2's
/// `reduce8` tree on every position (neighbours, then pairs of pairs, then the two halves), as
/// 128-bit lanes ([position i's lanes 0-3, its lanes 4-7, position i + 4's 0-3, its 4-7]) of
/// the two-level result, whose halves [`halves_sum`] adds.
#[inline(always)]
unsafe fn reduce_unit(a: &[__m512]) -> __m512 {
    // `_mm256_hadd_ps` per 128-bit lane: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
    let hadd = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
            _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
        )
    };
    hadd(hadd(a[0], a[1]), hadd(a[2], a[3]))
}

/// Two units' [`reduce_unit`] results (`x`, `y`) to their sixteen scores in position order: each
/// position's sums of lanes 0-3 and 4-7 added.
#[inline(always)]
unsafe fn halves_sum(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
    )
}

/// Scores of `N` heads of `q` (rows of `hd`) against `U` (1 or 2) packed units at `k`:
/// `s[g * TILE + j] = scale * q_g · k_j` for the tile's positions `j` of these units, written
/// sixteen at a time (lanes past the units' positions, or past the tile's, hold garbage).
#[inline(always)]
unsafe fn scores_units<const N: usize, const U: usize>(
    q: *const f32,
    k: *const f32,
    hd: usize,
    scale: f32,
    s: *mut f32,
) {
    let cb = hd / 8;
    let mut a = [[_mm512_setzero_ps(); 8]; N];
    for c in 0..cb {
        // Values 8c..8c + 8 of each head, in both halves.
        let qv: [__m512; N] = std::array::from_fn(|g| {
            _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
                q.add(g * hd + 8 * c).cast(),
            )))
        });
        for u in 0..U {
            for i in 0..4 {
                let kv = _mm512_loadu_ps(k.add(((u * cb + c) * 4 + i) * 16));
                for g in 0..N {
                    a[g][4 * u + i] = _mm512_fmadd_ps(qv[g], kv, a[g][4 * u + i]);
                }
            }
        }
    }
    let sc = _mm512_set1_ps(scale);
    for g in 0..N {
        let x = reduce_unit(&a[g][..4]);
        let y = if U == 2 { reduce_unit(&a[g][4..]) } else { x };
        _mm512_storeu_ps(s.add(g * TILE), _mm512_mul_ps(halves_sum(x, y), sc));
    }
}

/// The scores of the first `np` positions of a tile packed by [`pack_k`] into `s` (group,
/// TILE), sixteen positions per store: heads three at a time (24 accumulators for two units),
/// units two at a time. Lanes past `np` hold garbage.
#[inline(always)]
unsafe fn scores_packed(q: &[f32], buf: &[f32], np: usize, scale: f32, s: &mut [f32]) {
    const { assert!(TILE == 32) };
    let hd = buf.len() / TILE;
    let gn = q.len() / hd;
    let units = np.div_ceil(8);
    assert!(
        gn > 0 && np <= TILE && buf.len() >= units * 8 * hd && s.len() >= gn * TILE,
        "attention: packed scores"
    );
    let (pq, pk, ps) = (q.as_ptr(), buf.as_ptr(), s.as_mut_ptr());
    let mut g = 0;
    while g < gn {
        let (qg, sg) = (pq.add(g * hd), ps.add(g * TILE));
        let c = (gn - g).min(3);
        // Units two at a time from unit 0: a store at unit u (even) stays inside the TILE.
        let mut u = 0;
        while u < units {
            let (ku, su) = (pk.add(u * 8 * hd), sg.add(8 * u));
            match (c, units - u >= 2) {
                (3, true) => scores_units::<3, 2>(qg, ku, hd, scale, su),
                (3, false) => scores_units::<3, 1>(qg, ku, hd, scale, su),
                (2, true) => scores_units::<2, 2>(qg, ku, hd, scale, su),
                (2, false) => scores_units::<2, 1>(qg, ku, hd, scale, su),
                (_, true) => scores_units::<1, 2>(qg, ku, hd, scale, su),
                (_, false) => scores_units::<1, 1>(qg, ku, hd, scale, su),
            }
            u += 2;
        }
        g += c;
    }
}

/// One head's softmax update on a tile's scores `s` (TILE, the first `np` valid), as
/// [`fold::row_tile`] does it through AVX2's `max` and `exp_sum` (the same bits): the max over
/// the valid lanes, the output `out` and sum `l` rescaled when it grows (but not from -inf),
/// `s` turned into `exp(s - max)` (garbage past `np`), and their sum added to `l`: the full
/// groups of eight summed into one 8-lane accumulator in order, then its lanes as `hsum` does,
/// then the tail one by one.
#[inline(always)]
unsafe fn softmax_head(s: &mut [f32], np: usize, m: &mut f32, l: &mut f32, out: &mut [f32]) {
    let p = s[..TILE].as_mut_ptr();
    let two = np > 16;
    let x0 = _mm512_loadu_ps(p);
    let x1 = if two { _mm512_loadu_ps(p.add(16)) } else { x0 };
    let init = _mm512_set1_ps(*m);
    let mut mv = _mm512_mask_max_ps(init, lanes(np), init, x0);
    if two {
        mv = _mm512_mask_max_ps(mv, lanes(np - 16), mv, x1);
    }
    let mx = _mm512_reduce_max_ps(mv);
    if mx > *m {
        if *m != f32::NEG_INFINITY {
            let c = (*m - mx).exp();
            *l *= c;
            Avx512::scale(c, out);
        }
        *m = mx;
    }
    let mm = _mm512_set1_ps(mx);
    let e0 = exp(_mm512_sub_ps(x0, mm));
    _mm512_storeu_ps(p, e0);
    let e1 = if two {
        let e = exp(_mm512_sub_ps(x1, mm));
        _mm512_storeu_ps(p.add(16), e);
        e
    } else {
        e0
    };
    let hi = |e: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
    let blocks = [
        _mm512_castps512_ps256(e0),
        hi(e0),
        _mm512_castps512_ps256(e1),
        hi(e1),
        _mm256_setzero_ps(),
    ];
    // Without branches on `np` (it changes from row to row): the blocks past the full ones, and
    // the tail's lanes past `np`, are added as +0, which leaves every sum as it was (the sums
    // of exps are never -0).
    let n8 = np / 8;
    let mut acc = _mm256_setzero_ps();
    for (b, &x) in blocks[..4].iter().enumerate() {
        acc = _mm256_add_ps(acc, _mm256_maskz_mov_ps(if b < n8 { 0xff } else { 0 }, x));
    }
    let mut tail = [0f32; 8];
    _mm256_storeu_ps(
        tail.as_mut_ptr(),
        _mm256_maskz_mov_ps(((1u32 << (np - 8 * n8)) - 1) as u8, blocks[n8]),
    );
    let mut sum = hsum(acc);
    for &v in &tail[..7] {
        sum += v;
    }
    *l += sum;
}
/// [`super::fold::run`] on AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; as [`super::fold::run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn chunk(t: &Task, c: usize, outs: Outs, scratch: &mut [f32]) {
    super::fold::run::<Avx512>(t, c, outs, scratch)
}
