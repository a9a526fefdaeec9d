//! Tiled attention for prefill chunks: the query rows of a chunk are taken [`TILE_Q`] at a time,
//! and each tile walks its sequence's positions [`TILE_K`] at a time, loading each K/V tile into
//! shared memory once for all of its query rows (the decode kernel, `paged_attention`, loads
//! them once per row), with an online softmax per row (flash attention's recurrence, on the CUDA
//! cores). One block per (tile, query head): 4 warps of [`ROWS_PER_WARP`] rows each; in the
//! score phase lane j holds key position j of the tile (K stored transposed, so the lanes read
//! consecutive values), in the update phase lane j holds dimensions j, j + 32, ... of each row's
//! output.
//!
//! Layouts as `paged_attention`'s (`super::kernels`); a tile never spans two sequences, so its
//! rows share one block table: [`tiles`] lays them out on the host.

use std::ops::Range;

use cudarc::driver::LaunchConfig;
use half::bf16;

use super::launch::{attention_blocks_per_row, check, AttnArgs, KvPtrs};
use super::{Gpu, GpuBuf, Result};
use crate::ops::Heads;

/// Query rows of one tile.
pub const TILE_Q: usize = 16;
/// Key positions loaded into shared memory at a time (one per lane).
pub const TILE_K: usize = 32;
/// Warps of a block; each takes `TILE_Q / PF_WARPS` rows.
pub const PF_WARPS: usize = 4;
pub const ROWS_PER_WARP: usize = TILE_Q / PF_WARPS;

