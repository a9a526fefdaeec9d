//! Causal attention of token rows over a paged K/V pool, the pool stored as f32, f16 or Q8_0.
//!
//! Work is split over (rows, KV head): the `n_heads / n_kv_heads` query heads of one GQA group share
//! one pass over their sequence's K and V, and so do up to [`MAX_TASK_ROWS`] consecutive rows of
//! one sequence (a prefill's), each tile of K/V rows widened once for all of them; each row's
//! operations stay those it has alone. Softmax is computed online over tiles of `TILE`
//! positions (flash-attention style), so the only working memory is a fixed slice per pool thread
//! of a scratch buffer the caller owns: nothing grows with the context or the batch, and nothing
//! is allocated per call.
//!
//! A row's context is folded in chunks of [`CHUNK`] positions, each from a fresh softmax state,
//! merged left to right. So when there are too few (row, KV head) tasks to busy the pool (one
//! sequence decoding), the chunks run as tasks of their own and are merged after (flash-decoding),
//! with results bit-identical to the unsplit fold: how a row is computed never depends on the
//! other rows of the batch.
//! f16 and Q8_0 rows are widened to f32 a tile at a time (F16C / AVX2 / AVX-512 on x86-64, NEON
//! on aarch64, the portable conversion elsewhere; all exact). Each row's scores are computed for
//! blocks of positions at once (8 dot products reduced together on x86-64; on AVX-512 from K
//! tiles packed two positions to a 16-lane vector, with AVX2's lanes and reduce tree, so the same
//! bits), and a path may fuse a row's whole tile step ([`Ops::row_tile`]).

mod avx2;
mod avx512;
mod fold;
mod kv;
mod neon;
mod scalar;

pub use kv::{BlockQ8_0, KvDtype, KvStore, QK8_0};

use half::f16;
use rayon::prelude::*;

use fold::{ml_offsets, KTile, Outs, RowStep, Task};

use super::{two_phase, Isa, SendPtr};

/// Positions scored together before their V rows are summed (one rescale of the output per tile).
const TILE: usize = 32;
/// Positions per chunk of a row's context (a multiple of `TILE`).
const CHUNK: usize = 256;
/// Contexts split over threads have at most this many chunks (longer ones run unsplit).
const MAX_SPLIT_CHUNKS: usize = 32;
/// Split chunks into tasks when the batch has fewer (row, KV head) tasks than this per thread.
const SPLIT_BELOW_TASKS_PER_THREAD: usize = 2;
/// At most this many (row, KV head) tasks are split (the chunk offsets live on the stack).
const MAX_SPLIT_TASKS: usize = 64;
/// Rows of one sequence one task serves at most (each tile of K/V rows widened once for them): a
/// 64-token prompt's rows, per KV head.
const MAX_TASK_ROWS: usize = 64;
/// Rows per task below which tasks are not made smaller to busy more threads.
const MIN_TASK_ROWS: usize = 8;
/// (rows, KV head) tasks per pool thread that rows per task are lowered to leave (down to
/// [`MIN_TASK_ROWS`]), so that work stealing evens out tasks of unequal length.
const TASKS_PER_THREAD: usize = 8;

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

    /// f32s of scratch one chunk uses: one row's scores (group, TILE); per task row, running
    /// max and sum (group,) each; a tile of widened K rows and one of V rows (TILE, head_dim)
    /// each.
    fn chunk_scratch(&self) -> usize {
        let g = self.group();
        g * TILE + MAX_TASK_ROWS * g * 2 + 2 * TILE * self.head_dim
    }

    /// f32s of a chunk's result: its unnormalized output (group, head_dim), max and sum (group,).
    fn partial(&self) -> usize {
        self.group() * (self.head_dim + 2)
    }

    /// f32s of scratch one (rows, KV head) task uses: a chunk's, and per task row the output of
    /// the chunk being merged and the merged result's max and sum (one `partial`).
    fn task_scratch(&self) -> usize {
        self.chunk_scratch() + MAX_TASK_ROWS * self.partial()
    }
}

