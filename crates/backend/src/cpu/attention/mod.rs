//! Causal attention of token rows over a paged K/V pool, the pool stored as f32, f16 or Q8_0.
//!
//! Work is split over (row, KV head): the `n_heads / n_kv_heads` query heads of one GQA group share
//! one pass over their sequence's K and V. Softmax is computed online over tiles of `TILE`
//! positions (flash-attention style), so the only working memory is a fixed slice per pool thread
//! of a scratch buffer the caller owns: nothing grows with the context or the batch, and nothing
//! is allocated per call.
//! f16 and Q8_0 rows are widened to f32 one head row at a time (F16C / AVX2 on x86-64, the portable
//! conversion elsewhere; both exact).

mod avx2;
mod kv;
mod scalar;

pub use kv::{BlockQ8_0, KvDtype, KvStore, QK8_0};

use half::f16;
use rayon::prelude::*;

use kv::KvData;

use super::{Isa, SendPtr};

/// Positions scored together before their V rows are summed (one rescale of the output per tile).
const TILE: usize = 32;

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    /// Divides `n_heads`; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Multiplies q·k (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl AttnShape {
    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// f32s of scratch one (row, KV head) task uses: scores (group, TILE), running max and sum
    /// (group,) each, a widened K row (head_dim,) and a tile of widened V rows (TILE, head_dim).
    fn task_scratch(&self) -> usize {
        let g = self.group();
        g * TILE + 2 * g + (1 + TILE) * self.head_dim
    }
}

/// Where one row's sequence keeps its K/V, and how many positions (from 0) the row attends to.
#[derive(Clone, Copy, Debug)]
pub struct RowKv<'a> {
    /// Physical block of each logical block; covers positions `0..ctx`.
    pub block_table: &'a [u32],
    pub ctx: usize,
}

/// The inputs of [`paged_attention`]. `rows(t)` describes row `t`; it is called once per
/// (row, KV head) task, from pool threads, and must not itself use rayon.
pub struct AttnInput<'a, F> {
    pub shape: AttnShape,
    /// (n_rows, q_stride): row `t`'s query heads are `q[t * q_stride..][..n_heads * head_dim]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    pub rows: F,
    /// (slots, n_kv_heads * head_dim) each.
    pub k: &'a KvStore,
    pub v: &'a KvStore,
}

/// f32s of scratch [`paged_attention`] needs when called from here: one task's share per thread
/// of the rayon pool it will run on (whatever the number of rows).
pub fn scratch_len(shape: &AttnShape) -> usize {
    rayon::current_num_threads() * shape.task_scratch()
}

/// Writes each row's attention output, (n_rows, n_heads * head_dim), to `out`; `scratch` holds at
/// least [`scratch_len`] f32s (taken on the same thread). The result of a row depends only on
/// that row's inputs.
pub fn paged_attention<'t, F>(inp: &AttnInput<'_, F>, out: &mut [f32], scratch: &mut [f32])
where
    F: Fn(usize) -> RowKv<'t> + Sync,
{
    paged_attention_isa(Isa::detect(), inp, out, scratch)
}

/// [`paged_attention`] with an explicit instruction set (tests compare paths).
pub fn paged_attention_isa<'t, F>(
    isa: Isa,
    inp: &AttnInput<'_, F>,
    out: &mut [f32],
    scratch: &mut [f32],
) where
    F: Fn(usize) -> RowKv<'t> + Sync,
{
    let sh = &inp.shape;
    let (hd, nkv) = (sh.head_dim, sh.n_kv_heads);
    assert!(
        nkv > 0 && sh.n_heads.is_multiple_of(nkv),
        "attention: GQA groups"
    );
    let q_dim = sh.n_heads * hd;
    assert_eq!(
        out.len() % q_dim.max(1),
        0,
        "attention: out is not (n, q_dim)"
    );
    let n = out.len() / q_dim.max(1);
    assert!(
        n == 0 || inp.q.len() >= (n - 1) * inp.q_stride + q_dim,
        "attention: q"
    );
    assert!(inp.q_stride >= q_dim, "attention: q stride");
    assert_eq!(inp.k.width(), nkv * hd, "attention: K width");
    assert_eq!(inp.v.width(), nkv * hd, "attention: V width");
    let per = sh.task_scratch();
    let threads = rayon::current_num_threads();
    assert!(scratch.len() >= threads * per, "attention: scratch_len");
    let base = SendPtr(scratch.as_mut_ptr());
    let gw = sh.group() * hd;
    out.par_chunks_mut(gw).enumerate().for_each(|(i, o)| {
        let (t, kh) = (i / nkv, i % nkv);
        let me = rayon::current_thread_index().unwrap_or(0);
        assert!(
            me < threads,
            "attention: ran outside the pool it was sized for"
        );
        // SAFETY: each pool thread owns slice `me` of the scratch, and runs one task at a time on
        // it: a task never calls back into rayon, so no other task can start on this thread
        // before it returns. `scratch` outlives the loop.
        let s = unsafe { std::slice::from_raw_parts_mut(base.at(me * per), per) };
        let task = Task {
            sh,
            k: inp.k,
            v: inp.v,
            q: &inp.q[t * inp.q_stride + kh * gw..][..gw],
            row: (inp.rows)(t),
            kh,
        };
        // SAFETY: Avx2 and Avx512Vnni are only detected on CPUs with AVX2, FMA and F16C.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => avx2::task(&task, o, s),
                _ => run::<scalar::Scalar>(&task, o, s),
            }
        }
    });
}