/// The kernel's CUDA C, appended to [`super::kernels::SOURCE`] (it uses `WARP`, `NEG_INF`,
/// `bf16_t`, `bf2f` and `f2bf` from there).
macro_rules! prefill_attention_source {
    () => {
        r#"
#define PF_TILE_Q 16
#define PF_TILE_K 32
#define PF_WARPS 4
#define PF_ROWS (PF_TILE_Q / PF_WARPS)
#define PF_MAX_D 256
#define PF_DPL (PF_MAX_D / WARP)

/* Causal GQA attention of prefill tiles (see prefill_attention.rs). tiles (n_tiles, 2) = first
   row, rows (<= PF_TILE_Q, all of one sequence, consecutive positions). Grid (n_tiles,
   n_heads), PF_WARPS * 32 threads. Reads q from qkv (pre-scaled here by `scale` x k_scale), K/V
   through the first row's block table; writes out (n, q_dim) bf16. head_dim <= PF_MAX_D, a
   multiple of 8. K/V are bf16 (prefill_attention), or E4M3 codes (prefill_attention_fp8) whose
   scales fold into q (k_scale) and the output (v_scale), so the tiles hold the codes as stored.
   Shared memory: q (PF_TILE_Q, head_dim) f32, K transposed (head_dim, PF_TILE_K) and V
   (PF_TILE_K, head_dim): 48 KiB at head_dim 256 in bf16, 32 KiB in E4M3. */
__device__ __forceinline__ float pf_val(bf16_t x) { return bf2f(x); }
__device__ __forceinline__ float pf_val(fp8_t x) { return e4m32f(x); }
/* 8 consecutive K and V values of one position into the tiles (kt: K transposed, at dimension
   d0 of this position's column; vs: V at (position, d0)); zeros where `in` is false. bf16: one
   16-byte load each; E4M3: one 8-byte load each. */
__device__ __forceinline__ void pf_load8(const bf16_t* k, const bf16_t* v, bool in, bf16_t* kt,
                                         bf16_t* vs) {
    uint4 ku = make_uint4(0u, 0u, 0u, 0u), vu = make_uint4(0u, 0u, 0u, 0u);
    if (in) {
        ku = *reinterpret_cast<const uint4*>(k);
        vu = *reinterpret_cast<const uint4*>(v);
    }
    unsigned int kw[4] = {ku.x, ku.y, ku.z, ku.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        kt[(2 * i) * PF_TILE_K] = (bf16_t)(kw[i] & 0xffffu);
        kt[(2 * i + 1) * PF_TILE_K] = (bf16_t)(kw[i] >> 16);
    }
    *reinterpret_cast<uint4*>(vs) = vu;
}
__device__ __forceinline__ void pf_load8(const fp8_t* k, const fp8_t* v, bool in, fp8_t* kt,
                                         fp8_t* vs) {
    uint2 ku = make_uint2(0u, 0u), vu = make_uint2(0u, 0u);
    if (in) {
        ku = *reinterpret_cast<const uint2*>(k);
        vu = *reinterpret_cast<const uint2*>(v);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        kt[i * PF_TILE_K] = (fp8_t)((ku.x >> (8 * i)) & 0xffu);
        kt[(4 + i) * PF_TILE_K] = (fp8_t)((ku.y >> (8 * i)) & 0xffu);
    }
    *reinterpret_cast<uint2*>(vs) = vu;
}
#define PF_PARAMS(KV) const float* __restrict__ qkv, const KV* __restrict__ k_cache, \
    const KV* __restrict__ v_cache, const int* __restrict__ block_tables, \
    const int* __restrict__ row_table, const int* __restrict__ row_ctx, \
    const int* __restrict__ tiles, bf16_t* __restrict__ out, int n_heads, int n_kv_heads, \
    int head_dim, int block_size, float scale, int window
#define PF_ARGS qkv, k_cache, v_cache, block_tables, row_table, row_ctx, tiles, out, n_heads, \
    n_kv_heads, head_dim, block_size, scale, window
template <typename KV>
__device__ __forceinline__ void prefill_attention_t(PF_PARAMS(KV), float k_scale, float v_scale) {
    __shared__ float q_s[PF_TILE_Q * PF_MAX_D];
    __shared__ KV kt_s[PF_MAX_D * PF_TILE_K];
    __shared__ __align__(16) KV v_s[PF_TILE_K * PF_MAX_D];
    int r0 = tiles[2 * blockIdx.x], nr = tiles[2 * blockIdx.x + 1];
    int h = blockIdx.y, kh = h / (n_heads / n_kv_heads);
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    size_t width = (size_t)q_dim + 2 * kv_dim;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    float qs = scale * k_scale;
    for (int i = threadIdx.x; i < PF_TILE_Q * head_dim; i += blockDim.x) {
        int r = i / head_dim, d = i % head_dim;
        q_s[i] = r < nr ? qkv[(size_t)(r0 + r) * width + (size_t)h * head_dim + d] * qs : 0.0f;
    }
    const int* table = block_tables + row_table[r0];
    int first_ctx = row_ctx[r0], last_ctx = row_ctx[r0 + nr - 1];
    int lo = window > 0 && first_ctx > window ? first_ctx - window : 0;

    float m[PF_ROWS], l[PF_ROWS], acc[PF_ROWS][PF_DPL];
    int ctx[PF_ROWS], start[PF_ROWS];
#pragma unroll
    for (int j = 0; j < PF_ROWS; j++) {
        int r = warp * PF_ROWS + j;
        ctx[j] = r < nr ? row_ctx[r0 + r] : 0;
        start[j] = window > 0 && ctx[j] > window ? ctx[j] - window : 0;
        m[j] = NEG_INF;
        l[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < PF_DPL; i++) acc[j][i] = 0.0f;
    }
    int chunks = head_dim / 8;
    for (int kb = lo; kb < last_ctx; kb += PF_TILE_K) {
        __syncthreads();
        /* The K/V tile, K transposed for the score phase. */
        for (int c = threadIdx.x; c < PF_TILE_K * chunks; c += blockDim.x) {
            int p = c / chunks, d0 = (c % chunks) * 8, pos = kb + p;
            bool in = pos < last_ctx;
            size_t at = 0;
            if (in) {
                size_t slot = (size_t)table[pos / block_size] * block_size + pos % block_size;
                at = slot * kv_dim + (size_t)kh * head_dim + d0;
            }
            pf_load8(k_cache + at, v_cache + at, in, kt_s + d0 * PF_TILE_K + p,
                     v_s + p * head_dim + d0);
        }
        __syncthreads();
        int pos = kb + lane;
        float s[PF_ROWS];
#pragma unroll
        for (int j = 0; j < PF_ROWS; j++) s[j] = 0.0f;
        for (int d = 0; d < head_dim; d++) {
            float k = pf_val(kt_s[d * PF_TILE_K + lane]);
#pragma unroll
            for (int j = 0; j < PF_ROWS; j++) s[j] += q_s[(warp * PF_ROWS + j) * head_dim + d] * k;
        }
#pragma unroll
        for (int j = 0; j < PF_ROWS; j++) {
            bool ok = pos >= start[j] && pos < ctx[j];
            float sj = ok ? s[j] : NEG_INF;
            float tmax = sj;
            for (int o = WARP / 2; o > 0; o /= 2) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
            float m_new = fmaxf(m[j], tmax);
            if (m_new == NEG_INF) continue; /* no position of this tile for row j (warp-uniform) */
            float corr = expf(m[j] - m_new);
            float e = ok ? expf(sj - m_new) : 0.0f;
            float esum = e;
            for (int o = WARP / 2; o > 0; o /= 2) esum += __shfl_xor_sync(0xffffffffu, esum, o);
            l[j] = l[j] * corr + esum;
#pragma unroll
            for (int i = 0; i < PF_DPL; i++) acc[j][i] *= corr;
            for (int p = 0; p < PF_TILE_K; p++) {
                float ep = __shfl_sync(0xffffffffu, e, p);
#pragma unroll
                for (int i = 0; i < PF_DPL; i++) {
                    int d = lane + WARP * i;
                    if (d < head_dim) acc[j][i] += ep * pf_val(v_s[p * head_dim + d]);
                }
            }
            m[j] = m_new;
        }
    }
#pragma unroll
    for (int j = 0; j < PF_ROWS; j++) {
        int r = warp * PF_ROWS + j;
        if (r >= nr) continue;
        bf16_t* o = out + (size_t)(r0 + r) * q_dim + (size_t)h * head_dim;
#pragma unroll
        for (int i = 0; i < PF_DPL; i++) {
            int d = lane + WARP * i;
            if (d < head_dim) o[d] = f2bf(l[j] > 0.0f ? acc[j][i] / l[j] * v_scale : 0.0f);
        }
    }
}
extern "C" __global__ void __launch_bounds__(PF_WARPS * WARP) prefill_attention(PF_PARAMS(bf16_t)) {
    prefill_attention_t(PF_ARGS, 1.0f, 1.0f);
}
extern "C" __global__ void __launch_bounds__(PF_WARPS * WARP)
prefill_attention_fp8(PF_PARAMS(fp8_t), float k_scale, float v_scale) {
    prefill_attention_t(PF_ARGS, k_scale, v_scale);
}
"#
    };
}
pub(crate) use prefill_attention_source;