/// Where one row's sequence keeps its K/V, and which of its positions the row attends to:
/// `start..ctx` (a causal row at position p has `ctx = p + 1`; a sliding window of w positions
/// makes `start = ctx - w`).
#[derive(Clone, Copy, Debug)]
pub struct RowKv<'a> {
    /// Physical block of each logical block; covers positions `0..ctx`.
    pub block_table: &'a [u32],
    pub start: usize,
    pub ctx: usize,
}

impl RowKv<'_> {
    /// Positions attended.
    fn span(&self) -> usize {
        self.ctx - self.start.min(self.ctx)
    }

    /// The row limited to its last `window` positions (`None`: all of them).
    pub fn windowed(self, window: Option<usize>) -> Self {
        match window {
            Some(w) => RowKv {
                start: self.start.max(self.ctx.saturating_sub(w)),
                ..self
            },
            None => self,
        }
    }
}

/// The least scratch [`paged_attention`] accepts: with it, a context is never split over threads
/// (the same results, less parallelism when there are few rows).
pub fn scratch_len_unsplit(shape: &AttnShape) -> usize {
    rayon::current_num_threads() * shape.task_scratch()
}

/// The inputs of [`paged_attention`]. `rows(t)` describes row `t`; it is called a few times per
/// row, from pool threads and the calling one, and must not itself use rayon.
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
/// of the rayon pool it will run on (whatever the number of rows), and room for the chunk results
/// of a split context.
pub fn scratch_len(shape: &AttnShape) -> usize {
    let threads = rayon::current_num_threads();
    let split_tasks = (SPLIT_BELOW_TASKS_PER_THREAD * threads).min(MAX_SPLIT_TASKS);
    threads * shape.task_scratch() + split_tasks * MAX_SPLIT_CHUNKS * shape.partial()
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
    let (own, rest) = scratch.split_at_mut(threads * per);
    let base = SendPtr(own.as_mut_ptr());
    let gw = sh.group() * hd;
    let tasks = n * nkv;
    // Rows that read the same K/V rows from the same first position: rows of one sequence.
    let same = |a: &RowKv, b: &RowKv| {
        std::ptr::eq(a.block_table, b.block_table) && a.start.min(a.ctx) == b.start.min(b.ctx)
    };
    // Rows per task: as many as the batch allows while leaving TASKS_PER_THREAD (rows, KV
    // head) tasks per thread. Row t begins a task's rows when it starts its sequence's run or a
    // multiple of `task_rows`; the rows run to the next such row.
    let task_rows = (tasks / (TASKS_PER_THREAD * threads)).clamp(MIN_TASK_ROWS, MAX_TASK_ROWS);
    let leads = |t: usize| {
        t == 0 || t.is_multiple_of(task_rows) || !same(&(inp.rows)(t - 1), &(inp.rows)(t))
    };
    // The task of rows t.. (`tiled`) or of row t alone, KV head kh.
    let task = |t: usize, kh: usize, tiled: bool| {
        let first = (inp.rows)(t);
        let mut tk = Task {
            sh,
            k: inp.k,
            v: inp.v,
            kh,
            table: first.block_table,
            start: first.start.min(first.ctx),
            q: &inp.q[t * inp.q_stride + kh * gw..],
            q_stride: inp.q_stride,
            ctx: [0; MAX_TASK_ROWS],
            n: 0,
        };
        // `leads` on each next row, with each row described once.
        let mut row = first;
        loop {
            tk.ctx[tk.n] = row.ctx;
            tk.n += 1;
            let next = t + tk.n;
            if !tiled || next == n || next.is_multiple_of(task_rows) {
                return tk;
            }
            let r = (inp.rows)(next);
            if !same(&row, &r) {
                return tk;
            }
            row = r;
        }
    };
    let outp = SendPtr(out.as_mut_ptr());
    // This thread's slice of the scratch.
    let mine = || {
        let me = rayon::current_thread_index().unwrap_or(0);
        assert!(
            me < threads,
            "attention: ran outside the pool it was sized for"
        );
        // SAFETY: each pool thread owns slice `me` of the scratch, and runs one task at a time on
        // it: a task never calls back into rayon, so no other task can start on this thread
        // before it returns. `scratch` outlives the loops.
        unsafe { std::slice::from_raw_parts_mut(base.at(me * per), per) }
    };
    // Chunk offsets of a split: task i's chunks are partials off[i]..off[i + 1].
    let mut off = [0usize; MAX_SPLIT_TASKS + 1];
    let split = tasks < SPLIT_BELOW_TASKS_PER_THREAD * threads
        && tasks <= MAX_SPLIT_TASKS
        && (0..tasks).all(|i| {
            let c = (inp.rows)(i / nkv).span().div_ceil(CHUNK).max(1);
            off[i + 1] = off[i] + c;
            c <= MAX_SPLIT_CHUNKS
        })
        && off[tasks] > tasks
        && rest.len() >= off[tasks] * sh.partial();
    if !split {
        (0..tasks).into_par_iter().for_each(|i| {
            let (t, kh) = (i / nkv, i % nkv);
            if !leads(t) {
                return;
            }
            let tk = task(t, kh, true);
            // SAFETY: rows t..t + tk.n of KV head kh are this task's alone, inside `out`.
            let outs = Outs {
                p: unsafe { outp.at(t * q_dim + kh * gw) },
                stride: q_dim,
            };
            // SAFETY: see `run_task`.
            unsafe { run_task(isa, &tk, outs, mine()) }
        });
        return;
    }
    let parts = SendPtr(rest.as_mut_ptr());
    let pw = sh.partial();
    two_phase(
        off[tasks],
        |j| {
            let i = (0..tasks).rfind(|&i| off[i] <= j).unwrap_or(0);
            let c = j - off[i];
            // SAFETY: partial j is this item's alone, inside `rest` (checked above).
            let p = unsafe { std::slice::from_raw_parts_mut(parts.at(j * pw), pw) };
            unsafe { run_chunk(isa, &task(i / nkv, i % nkv, false), c, p, mine()) }
        },
        tasks,
        |i| {
            // SAFETY: every chunk is done (second phase); task i's output and partials are its
            // own.
            let (o, p) = unsafe {
                (
                    std::slice::from_raw_parts_mut(outp.at(i * gw), gw),
                    std::slice::from_raw_parts_mut(
                        parts.at(off[i] * pw),
                        (off[i + 1] - off[i]) * pw,
                    ),
                )
            };
            // The first chunk's max and sum become the running ones.
            let (first, others) = p.split_at_mut(pw);
            let (o0, ml) = first.split_at_mut(gw);
            o.copy_from_slice(o0);
            let (m, l) = ml.split_at_mut(sh.group());
            for pc in others.chunks_exact(pw) {
                let (oc, mlc) = pc.split_at(gw);
                let (mc, lc) = mlc.split_at(sh.group());
                merge(o, m, l, oc, mc, lc, hd);
            }
            // SAFETY: the ISA was detected (as for the chunks).
            unsafe { normalize(isa, o, l, hd) }
        },
    );
}