/// The vector operations a task needs, per instruction set.
pub(crate) trait Ops {
    /// `s[g * stride] = scale * q_g · k` for each query head g of `q` (heads of `k.len()`).
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize);
    /// `s = exp(s - mx)` (every `s <= mx`); returns the sum.
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32;
    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for each head g of `out` (heads of
    /// `rows[j].len()`).
    unsafe fn acc(w: &[f32], stride: usize, rows: &[&[f32]], out: &mut [f32]);
    /// y *= a
    unsafe fn scale(a: f32, y: &mut [f32]);
    /// Exact widening of `src` into `dst` (equal lengths).
    unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]);
    /// `dst[32 b + i] = d_b * qs_b[i]`.
    unsafe fn q8_to_f32(src: &[BlockQ8_0], dst: &mut [f32]);
}

/// One (row, KV head) pair.
pub(crate) struct Task<'a, 't> {
    sh: &'a AttnShape,
    k: &'a KvStore,
    v: &'a KvStore,
    /// (group, head_dim) the group's query heads.
    q: &'a [f32],
    row: RowKv<'t>,
    kh: usize,
}

/// KV head `off / head_dim` of row `slot`, as f32: borrowed when stored as f32, else widened into
/// `buf`.
#[inline(always)]
unsafe fn head_row<'b, O: Ops>(
    s: &'b KvStore,
    slot: usize,
    off: usize,
    buf: &'b mut [f32],
) -> &'b [f32] {
    let hd = buf.len();
    let i = slot * s.width() + off;
    match &s.data {
        KvData::F32(v) => &v[i..i + hd],
        KvData::F16(v) => {
            O::f16_to_f32(&v[i..i + hd], buf);
            buf
        }
        KvData::Q8_0(v) => {
            O::q8_to_f32(&v[i / QK8_0..(i + hd) / QK8_0], buf);
            buf
        }
    }
}

/// The hot loop: for each tile of positions, score the tile's K rows against the group's queries,
/// fold the tile into each head's running max and sum (rescaling `out` when the max grows), then
/// add the tile's weighted V rows into `out`. `out`: (group, head_dim); `scratch`:
/// `task_scratch()` f32s.
#[inline(always)]
pub(crate) unsafe fn run<O: Ops>(t: &Task, out: &mut [f32], scratch: &mut [f32]) {
    let (hd, bs) = (t.sh.head_dim, t.sh.block_size);
    let g_n = t.sh.group();
    let (scores, rest) = scratch.split_at_mut(g_n * TILE);
    let (m, rest) = rest.split_at_mut(g_n);
    let (l, rest) = rest.split_at_mut(g_n);
    let (kbuf, rest) = rest.split_at_mut(hd);
    let vtile = &mut rest[..TILE * hd];
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    out.fill(0.0);
    let off = t.kh * hd;
    let (table, ctx) = (t.row.block_table, t.row.ctx);
    let slot = |p: usize| table[p / bs] as usize * bs + p % bs;
    let mut p0 = 0;
    while p0 < ctx {
        let np = TILE.min(ctx - p0);
        for j in 0..np {
            let kr = head_row::<O>(t.k, slot(p0 + j), off, kbuf);
            O::dots(t.q, kr, t.sh.scale, &mut scores[j..], TILE);
        }
        for g in 0..g_n {
            let s = &mut scores[g * TILE..g * TILE + np];
            let mx = s.iter().copied().fold(m[g], f32::max);
            if mx > m[g] {
                let c = (m[g] - mx).exp();
                l[g] *= c;
                O::scale(c, &mut out[g * hd..(g + 1) * hd]);
                m[g] = mx;
            }
            l[g] += O::exp_sum(s, mx);
        }
        // The tile's V rows: borrowed from an f32 pool, else widened into `vtile`.
        let mut rows: [&[f32]; TILE] = [&[]; TILE];
        for (j, buf) in vtile.chunks_exact_mut(hd).take(np).enumerate() {
            rows[j] = head_row::<O>(t.v, slot(p0 + j), off, buf);
        }
        O::acc(scores, TILE, &rows[..np], out);
        p0 += np;
    }
    for g in 0..g_n {
        if l[g] > 0.0 {
            O::scale(1.0 / l[g], &mut out[g * hd..(g + 1) * hd]);
        }
    }
}

#[cfg(test)]
mod tests;