/// The tiles of a batch: for each sequence's rows (consecutive positions), [`TILE_Q`] rows at a
/// time, as (first row, rows) pairs flattened, the layout the kernel reads.
pub fn tiles(seqs: &[Range<usize>]) -> Vec<i32> {
    let mut out = Vec::new();
    push_tiles(seqs.iter().cloned(), &mut out);
    out
}

fn push_tiles(seqs: impl Iterator<Item = Range<usize>>, out: &mut Vec<i32>) {
    for s in seqs {
        let mut r = s.start;
        while r < s.end {
            let n = TILE_Q.min(s.end - r);
            out.extend([r as i32, n as i32]);
            r += n;
        }
    }
}

/// Whether the tiles serve a sequence's `rows` rows of one step with fewer passes over its K/V
/// than `paged_attention`: each tile's blocks (one per query head) read the sequence's K/V once
/// for up to [`TILE_Q`] rows, `paged_attention`'s blocks (per row, KV head and group chunk) once
/// per row. Never for one row (a decode row); from 2 rows without GQA, from 4 with SmolLM2's
/// group of 3, from 9 with Llama 3 70B's group of 8.
pub fn tiles_pay(rows: usize, h: Heads) -> bool {
    rows.div_ceil(TILE_Q) * h.n_heads < rows * attention_blocks_per_row(h)
}

