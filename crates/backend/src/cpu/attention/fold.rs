//! The hot loop of attention: one task's rows folded over the K/V positions of one chunk, tile by
//! tile, each tile's K and V rows widened once for every row of the task.

use std::ops::Range;

use super::kv::KvData;
use super::{AttnShape, KvStore, Ops, CHUNK, MAX_TASK_ROWS, QK8_0, TILE};

/// One KV head of up to [`MAX_TASK_ROWS`] rows of one sequence that attend from the same first
/// position (a prefill's consecutive rows; a decode row alone): they read the same K/V rows, up to
/// each one's own context end.
pub(crate) struct Task<'a, 't> {
    pub sh: &'a AttnShape,
    pub k: &'a KvStore,
    pub v: &'a KvStore,
    pub kh: usize,
    /// The sequence's physical block per logical block.
    pub table: &'t [u32],
    /// First position attended.
    pub start: usize,
    /// Row `r`'s GQA group of query heads, (group, head_dim), starts at `q[r * q_stride]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// Rows `0..n`: one past the last position the row attends.
    pub ctx: [usize; MAX_TASK_ROWS],
    pub n: usize,
}

impl Task<'_, '_> {
    /// Row `r`'s query heads, (group, head_dim).
    pub fn q(&self, r: usize) -> &[f32] {
        &self.q[r * self.q_stride..][..self.sh.group() * self.sh.head_dim]
    }

    /// Chunks of row `r`'s span (at least one, empty for an empty span).
    pub fn chunks(&self, r: usize) -> usize {
        (self.ctx[r] - self.start.min(self.ctx[r]))
            .div_ceil(CHUNK)
            .max(1)
    }

    /// Positions of chunk `c` of row `r` (`c < chunks(r)`).
    pub fn chunk(&self, r: usize, c: usize) -> Range<usize> {
        let s = self.start.min(self.ctx[r]);
        s + c * CHUNK..(s + (c + 1) * CHUNK).min(self.ctx[r])
    }
}

/// Where a task's rows write: row `r`'s (group, head_dim) f32s at `p + r * stride`.
#[derive(Clone, Copy)]
pub(crate) struct Outs {
    pub p: *mut f32,
    pub stride: usize,
}

impl Outs {
    /// Row `r`'s output.
    ///
    /// # Safety
    /// Row `r` is inside the allocation `p` points into.
    pub unsafe fn at(self, r: usize) -> *mut f32 {
        self.p.add(r * self.stride)
    }
}

/// Where [`run`] leaves row `r`'s max and sum (group each) in its scratch.
pub(crate) fn ml_offsets(sh: &AttnShape, r: usize) -> (usize, usize) {
    let g = sh.group();
    let m = g * TILE;
    (m + r * g, m + MAX_TASK_ROWS * g + r * g)
}

/// Where the K/V rows of positions `p0..p0 + np` (KV head `t.kh`) start in a pool of `w`-wide
/// rows, in values: the same for K and V.
#[inline(always)]
fn tile_offsets(t: &Task, w: usize, p0: usize, np: usize) -> [usize; TILE] {
    let bs = t.sh.block_size;
    let off = t.kh * t.sh.head_dim;
    let mut at = [0usize; TILE];
    // Slots walked block by block: one division per tile.
    let (mut b, mut o) = (p0 / bs, p0 % bs);
    for a in at.iter_mut().take(np) {
        *a = (t.table[b] as usize * bs + o) * w + off;
        o += 1;
        if o == bs {
            (b, o) = (b + 1, 0);
        }
    }
    at
}

/// The K or V rows starting at `at` (values into the pool), `hd` each, as f32: borrowed from an
/// f32 pool, else widened into `buf` (at.len(), hd).
#[inline(always)]
unsafe fn tile_rows<'b, O: Ops>(
    s: &'b KvStore,
    at: &[usize],
    hd: usize,
    buf: &'b mut [f32],
) -> [&'b [f32]; TILE] {
    let mut rows: [&[f32]; TILE] = [&[]; TILE];
    let mut bufs = buf.chunks_exact_mut(hd);
    for (row, &i) in rows.iter_mut().zip(at) {
        *row = match &s.data {
            KvData::F32(v) => &v[i..i + hd],
            KvData::F16(v) => {
                let dst = bufs.next().unwrap_unchecked();
                O::f16_to_f32(&v[i..i + hd], dst);
                dst
            }
            KvData::Q8_0(v) => {
                let dst = bufs.next().unwrap_unchecked();
                O::q8_to_f32(&v[i / QK8_0..(i + hd) / QK8_0], dst);
                dst
            }
        };
    }
    rows
}