/// Folds a chunk's result (`oc`, `mc`, `lc`) into the running one (`o`, `m`, `l`): the same
/// operations whether the chunks ran on one thread or many.
fn merge(
    o: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    oc: &[f32],
    mc: &[f32],
    lc: &[f32],
    hd: usize,
) {
    for g in 0..m.len() {
        let mx = m[g].max(mc[g]);
        let (a, b) = ((m[g] - mx).exp(), (mc[g] - mx).exp());
        for (x, y) in o[g * hd..(g + 1) * hd]
            .iter_mut()
            .zip(&oc[g * hd..(g + 1) * hd])
        {
            *x = *x * a + *y * b;
        }
        l[g] = l[g] * a + lc[g] * b;
        m[g] = mx;
    }
}

/// Divides each head's output by its softmax sum (a row with no positions stays zero).
///
/// # Safety
/// `isa` is available.
unsafe fn normalize(isa: Isa, o: &mut [f32], l: &[f32], hd: usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => avx2::normalize(o, l, hd),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => {
            for (g, &l) in l.iter().enumerate() {
                if l > 0.0 {
                    neon::scale(1.0 / l, &mut o[g * hd..(g + 1) * hd]);
                }
            }
        }
        _ => normalize_with::<scalar::Scalar>(o, l, hd),
    }
}