/// How one step's rows are split between the two attention kernels, planned on the host from the
/// step's sequences and staged in its upload (`super::staging::StepLayout`'s `tiles` and
/// `attn_rows`): the rows of prefill chunks whose [`tiles_pay`] go to `prefill_attention`, every
/// other row (decode rows, short chunks) to `paged_attention` with split-K. Reused across steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttnPlan {
    /// (n_tiles, 2) i32 first row, rows of each tile.
    pub tiles: Vec<i32>,
    /// The rows `paged_attention` serves, in order; used only when there are tiles.
    pub paged_rows: Vec<i32>,
}

/// What the attention launches of a planned step need besides the staged lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttnSplit {
    /// Tiles of `prefill_attention` (0: none, and `paged_attention` serves every row).
    pub tiles: usize,
    /// Rows of `paged_attention` when there are tiles (the staged row list's length).
    pub paged_rows: usize,
}

impl AttnPlan {
    /// Plans a step whose sequences have the row ranges `seqs` (consecutive positions each, in
    /// row order, together rows 0..n).
    pub fn plan(&mut self, seqs: impl Iterator<Item = Range<usize>>, h: Heads) {
        self.tiles.clear();
        self.paged_rows.clear();
        for s in seqs {
            if tiles_pay(s.len(), h) {
                push_tiles(std::iter::once(s), &mut self.tiles);
            } else {
                self.paged_rows.extend(s.map(|r| r as i32));
            }
        }
    }

    /// The counts the launches take.
    pub fn split(&self) -> AttnSplit {
        AttnSplit {
            tiles: self.tiles.len() / 2,
            paged_rows: if self.tiles.is_empty() {
                0
            } else {
                self.paged_rows.len()
            },
        }
    }
}

impl Gpu {
    /// Attention of the `n` rows of `qkv` (n, q_dim + 2 kv_dim) covered by `tiles` (see
    /// [`tiles`]; `n_tiles` of them) into `out` (n, q_dim) bf16, over the layer's `k`, `v`,
    /// as [`Gpu::paged_attention`] computes it (`a.splits` and `a.rows` are not used). Block
    /// tables hold blocks of the pool (checked when staged).
    pub fn prefill_attention(
        &self,
        qkv: &GpuBuf<f32>,
        (k, v): (&GpuBuf<bf16>, &GpuBuf<bf16>),
        a: &AttnArgs<'_>,
        tiles: (&GpuBuf<i32>, usize),
        out: &mut GpuBuf<bf16>,
        n: usize,
    ) -> Result<()> {
        self.launch_prefill_attention(qkv, self.bf16_kv(k, v), a, tiles, out, n)
    }