/// Asks the cache for the K or V rows of positions `p0..p0 + np` (KV head `t.kh`) ahead of their
/// use: a decode step reads every row of its contexts once, from memory, and its loads would
/// otherwise wait one tile at a time. No effect on results; nothing off x86-64.
#[inline(always)]
unsafe fn prefetch_rows(s: &KvStore, t: &Task, p0: usize, np: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (base, bytes): (*const i8, usize) = match &s.data {
            KvData::F32(v) => (v.as_ptr().cast(), 4),
            KvData::F16(v) => (v.as_ptr().cast(), 2),
            KvData::Q8_0(v) => (v.as_ptr().cast(), 0),
        };
        let row_bytes = s.dtype().row_bytes(t.sh.head_dim);
        for &i in &tile_offsets(t, s.width(), p0, np)[..np] {
            let at = if bytes == 0 {
                i / QK8_0 * std::mem::size_of::<super::BlockQ8_0>()
            } else {
                i * bytes
            };
            let p = base.add(at);
            let mut x = 0;
            while x < row_bytes {
                _mm_prefetch::<_MM_HINT_T0>(p.add(x));
                x += 64;
            }
            _mm_prefetch::<_MM_HINT_T0>(p.add(row_bytes - 1));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, t, p0, np);
}

/// Asks the cache for `x`'s lines (nothing off x86-64).
#[inline(always)]
fn prefetch_f32s(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for i in (0..x.len()).step_by(16) {
            // SAFETY: a prefetch of an address inside `x`; it reads nothing.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(i).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Chunk `c` of every row of `t` that has one, each from a fresh softmax state: for each tile of
/// positions, the tile's K and V rows are widened once (K packed as `O::pack_k` lays it out,
/// where the path packs it), then each row's query heads are scored against the K rows, folded
/// into each head's running max and sum (rescaling the row's output when the max grows), and the
/// V rows added, weighted, into the row's output. A row's operations are those it would have
/// alone: its tiles start at the chunk's first position and stop at its own end. `outs.at(r)`:
/// row r's output, (group, head_dim), left unnormalized; `scratch`: `chunk_scratch()` f32s,
/// where [`ml_offsets`] finds each row's max and sum on return.
///
/// # Safety
/// `O`'s instruction set is available; `outs.at(r)` points at `group * head_dim` writable f32s
/// for every row `r < t.n` with `c < t.chunks(r)`, none overlapping.
#[inline(always)]
pub(crate) unsafe fn run<O: Ops>(t: &Task, c: usize, outs: Outs, scratch: &mut [f32]) {
    let (hd, g_n, w) = (t.sh.head_dim, t.sh.group(), t.k.width());
    // One row's scores at a time (group, TILE).
    let (scores, rest) = scratch.split_at_mut(g_n * TILE);
    let (m, rest) = rest.split_at_mut(MAX_TASK_ROWS * g_n);
    let (l, rest) = rest.split_at_mut(MAX_TASK_ROWS * g_n);
    let (ktile, rest) = rest.split_at_mut(TILE * hd);
    let vtile = &mut rest[..TILE * hd];
    // Row r's positions in this chunk (empty past its chunks); the tiles cover the longest.
    let span = |r: usize| {
        if c < t.chunks(r) {
            t.chunk(r, c)
        } else {
            0..0
        }
    };
    let (mut lo, mut hi) = (usize::MAX, 0);
    for r in 0..t.n {
        if c < t.chunks(r) {
            m[r * g_n..(r + 1) * g_n].fill(f32::NEG_INFINITY);
            l[r * g_n..(r + 1) * g_n].fill(0.0);
            let sp = span(r);
            if sp.is_empty() {
                // No tile writes it.
                std::slice::from_raw_parts_mut(outs.at(r), g_n * hd).fill(0.0);
            } else {
                lo = lo.min(sp.start);
                hi = hi.max(sp.end);
            }
        }
    }
    let mut p0 = lo;
    if p0 < hi {
        // The first tile's V rows, widened after its K rows.
        prefetch_rows(t.v, t, p0, TILE.min(hi - p0));
    }
    while p0 < hi {
        let np = TILE.min(hi - p0);
        // The next tile's K and V rows, a tile's work ahead.
        let next = TILE.min(hi - p0 - np);
        prefetch_rows(t.k, t, p0 + np, next);
        prefetch_rows(t.v, t, p0 + np, next);
        let at = tile_offsets(t, w, p0, np);
        let krows;
        let ktile = if O::pack_k(t.k, &at[..np], hd, ktile) {
            KTile::Packed(ktile)
        } else {
            krows = tile_rows::<O>(t.k, &at[..np], hd, ktile);
            KTile::Rows(&krows[..np])
        };
        let vrows = tile_rows::<O>(t.v, &at[..np], hd, vtile);
        for r in 0..t.n {
            let sp = span(r);
            let npr = sp.end.saturating_sub(p0).min(np);
            if npr > 0 {
                // The next rows' queries and outputs, a row's work ahead of their use (a
                // prefill's are read from memory once per task).
                if r + 2 < t.n {
                    prefetch_f32s(t.q(r + 2));
                    prefetch_f32s(std::slice::from_raw_parts(outs.at(r + 2), g_n * hd));
                }
                let step = RowStep {
                    vrows: &vrows[..npr],
                    q: t.q(r),
                    scale: t.sh.scale,
                    scores: &mut *scores,
                    m: &mut m[r * g_n..(r + 1) * g_n],
                    l: &mut l[r * g_n..(r + 1) * g_n],
                    out: std::slice::from_raw_parts_mut(outs.at(r), g_n * hd),
                    first: p0 <= sp.start,
                };
                O::row_tile(&ktile, step);
            }
        }
        p0 += np;
    }
}

/// A tile's K rows as [`Ops::row_tile`] gets them.
pub(crate) enum KTile<'a> {
    /// One row of head_dim per position.
    Rows(&'a [&'a [f32]]),
    /// Laid out by the path's [`Ops::pack_k`].
    Packed(&'a [f32]),
}

/// One row's step over one tile of `vrows.len()` positions, as [`Ops::row_tile`] gets it: the
/// row's query heads `q` (group, head_dim) scored against the tile's K rows, each head's running
/// max `m[g]` and sum `l[g]` updated (its output `out[g]` rescaled when the max grows), the V rows
/// added, weighted, into `out` (group, head_dim).
pub(crate) struct RowStep<'a> {
    pub vrows: &'a [&'a [f32]],
    pub q: &'a [f32],
    pub scale: f32,
    /// (group, TILE) f32s of scratch.
    pub scores: &'a mut [f32],
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
    pub out: &'a mut [f32],
    /// The row's first tile of the chunk: `m` is -inf, `l` zero, and `out` holds garbage to be
    /// taken as zeros.
    pub first: bool,
}

