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

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::kernels::MAX_HEAD_DIM;
use super::launch::{check, AttnArgs};
use super::{Gpu, GpuBuf, Result};

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
   n_heads), PF_WARPS * 32 threads. Reads q from qkv (pre-scaled here by `scale`), K/V through
   the first row's block table; writes out (n, q_dim) bf16. head_dim <= PF_MAX_D, a multiple of
   8. Shared memory: q (PF_TILE_Q, head_dim) f32, K transposed (head_dim, PF_TILE_K) and V
   (PF_TILE_K, head_dim) bf16: 48 KiB at head_dim 256. */
extern "C" __global__ void __launch_bounds__(PF_WARPS * WARP)
prefill_attention(const float* __restrict__ qkv, const bf16_t* __restrict__ k_cache,
                  const bf16_t* __restrict__ v_cache, const int* __restrict__ block_tables,
                  const int* __restrict__ row_table, const int* __restrict__ row_ctx,
                  const int* __restrict__ tiles, bf16_t* __restrict__ out, int n_heads,
                  int n_kv_heads, int head_dim, int block_size, float scale, int window) {
    __shared__ float q_s[PF_TILE_Q * PF_MAX_D];
    __shared__ bf16_t kt_s[PF_MAX_D * PF_TILE_K];
    __shared__ __align__(16) bf16_t v_s[PF_TILE_K * PF_MAX_D];
    int r0 = tiles[2 * blockIdx.x], nr = tiles[2 * blockIdx.x + 1];
    int h = blockIdx.y, kh = h / (n_heads / n_kv_heads);
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    size_t width = (size_t)q_dim + 2 * kv_dim;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    for (int i = threadIdx.x; i < PF_TILE_Q * head_dim; i += blockDim.x) {
        int r = i / head_dim, d = i % head_dim;
        q_s[i] = r < nr ? qkv[(size_t)(r0 + r) * width + (size_t)h * head_dim + d] * scale : 0.0f;
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
        /* The K/V tile: 16-byte loads, K transposed for the score phase. */
        for (int c = threadIdx.x; c < PF_TILE_K * chunks; c += blockDim.x) {
            int p = c / chunks, d0 = (c % chunks) * 8, pos = kb + p;
            uint4 ku = make_uint4(0u, 0u, 0u, 0u), vu = make_uint4(0u, 0u, 0u, 0u);
            if (pos < last_ctx) {
                size_t slot = (size_t)table[pos / block_size] * block_size + pos % block_size;
                size_t at = slot * kv_dim + (size_t)kh * head_dim + d0;
                ku = *reinterpret_cast<const uint4*>(k_cache + at);
                vu = *reinterpret_cast<const uint4*>(v_cache + at);
            }
            unsigned int kw[4] = {ku.x, ku.y, ku.z, ku.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                kt_s[(d0 + 2 * i) * PF_TILE_K + p] = (bf16_t)(kw[i] & 0xffffu);
                kt_s[(d0 + 2 * i + 1) * PF_TILE_K + p] = (bf16_t)(kw[i] >> 16);
            }
            *reinterpret_cast<uint4*>(v_s + p * head_dim + d0) = vu;
        }
        __syncthreads();
        int pos = kb + lane;
        float s[PF_ROWS];
#pragma unroll
        for (int j = 0; j < PF_ROWS; j++) s[j] = 0.0f;
        for (int d = 0; d < head_dim; d++) {
            float k = bf2f(kt_s[d * PF_TILE_K + lane]);
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
                    if (d < head_dim) acc[j][i] += ep * bf2f(v_s[p * head_dim + d]);
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
            if (d < head_dim) o[d] = f2bf(l[j] > 0.0f ? acc[j][i] / l[j] : 0.0f);
        }
    }
}
"#
    };
}
pub(crate) use prefill_attention_source;

/// The tiles of a batch: for each sequence's rows (consecutive positions), [`TILE_Q`] rows at a
/// time, as (first row, rows) pairs flattened, the layout the kernel reads.
pub fn tiles(seqs: &[Range<usize>]) -> Vec<i32> {
    let mut out = Vec::new();
    for s in seqs {
        let mut r = s.start;
        while r < s.end {
            let n = TILE_Q.min(s.end - r);
            out.extend([r as i32, n as i32]);
            r += n;
        }
    }
    out
}

impl Gpu {
    /// Attention of the `n` rows of `qkv` (n, q_dim + 2 kv_dim) covered by `tiles` (see
    /// [`tiles`]; `n_tiles` of them) into `out` (n, q_dim) bf16, over the layer's `k`, `v`,
    /// as [`Gpu::paged_attention`] computes it (`a.splits` is not used). Block tables hold
    /// blocks of the pool (checked when staged).
    pub fn prefill_attention(
        &self,
        qkv: &GpuBuf<f32>,
        (k, v): (&GpuBuf<bf16>, &GpuBuf<bf16>),
        a: &AttnArgs<'_>,
        (tiles, n_tiles): (&GpuBuf<i32>, usize),
        out: &mut GpuBuf<bf16>,
        n: usize,
    ) -> Result<()> {
        let h = a.heads;
        check(
            h.head_dim <= MAX_HEAD_DIM
                && h.head_dim.is_multiple_of(8)
                && h.n_kv_heads > 0
                && h.n_heads.is_multiple_of(h.n_kv_heads)
                && tiles.len() >= 2 * n_tiles
                && qkv.len() >= n * h.qkv_dim()
                && out.len() >= n * h.q_dim()
                && a.row_table.len() >= n
                && a.row_ctx.len() >= n
                && k.len() == v.len(),
            "prefill_attention",
        )?;
        if n_tiles == 0 {
            return Ok(());
        }
        let ptrs = [
            self.ptr(qkv),
            self.ptr(k),
            self.ptr(v),
            self.ptr(a.tables),
            self.ptr(a.row_table),
            self.ptr(a.row_ctx),
            self.ptr(tiles),
            self.ptr(out),
        ];
        let ints = [
            h.n_heads as i32,
            h.n_kv_heads as i32,
            h.head_dim as i32,
            a.block_size as i32,
        ];
        let window = a.window as i32;
        let mut b = self.stream.launch_builder(&self.k.prefill_attention);
        for p in &ptrs {
            b.arg(p);
        }
        for i in &ints {
            b.arg(i);
        }
        b.arg(&a.scale).arg(&window);
        let cfg = LaunchConfig {
            grid_dim: (n_tiles as u32, h.n_heads as u32, 1),
            block_dim: ((PF_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above; tiles cover rows below `n` of one sequence each (made
        // by `tiles`); tables and contexts were checked against the pool when staged.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