/// [`normalize`] through `O::scale`.
///
/// # Safety
/// `O`'s instruction set is available.
#[inline(always)]
pub(crate) unsafe fn normalize_with<O: Ops>(o: &mut [f32], l: &[f32], hd: usize) {
    for (g, &l) in l.iter().enumerate() {
        if l > 0.0 {
            O::scale(1.0 / l, &mut o[g * hd..(g + 1) * hd]);
        }
    }
}

/// Chunk `c` of the one-row task `t`: its unnormalized output, max and sum into `p`
/// (`partial()` f32s).
///
/// # Safety
/// `isa` is available; `s` holds `task_scratch()` f32s.
unsafe fn run_chunk(isa: Isa, t: &Task, c: usize, p: &mut [f32], s: &mut [f32]) {
    let g = t.sh.group();
    let (o, ml) = p.split_at_mut(g * t.sh.head_dim);
    let outs = Outs {
        p: o.as_mut_ptr(),
        stride: 0,
    };
    chunk_isa(isa, t, c, outs, s);
    let (m, l) = ml_offsets(t.sh, 0);
    ml[..g].copy_from_slice(&s[m..m + g]);
    ml[g..].copy_from_slice(&s[l..l + g]);
}

/// A whole (rows, KV head) task on one thread: each row's chunks folded left to right,
/// normalized, into `outs.at(r)` ((group, head_dim) each).
///
/// # Safety
/// `isa` is available; `s` holds `task_scratch()` f32s; `outs.at(r)` points at
/// `group * head_dim` writable f32s for each row `r < t.n`, none overlapping.
unsafe fn run_task(isa: Isa, t: &Task, outs: Outs, s: &mut [f32]) {
    let (g, hd, pw) = (t.sh.group(), t.sh.head_dim, t.sh.partial());
    let (s, acc) = s.split_at_mut(t.sh.chunk_scratch());
    // Per row, `partial()` f32s: the chunk being merged, then the running max and sum.
    let accp = SendPtr(acc.as_mut_ptr());
    let part = |r: usize| std::slice::from_raw_parts_mut(accp.at(r * pw), pw);
    let ocs = Outs {
        p: accp.at(0),
        stride: pw,
    };
    let chunks = (0..t.n).map(|r| t.chunks(r)).max().unwrap_or(1);
    for c in 0..chunks {
        chunk_isa(isa, t, c, if c == 0 { outs } else { ocs }, s);
        for r in (0..t.n).filter(|&r| c < t.chunks(r)) {
            let (ms, ls) = ml_offsets(t.sh, r);
            let (oc, ml) = part(r).split_at_mut(g * hd);
            let (m, l) = ml.split_at_mut(g);
            if c == 0 {
                m.copy_from_slice(&s[ms..ms + g]);
                l.copy_from_slice(&s[ls..ls + g]);
            } else {
                let o = std::slice::from_raw_parts_mut(outs.at(r), g * hd);
                merge(o, m, l, oc, &s[ms..ms + g], &s[ls..ls + g], hd);
            }
        }
    }
    for r in 0..t.n {
        let l = &part(r)[g * hd + g..];
        normalize(
            isa,
            std::slice::from_raw_parts_mut(outs.at(r), g * hd),
            l,
            hd,
        );
    }
}

/// [`fold::run`] on `isa`'s operations.
///
/// # Safety
/// As [`fold::run`]; `isa` is available.
unsafe fn chunk_isa(isa: Isa, t: &Task, c: usize, outs: Outs, s: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => avx2::chunk(t, c, outs, s),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => avx512::chunk(t, c, outs, s),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => neon::chunk(t, c, outs, s),
        _ => fold::run::<scalar::Scalar>(t, c, outs, s),
    }
}

/// A SIMD path's kernels for `N` (1 to 4) query heads at once, which [`dots_grouped`] and
/// [`acc_grouped`] walk a GQA group through four heads at a time.
pub(crate) trait HeadGroups {
    /// `N` heads of `q` (rows of `k.len()`) against `k`: `s[g * stride] = scale * q_g · k`.
    unsafe fn dots_n<const N: usize>(
        q: *const f32,
        k: &[f32],
        scale: f32,
        s: *mut f32,
        stride: usize,
    );
    /// `out_g += Σ_j w[g * stride + j] * rows[j]` for `N` heads of `out` (rows of `hd`).
    unsafe fn acc_n<const N: usize>(
        w: *const f32,
        stride: usize,
        rows: &[&[f32]],
        out: *mut f32,
        hd: usize,
    );
}