/// [`Ops::row_tile`] through the path's [`Ops::scores`], [`Ops::max`], [`Ops::exp_sum`],
/// [`Ops::scale`] and [`Ops::acc`].
///
/// # Safety
/// `O`'s instruction set is available.
#[inline(always)]
pub(crate) unsafe fn row_tile<O: Ops + ?Sized>(k: &KTile, st: RowStep) {
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
    let KTile::Rows(krows) = k else {
        unreachable!("attention: packed K on a path that does not pack");
    };
    if first {
        out.fill(0.0);
    }
    let np = vrows.len();
    let hd = out.len() / m.len();
    O::scores(q, &krows[..np], scale, scores, TILE);
    for g in 0..m.len() {
        let (m, l) = (&mut m[g], &mut l[g]);
        let s = &mut scores[g * TILE..g * TILE + np];
        let mx = O::max(s, *m);
        if mx > *m {
            // Nothing to rescale while the max is -inf: the output and sum are still zero.
            if *m != f32::NEG_INFINITY {
                let c = (*m - mx).exp();
                *l *= c;
                O::scale(c, &mut out[g * hd..(g + 1) * hd]);
            }
            *m = mx;
        }
        *l += O::exp_sum(s, mx);
    }
    O::acc(scores, TILE, vrows, out);
}