    /// [`Self::prefill_attention`] over a pool of either kind ([`KvPtrs`]).
    pub(crate) fn launch_prefill_attention(
        &self,
        qkv: &GpuBuf<f32>,
        kv: KvPtrs,
        a: &AttnArgs<'_>,
        (tiles, n_tiles): (&GpuBuf<i32>, usize),
        out: &mut GpuBuf<bf16>,
        n: usize,
    ) -> Result<()> {
        let h = a.heads;
        check(
            a.fits(qkv, &kv, out, n) && tiles.len() >= 2 * n_tiles,
            "prefill_attention",
        )?;
        if n_tiles == 0 {
            return Ok(());
        }
        let ptrs = [
            self.ptr(qkv),
            kv.k,
            kv.v,
            self.ptr(a.tables),
            self.ptr(a.row_table),
            self.ptr(a.row_ctx),
            self.ptr(tiles),
            self.ptr(out),
        ];
        let f = match kv.fp8_scales {
            None => &self.k.prefill_attention,
            Some(_) => &self.k.prefill_attention_fp8,
        };
        let cfg = LaunchConfig {
            grid_dim: (n_tiles as u32, h.n_heads as u32, 1),
            block_dim: ((PF_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above; tiles cover rows below `n` of one sequence each (made
        // by `tiles` or `AttnPlan`); tables and contexts were checked against the pool when
        // staged.
        unsafe { self.launch_attention(f, &ptrs, a, &kv, cfg) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::fp8::kv_encode;
    use crate::cuda::kernels::MAX_HEAD_DIM;
    use tokenfab_loader::quant::fp8::e4m3_to_f32;

    fn heads(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Heads {
        Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        }
    }

    #[test]
    fn tiles_cover_each_sequence_without_crossing_one() {
        assert_eq!(tiles(&[3..4, 4..4]), [3, 1]);
        assert_eq!(
            tiles(&[0..40, 40..41, 41..57]),
            [0, 16, 16, 16, 32, 8, 40, 1, 41, 16]
        );
        assert!(tiles(&[]).is_empty());
        let src = super::super::kernels::SOURCE;
        for (name, v) in [
            ("PF_TILE_Q", TILE_Q),
            ("PF_TILE_K", TILE_K),
            ("PF_WARPS", PF_WARPS),
        ] {
            assert!(src.contains(&format!("#define {name} {v}\n")), "{name}");
        }
        assert!(src.contains(&format!("#define PF_MAX_D {MAX_HEAD_DIM}\n")));
    }

    /// Tiles take a chunk once they read its K/V fewer times than the decode kernel would.
    #[test]
    fn tiles_pay_from_the_group_size_on() {
        let first = |h: Heads| (1..100).find(|&r| tiles_pay(r, h)).unwrap();
        assert_eq!(first(heads(4, 4, 64)), 2);
        assert_eq!(first(heads(9, 3, 64)), 4);
        assert_eq!(first(heads(64, 8, 128)), 9);
        // A group of 16 takes two decode blocks per KV head.
        assert_eq!(first(heads(32, 2, 128)), 9);
        for h in [heads(4, 4, 64), heads(64, 8, 128), heads(32, 2, 128)] {
            assert!(!tiles_pay(1, h));
            assert!((first(h)..600).all(|r| tiles_pay(r, h)), "{h:?}");
        }
    }

    /// A step as the kernels see it: per row its context (position + 1) and its sequence's slot
    /// of each position; the pool's K/V as stored (bf16 values, or E4M3 codes' values) with the
    /// scales that multiply them.
    struct Step {
        h: Heads,
        seqs: Vec<Range<usize>>,
        ctx: Vec<usize>,
        slot: Vec<Vec<usize>>,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        kv_scales: (f32, f32),
        scale: f32,
        window: usize,
    }

    fn noise(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Sequences of (first position, rows), each in its own blocks of 4 (in reverse order, so
    /// that reading another sequence's table shows); K/V stored as bf16, or as E4M3 codes of
    /// K / k_scale and V / v_scale.
    fn step(h: Heads, spec: &[(usize, usize)], window: usize, fp8: Option<(f32, f32)>) -> Step {
        let bs = 4;
        let mut seed = 7;
        let (mut seqs, mut ctx, mut slot) = (vec![], vec![], vec![]);
        let (mut row, mut next_block) = (0, 0);
        for &(first, rows) in spec {
            let nb = (first + rows).div_ceil(bs);
            let blocks: Vec<usize> = (0..nb).map(|i| next_block + nb - 1 - i).collect();
            next_block += nb;
            let slots: Vec<usize> = (0..first + rows)
                .map(|p| blocks[p / bs] * bs + p % bs)
                .collect();
            for r in 0..rows {
                ctx.push(first + r + 1);
                slot.push(slots.clone());
            }
            seqs.push(row..row + rows);
            row += rows;
        }
        let kv_len = next_block * bs * h.kv_dim();
        let q = (0..row * h.qkv_dim()).map(|_| noise(&mut seed)).collect();
        let (ks, vs) = fp8.unwrap_or((1.0, 1.0));
        let mut stored = |s: f32| -> Vec<f32> {
            (0..kv_len)
                .map(|_| {
                    let x = 2.0 * noise(&mut seed);
                    match fp8 {
                        Some(_) => e4m3_to_f32(kv_encode(x, 1.0 / s)),
                        None => half::bf16::from_f32(x).to_f32(),
                    }
                })
                .collect()
        };
        let (k, v) = (stored(ks), stored(vs));
        Step {
            h,
            seqs,
            ctx,
            slot,
            q,
            k,
            v,
            kv_scales: (ks, vs),
            scale: 1.0 / (h.head_dim as f32).sqrt(),
            window,
        }
    }

    impl Step {
        fn start(&self, ctx: usize) -> usize {
            if self.window > 0 && ctx > self.window {
                ctx - self.window
            } else {
                0
            }
        }
        fn at(&self, row: usize, pos: usize, kh: usize, d: usize) -> usize {
            self.slot[row][pos] * self.h.kv_dim() + kh * self.h.head_dim + d
        }
        fn q(&self, row: usize, head: usize, d: usize) -> f32 {
            self.q[row * self.h.qkv_dim() + head * self.h.head_dim + d]
        }
        /// Row `t`, head `head`: softmax(q K^T) V over the row's own positions, in f64 with the
        /// scales applied to the stored values.
        fn reference(&self, t: usize, head: usize) -> Vec<f64> {
            let (h, (ks, vs)) = (self.h, self.kv_scales);
            let kh = head / (h.n_heads / h.n_kv_heads);
            let ps = self.start(self.ctx[t])..self.ctx[t];
            let s: Vec<f64> = ps
                .clone()
                .map(|p| {
                    (0..h.head_dim)
                        .map(|d| {
                            let k = self.k[self.at(t, p, kh, d)] as f64 * ks as f64;
                            self.q(t, head, d) as f64 * self.scale as f64 * k
                        })
                        .sum()
                })
                .collect();
            let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = e.iter().sum();
            (0..h.head_dim)
                .map(|d| {
                    ps.clone()
                        .zip(&e)
                        .map(|(p, w)| w * self.v[self.at(t, p, kh, d)] as f64 * vs as f64)
                        .sum::<f64>()
                        / total
                })
                .collect()
        }

        /// The CPU twin of one block of `prefill_attention` (tile `r0`, `nr` rows; head
        /// `head`): the kernel's walk over K/V tiles through the tile's first row's table, its
        /// per-row causal and window masks, its online softmax, its scale folding.
        fn tile(&self, r0: usize, nr: usize, head: usize) -> Vec<Vec<f32>> {
            let (h, (ks, vs)) = (self.h, self.kv_scales);
            let kh = head / (h.n_heads / h.n_kv_heads);
            let qs = self.scale * ks;
            let (first_ctx, last_ctx) = (self.ctx[r0], self.ctx[r0 + nr - 1]);
            let lo = self.start(first_ctx);
            let mut out = Vec::new();
            for r in 0..nr {
                let (ctx, start) = (self.ctx[r0 + r], self.start(self.ctx[r0 + r]));
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                let mut acc = vec![0f32; h.head_dim];
                let mut kb = lo;
                while kb < last_ctx {
                    let ok = |p: usize| kb + p >= start && kb + p < ctx;
                    let s: Vec<f32> = (0..TILE_K)
                        .map(|p| match ok(p) {
                            true => (0..h.head_dim)
                                .map(|d| {
                                    self.q(r0 + r, head, d)
                                        * qs
                                        * self.k[self.at(r0, kb + p, kh, d)]
                                })
                                .sum(),
                            false => f32::NEG_INFINITY,
                        })
                        .collect();
                    let m_new = s.iter().fold(m, |a, &b| a.max(b));
                    if m_new != f32::NEG_INFINITY {
                        let corr = (m - m_new).exp();
                        let e: Vec<f32> = s.iter().map(|&x| (x - m_new).exp()).collect();
                        l = l * corr + e.iter().sum::<f32>();
                        for (d, a) in acc.iter_mut().enumerate() {
                            *a *= corr;
                            for (p, &ep) in e.iter().enumerate().filter(|&(p, _)| ok(p)) {
                                *a += ep * self.v[self.at(r0, kb + p, kh, d)];
                            }
                        }
                        m = m_new;
                    }
                    kb += TILE_K;
                }
                out.push(acc.iter().map(|a| a / l * vs).collect());
            }
            out
        }
    }

    /// A mixed step (prompts, a later chunk, decode rows, short chunks) through the plan: every
    /// row is served exactly once, tiles by the kernel's twin (which reads K/V through the tile's
    /// first row only, so a tile spanning two sequences would show), the rest by the decode
    /// kernel; each row's answer is the f64 attention over its own causal window, with bf16 and
    /// with E4M3 K/V (scales not 1).
    #[test]
    fn a_planned_step_serves_every_row_once_within_its_causal_window() {
        let spec = [(0, 45), (21, 30), (9, 1), (0, 3), (5, 1), (0, 16), (40, 17)];
        for h in [heads(4, 4, 64), heads(9, 3, 64), heads(16, 2, 32)] {
            for window in [0, 5, 40] {
                for fp8 in [None, Some((0.03, 0.011))] {
                    let st = step(h, &spec, window, fp8);
                    let mut plan = AttnPlan::default();
                    plan.plan(st.seqs.iter().cloned(), h);
                    let n = st.ctx.len();
                    let mut served = vec![0; n];
                    let mut worst = 0f64;
                    let mut check = |t: usize, head: usize, got: &[f32]| {
                        let want = st.reference(t, head);
                        let e = got.iter().zip(&want).map(|(&a, b)| (a as f64 - b).abs());
                        worst = e.fold(worst, f64::max);
                    };
                    for tile in plan.tiles.chunks(2) {
                        let (r0, nr) = (tile[0] as usize, tile[1] as usize);
                        assert!((1..=TILE_Q).contains(&nr));
                        let s = st.seqs.iter().find(|s| s.contains(&r0)).unwrap();
                        assert!(r0 + nr <= s.end, "tile {r0}+{nr} leaves {s:?}");
                        for head in 0..h.n_heads {
                            for (r, got) in st.tile(r0, nr, head).iter().enumerate() {
                                check(r0 + r, head, got);
                            }
                        }
                        served[r0..r0 + nr].iter_mut().for_each(|c| *c += 1);
                    }
                    for &t in &plan.paged_rows {
                        let t = t as usize;
                        let s = st.seqs.iter().find(|s| s.contains(&t)).unwrap();
                        assert!(
                            !tiles_pay(s.len(), h),
                            "row {t} of {s:?} went to the decode kernel"
                        );
                        served[t] += 1;
                    }
                    assert!(served.iter().all(|&c| c == 1), "{h:?}: {served:?}");
                    let split = plan.split();
                    assert!(split.tiles > 0 && split.paged_rows == plan.paged_rows.len());
                    assert!(worst < 1e-4, "{h:?} window {window} fp8 {fp8:?}: {worst}");
                }
            }
        }
    }

    /// A decode-only step plans no tiles: `paged_attention` serves rows 0..n with no row list,
    /// the launches a captured graph holds.
    #[test]
    fn decode_steps_keep_the_plain_decode_launch() {
        let mut plan = AttnPlan::default();
        plan.plan((0..5).map(|r| r..r + 1), heads(64, 8, 128));
        assert_eq!(plan.split(), AttnSplit::default());
        // A short chunk among decode rows stays on the decode kernel too.
        plan.plan([0..1, 1..4, 4..5].into_iter(), heads(64, 8, 128));
        assert_eq!(plan.split().tiles, 0);
        // Reuse: a prefill step, then a decode step again.
        plan.plan([0..40, 40..41].into_iter(), heads(64, 8, 128));
        assert_eq!(plan.tiles, [0, 16, 16, 16, 32, 8]);
        assert_eq!(plan.paged_rows, [40]);
        assert_eq!(
            plan.split(),
            AttnSplit {
                tiles: 3,
                paged_rows: 1
            }
        );
        plan.plan(std::iter::once(0..1), heads(64, 8, 128));
        assert_eq!(plan.split(), AttnSplit::default());
    }
}