/// [`Ops::dots`] through `H`'s kernels, four query heads at a time.
#[inline(always)]
pub(crate) unsafe fn dots_grouped<H: HeadGroups>(
    q: &[f32],
    k: &[f32],
    scale: f32,
    s: &mut [f32],
    stride: usize,
) {
    let hd = k.len();
    let gn = q.len() / hd;
    assert!(gn == 0 || s.len() > (gn - 1) * stride, "attention: scores");
    let (pq, ps) = (q.as_ptr(), s.as_mut_ptr());
    let mut g = 0;
    while g < gn {
        let (qg, sg) = (pq.add(g * hd), ps.add(g * stride));
        let c = (gn - g).min(4);
        match c {
            4 => H::dots_n::<4>(qg, k, scale, sg, stride),
            3 => H::dots_n::<3>(qg, k, scale, sg, stride),
            2 => H::dots_n::<2>(qg, k, scale, sg, stride),
            _ => H::dots_n::<1>(qg, k, scale, sg, stride),
        }
        g += c;
    }
}

/// [`Ops::acc`] through `H`'s kernels, four query heads at a time.
#[inline(always)]
pub(crate) unsafe fn acc_grouped<H: HeadGroups>(
    w: &[f32],
    stride: usize,
    rows: &[&[f32]],
    out: &mut [f32],
) {
    let Some(hd) = rows.first().map(|r| r.len()) else {
        return;
    };
    let gn = out.len() / hd;
    assert!(
        rows.iter().all(|r| r.len() == hd)
            && (gn == 0 || w.len() >= (gn - 1) * stride + rows.len()),
        "attention: weights and rows"
    );
    let (pw, po) = (w.as_ptr(), out.as_mut_ptr());
    let mut g = 0;
    while g < gn {
        let (wg, og) = (pw.add(g * stride), po.add(g * hd));
        let c = (gn - g).min(4);
        match c {
            4 => H::acc_n::<4>(wg, stride, rows, og, hd),
            3 => H::acc_n::<3>(wg, stride, rows, og, hd),
            2 => H::acc_n::<2>(wg, stride, rows, og, hd),
            _ => H::acc_n::<1>(wg, stride, rows, og, hd),
        }
        g += c;
    }
}

/// The vector operations a task needs, per instruction set.
pub(crate) trait Ops {
    /// `s[g * stride] = scale * q_g · k` for each query head g of `q` (heads of `k.len()`).
    unsafe fn dots(q: &[f32], k: &[f32], scale: f32, s: &mut [f32], stride: usize);
    /// `s[g * stride + j] = scale * q_g · rows[j]` for each query head g of `q` and each row
    /// (`rows.len() <= stride`). Row j's score does not depend on the other rows.
    #[inline(always)]
    unsafe fn scores(q: &[f32], rows: &[&[f32]], scale: f32, s: &mut [f32], stride: usize) {
        for (j, k) in rows.iter().enumerate() {
            Self::dots(q, k, scale, &mut s[j..], stride);
        }
    }
    /// Widens (or copies) the K rows that start at `at` (values into the pool, `hd` each) into
    /// `buf` (TILE * hd f32s) in the layout the path's [`Ops::row_tile`] reads, and returns true; or
    /// returns false, touching nothing, where this path scores K rows as they are (the default)
    /// or cannot pack these.
    #[inline(always)]
    unsafe fn pack_k(k: &KvStore, at: &[usize], hd: usize, buf: &mut [f32]) -> bool {
        let _ = (k, at, hd, buf);
        false
    }
    /// One row's step over one tile (see [`RowStep`]). The default: [`fold::row_tile`] (K rows
    /// as they are).
    #[inline(always)]
    unsafe fn row_tile(k: &KTile, st: RowStep) {
        fold::row_tile::<Self>(k, st)
    }
    /// The largest of `init` and `s` (no NaN among them).
    #[inline(always)]
    unsafe fn max(s: &[f32], init: f32) -> f32 {
        s.iter().copied().fold(init, f32::max)
    }
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

#[cfg(test)]
mod tests;
