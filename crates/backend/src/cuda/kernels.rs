//! The device kernels, as CUDA C source compiled once per process by NVRTC for the device's compute
//! capability (see [`super::nvrtc`]). Each kernel has one typed launcher in [`super::launch`] and
//! is named in [`KERNELS`]; the tests check that each name is defined in [`SOURCE`], and compile
//! the source for sm_80 and sm_90 wherever an NVRTC library is found, so a mistake is caught here
//! rather than on a GPU machine.
//!
//! Layouts (row-major, one row per token unless said):
//! - residual stream `x`: f32 (n, dim); product inputs: bf16; product outputs: f32.
//! - `qkv`: f32 (n, q_dim + 2 kv_dim), Q heads then K heads then V heads.
//! - KV pool per layer: bf16 (num_slots, kv_dim), slot = block * block_size + pos % block_size.
//! - block tables: i32, flattened; `row_table[t]` is the offset of row t's table, `row_ctx[t]` the
//!   number of positions it attends to (its position + 1).

/// Names of the `extern "C" __global__` functions in [`SOURCE`], one typed launcher each.
pub const KERNELS: &[&str] = &[
    "embed_rows",
    "residual_norm",
    "qkv_prep",
    "paged_attention",
    "attention_merge",
    "glu",
    "argmax_rows",
    "sample_rows",
    // cuda/fp8.rs
    "fp8_quantize_rows",
    "fp8_scale_rows",
    "dummy_fill",
    "qkv_prep_fp8",
    "paged_attention_fp8",
    "mask_rows",
    "prefill_attention",
    "prefill_attention_fp8",
    // cuda/feed.rs
    "feed_tokens",
];

/// Threads per block of the row kernels (a multiple of 32).
pub const ROW_THREADS: u32 = 256;
/// Threads per block of `paged_attention` (`ATTN_WARPS` warps): sub-groups of lanes split the
/// positions, then merge.
pub const ATTN_THREADS: u32 = 128;
/// Largest head dimension `paged_attention` handles (8 values per lane, 32 lanes per position);
/// head dimensions must be multiples of 8 (16-byte loads).
pub const MAX_HEAD_DIM: usize = 256;
/// Query heads of one GQA group a block of `paged_attention` serves with each K/V load; larger
/// groups take more blocks.
pub const MAX_GROUP: usize = 8;
/// Most shares one context is split into (split-K) for decode batches too small to fill the
/// device.
pub const MAX_SPLITS: usize = 16;

/// The CUDA C source of every kernel: plain CUDA C with no `#include`, so NVRTC needs no headers
/// (bf16 is handled as its 16 bits). The FP8 kernels of [`super::fp8`] are appended.
pub const SOURCE: &str = concat!(
    crate::fp8_helper_source!(),
    r#"
#define WARP 32
#define NEG_INF __int_as_float(0xff800000)
#define ATTN_WARPS 4
#define MAX_GROUP 8
#define ATTN_SMEM_FLOATS (ATTN_WARPS * WARP * 8 * MAX_GROUP)

/* bf16 as its bits (the host's half::bf16 layout), so NVRTC needs no header at all. */
typedef unsigned short bf16_t;
__device__ __forceinline__ float bf2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
/* Round to nearest even, as half::bf16::from_f32 does; NaN stays NaN. */
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total. */
__device__ float block_sum(float v, float* shared32) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t += shared32[i];
    return t;
}

/* x (n, dim) f32 = embd[tokens[t]] (vocab, dim) bf16 * scale. Grid: n blocks. */
extern "C" __global__ void embed_rows(const unsigned int* __restrict__ tokens,
                                      const bf16_t* __restrict__ embd,
                                      float* __restrict__ x, int dim, float scale) {
    size_t t = blockIdx.x;
    const bf16_t* src = embd + (size_t)tokens[t] * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) x[t * dim + j] = bf2f(src[j]) * scale;
}

/* One block per output row b, reading row src = rows ? rows[b] : b of x and add:
   a = add[src] (when add), RMS-normed by post first (when post);
   v = x[src] + a, stored back to x[src] when write_x;
   out[b] (bf16) = v * rsqrt(mean(v^2) + eps) * w.
   The residual step before every norm (Gemma 3's post-norms included), and the final norm of the
   rows whose logits are wanted (write_x = 0). */
extern "C" __global__ void residual_norm(float* __restrict__ x, const float* __restrict__ add,
                                         const float* __restrict__ post,
                                         const int* __restrict__ rows,
                                         const float* __restrict__ w, bf16_t* __restrict__ out,
                                         int dim, float eps, int write_x) {
    __shared__ float red[32];
    size_t b = blockIdx.x;
    size_t src = rows ? (size_t)rows[b] : b;
    float* xr = x + src * dim;
    const float* ar = add ? add + src * dim : 0;
    float pscale = 1.0f;
    if (ar && post) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += ar[j] * ar[j];
        pscale = 1.0f / sqrtf(block_sum(ss, red) / (float)dim + eps);
    }
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (ar) v += post ? ar[j] * pscale * post[j] : ar[j];
        if (write_x) xr[j] = v;
        ss += v * v;
    }
    float scale = 1.0f / sqrtf(block_sum(ss, red) / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        /* The same thread wrote xr[j] above; without write-back the sum is recomputed. */
        float v = xr[j];
        if (ar && !write_x) v += post ? ar[j] * pscale * post[j] : ar[j];
        out[b * dim + j] = f2bf(v * scale * w[j]);
    }
}

/* RMS-norms each of the heads [h0, h1) of row (heads of head_dim) in place by w, one warp per
   head at a time. */
__device__ void norm_heads(float* row, int h0, int h1, int head_dim, const float* w, float eps) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nw = blockDim.x / WARP;
    for (int h = h0 + warp; h < h1; h += nw) {
        float* x = row + (size_t)h * head_dim;
        float ss = 0.0f;
        for (int d = lane; d < head_dim; d += WARP) ss += x[d] * x[d];
        float scale = 1.0f / sqrtf(warp_sum(ss) / (float)head_dim + eps);
        for (int d = lane; d < head_dim; d += WARP) x[d] = x[d] * scale * w[d];
    }
}

/* Per row t (one block each): add the Q/K/V bias (if any), RMS-norm each Q head by q_norm and
   each K head by k_norm (if given), rotate Q and K heads by RoPE with the cos/sin tables
   (positions, half) the host computed once (the CPU's angles exactly), at row t's position, then
   store K and V at slots[t] of the layer's pool: bf16, or E4M3 codes of K / k_scale and V /
   v_scale (an FP8 KV cache, qkv_prep_fp8; k_inv = 1 / k_scale).
   neox = 0: pairs (2i, 2i+1); neox = 1: pairs (i, i + half). */
__device__ __forceinline__ void store_kv(bf16_t* p, float x, float) { *p = f2bf(x); }
__device__ __forceinline__ void store_kv(fp8_t* p, float x, float inv) { *p = (fp8_t)f2e4m3(x * inv); }
#define QKV_PREP_PARAMS(KV) float* __restrict__ qkv, const float* __restrict__ bias, \
    const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps, \
    const unsigned int* __restrict__ positions, const float* __restrict__ cosv, \
    const float* __restrict__ sinv, int half, int neox, const long long* __restrict__ slots, \
    KV* __restrict__ k_cache, KV* __restrict__ v_cache, int n_heads, int n_kv_heads, int head_dim
#define QKV_PREP_ARGS qkv, bias, q_norm, k_norm, eps, positions, cosv, sinv, half, neox, slots, \
    k_cache, v_cache, n_heads, n_kv_heads, head_dim
template <typename KV>
__device__ __forceinline__ void qkv_prep_t(QKV_PREP_PARAMS(KV), float k_inv, float v_inv) {
    size_t t = blockIdx.x;
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    int width = q_dim + 2 * kv_dim;
    float* row = qkv + t * width;
    if (bias) {
        for (int j = threadIdx.x; j < width; j += blockDim.x) row[j] += bias[j];
        __syncthreads();
    }
    if (q_norm || k_norm) {
        if (q_norm) norm_heads(row, 0, n_heads, head_dim, q_norm, eps);
        if (k_norm) norm_heads(row, n_heads, n_heads + n_kv_heads, head_dim, k_norm, eps);
        __syncthreads();
    }
    int pairs = (n_heads + n_kv_heads) * half;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        int head = p / half, i = p % half;
        float* h = row + head * head_dim;
        int a = neox ? i : 2 * i;
        int c = neox ? i + half : 2 * i + 1;
        size_t at = (size_t)positions[t] * half + i;
        float cs = cosv[at], sn = sinv[at];
        float x0 = h[a], x1 = h[c];
        h[a] = x0 * cs - x1 * sn;
        h[c] = x0 * sn + x1 * cs;
    }
    __syncthreads();
    size_t s = (size_t)slots[t] * kv_dim;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        store_kv(&k_cache[s + j], row[q_dim + j], k_inv);
        store_kv(&v_cache[s + j], row[q_dim + kv_dim + j], v_inv);
    }
}
extern "C" __global__ void qkv_prep(QKV_PREP_PARAMS(bf16_t)) {
    qkv_prep_t(QKV_PREP_ARGS, 1.0f, 1.0f);
}

/* 8 bf16 from a 16-byte aligned address (one 16-byte load), as floats; bf16 element 0 is the low
   half of the first word. */
__device__ __forceinline__ void load8(const bf16_t* p, float* f) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    f[0] = __uint_as_float(u.x << 16); f[1] = __uint_as_float(u.x & 0xffff0000u);
    f[2] = __uint_as_float(u.y << 16); f[3] = __uint_as_float(u.y & 0xffff0000u);
    f[4] = __uint_as_float(u.z << 16); f[5] = __uint_as_float(u.z & 0xffff0000u);
    f[6] = __uint_as_float(u.w << 16); f[7] = __uint_as_float(u.w & 0xffff0000u);
}
__device__ __forceinline__ void load8(const bf16_t* p, float* f, float) { load8(p, f); }
/* 8 E4M3 codes from an 8-byte aligned address (one 8-byte load) times the cache's scale. */
__device__ __forceinline__ void load8(const fp8_t* p, float* f, float scale) {
    uint2 u = *reinterpret_cast<const uint2*>(p);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[i] = e4m32f((u.x >> (8 * i)) & 0xffu) * scale;
        f[4 + i] = e4m32f((u.y >> (8 * i)) & 0xffu) * scale;
    }
}

/* Causal GQA attention of row t over positions [start, row_ctx[t]) of its sequence (start =
   row_ctx[t] - window when window > 0, a sliding window), read through its block table.
   Grid (n, n_kv_heads * chunks, splits), ATTN_WARPS * 32 threads; chunks = ceil(group /
   MAX_GROUP), group = n_heads / n_kv_heads. A block takes one KV head and up to MAX_GROUP of its
   query heads, so each K/V row is loaded once for all of them (as the CPU path does). Lanes work
   in sub-groups of lp = head_dim / 8 (rounded up to a power of two): each lane holds 8 dimensions
   and reads them with one 16-byte load; each sub-group takes every nsub-th position with an
   online softmax per query head; the sub-groups merge in shared memory at the end.
   Block x serves row t = rows[x] (a step's decode rows when prefill tiles take its other rows,
   prefill_attention.rs), or row x when rows is null (every decode-only step, graphs included).
   Split-K: block z of gridDim.z takes the z-th share of the positions. With one split the block
   writes out (n, q_dim) bf16; with more it writes its unnormalized partial to part (blocks x,
   n_heads, splits, head_dim + 2) f32 = acc | max | sum, and attention_merge combines them.
   q is pre-scaled by `scale`. K/V are bf16, or E4M3 codes times k_scale / v_scale
   (paged_attention_fp8, 8-byte loads). */
#define ATTN_PARAMS(KV) const float* __restrict__ qkv, const KV* __restrict__ k_cache, \
    const KV* __restrict__ v_cache, const int* __restrict__ block_tables, \
    const int* __restrict__ row_table, const int* __restrict__ row_ctx, \
    const int* __restrict__ rows, bf16_t* __restrict__ out, float* __restrict__ part, \
    int n_heads, int n_kv_heads, int head_dim, int block_size, float scale, int window
#define ATTN_ARGS qkv, k_cache, v_cache, block_tables, row_table, row_ctx, rows, out, part, \
    n_heads, n_kv_heads, head_dim, block_size, scale, window
template <typename KV>
__device__ __forceinline__ void paged_attention_t(ATTN_PARAMS(KV), float k_scale, float v_scale) {
    __shared__ float s_m[ATTN_WARPS * WARP * MAX_GROUP], s_l[ATTN_WARPS * WARP * MAX_GROUP];
    __shared__ float s_acc[ATTN_SMEM_FLOATS];
    size_t b = blockIdx.x, t = rows ? (size_t)rows[b] : b;
    int group = n_heads / n_kv_heads;
    int chunks = (group + MAX_GROUP - 1) / MAX_GROUP;
    int kh = blockIdx.y / chunks, h0 = kh * group + (blockIdx.y % chunks) * MAX_GROUP;
    int G = min(MAX_GROUP, kh * group + group - h0);
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    int width = q_dim + 2 * kv_dim;
    int lp = 1;
    while (lp * 8 < head_dim) lp *= 2;
    int sub = threadIdx.x / lp, nsub = blockDim.x / lp;
    int d0 = (threadIdx.x % lp) * 8;
    bool on = d0 < head_dim;

    float q[MAX_GROUP][8], acc[MAX_GROUP][8], m[MAX_GROUP], l[MAX_GROUP];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
        bool use = on && g < G;
        const float4* src = reinterpret_cast<const float4*>(qkv + t * width + (size_t)(h0 + (use ? g : 0)) * head_dim + (on ? d0 : 0));
        float4 a = use ? src[0] : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 b = use ? src[1] : make_float4(0.f, 0.f, 0.f, 0.f);
        q[g][0] = a.x * scale; q[g][1] = a.y * scale; q[g][2] = a.z * scale; q[g][3] = a.w * scale;
        q[g][4] = b.x * scale; q[g][5] = b.y * scale; q[g][6] = b.z * scale; q[g][7] = b.w * scale;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] = 0.0f;
    }

    int ctx = row_ctx[t];
    int start = window > 0 && ctx > window ? ctx - window : 0;
    int per = (ctx - start + (int)gridDim.z - 1) / (int)gridDim.z;
    int p0 = start + (int)blockIdx.z * per, p1 = min(ctx, p0 + per);
    const int* table = block_tables + row_table[t];
    /* Every lane runs the same iterations (the shuffles need the whole warp); a sub-group past
       p1 skips its position. */
    for (int pb = p0; pb < p1; pb += nsub) {
        int p = pb + sub;
        bool valid = p < p1;
        float k[8], v[8];
        if (valid && on) {
            size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            size_t at = slot * kv_dim + (size_t)kh * head_dim + d0;
            load8(k_cache + at, k, k_scale);
            load8(v_cache + at, v, v_scale);
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) { k[i] = 0.0f; v[i] = 0.0f; }
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) s += q[g][i] * k[i];
            for (int o = lp / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (valid && g < G) {
                float m_new = fmaxf(m[g], s);
                float corr = expf(m[g] - m_new);
                float e = expf(s - m_new);
                l[g] = l[g] * corr + e;
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] = acc[g][i] * corr + e * v[i];
                m[g] = m_new;
            }
        }
    }

    int span = lp * 8;
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        if (d0 == 0) { s_m[sub * MAX_GROUP + g] = m[g]; s_l[sub * MAX_GROUP + g] = l[g]; }
#pragma unroll
        for (int i = 0; i < 8; i++) s_acc[(sub * MAX_GROUP + g) * span + d0 + i] = acc[g][i];
    }
    __syncthreads();
    int splits = gridDim.z;
    for (int idx = threadIdx.x; idx < G * head_dim; idx += blockDim.x) {
        int g = idx / head_dim, d = idx % head_dim;
        float gm = NEG_INF;
        for (int j = 0; j < nsub; j++) gm = fmaxf(gm, s_m[j * MAX_GROUP + g]);
        float o = 0.0f, gl = 0.0f;
        for (int j = 0; j < nsub; j++) {
            float mj = s_m[j * MAX_GROUP + g];
            float f = mj == NEG_INF ? 0.0f : expf(mj - gm);
            gl += s_l[j * MAX_GROUP + g] * f;
            o += s_acc[(j * MAX_GROUP + g) * span + d] * f;
        }
        size_t h = h0 + g;
        if (splits == 1) {
            out[t * q_dim + h * head_dim + d] = f2bf(gl > 0.0f ? o / gl : 0.0f);
        } else {
            float* pp = part + ((b * n_heads + h) * splits + blockIdx.z) * (size_t)(head_dim + 2);
            pp[d] = o;
            if (d == 0) { pp[head_dim] = gm; pp[head_dim + 1] = gl; }
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_WARPS * WARP)
paged_attention(ATTN_PARAMS(bf16_t)) {
    paged_attention_t(ATTN_ARGS, 1.0f, 1.0f);
}

/* out (n, q_dim) bf16: the splits' partials of paged_attention merged, one block per (served
   row, head), grid (blocks, n_heads); block x writes row rows[x] (row x when rows is null). */
extern "C" __global__ void attention_merge(const float* __restrict__ part, const int* __restrict__ rows,
                                           bf16_t* __restrict__ out, int n_heads, int head_dim,
                                           int splits) {
    size_t b = blockIdx.x, h = blockIdx.y, t = rows ? (size_t)rows[b] : b;
    const float* pp = part + (b * n_heads + h) * splits * (size_t)(head_dim + 2);
    float gm = NEG_INF;
    for (int z = 0; z < splits; z++) gm = fmaxf(gm, pp[z * (head_dim + 2) + head_dim]);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f, gl = 0.0f;
        for (int z = 0; z < splits; z++) {
            const float* pz = pp + z * (head_dim + 2);
            float f = pz[head_dim] == NEG_INF ? 0.0f : expf(pz[head_dim] - gm);
            o += pz[d] * f;
            gl += pz[head_dim + 1] * f;
        }
        out[t * n_heads * head_dim + h * head_dim + d] = f2bf(gl > 0.0f ? o / gl : 0.0f);
    }
}

/* h (n, ffn) bf16 = act(gate) * up, gu (n, 2 ffn) f32 = gate | up; act 0: SiLU g / (1 + e^-g),
   act 1: GELU's tanh form as g / (1 + e^-2u), u = sqrt(2/pi) (g + 0.044715 g^3) (the CPU's
   formulas). Grid-stride over n * ffn. */
extern "C" __global__ void glu(const float* __restrict__ gu, bf16_t* __restrict__ h, int n,
                               int ffn, int act) {
    size_t total = (size_t)n * ffn;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / ffn, j = i % ffn;
        float g = gu[t * 2 * ffn + j], u = gu[t * 2 * ffn + ffn + j];
        float z = act ? -2.0f * 0.7978846f * g * (1.0f + 0.044715f * g * g) : -g;
        h[i] = f2bf(g / (1.0f + expf(z)) * u);
    }
}

/* out[r] = index of the largest of logits (rows, vocab) row r; the lowest index wins ties, as
   the host sampler's greedy pick does. One block per row. */
extern "C" __global__ void argmax_rows(const float* __restrict__ logits, unsigned int* __restrict__ out,
                                       int vocab) {
    __shared__ float s_v[1024];
    __shared__ int s_i[1024];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float v = row[j];
        if (v > best || (v == best && j < bi)) { best = v; bi = j; }
    }
    s_v[threadIdx.x] = best;
    s_i[threadIdx.x] = bi;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o /= 2) {
        if (threadIdx.x < o) {
            float v = s_v[threadIdx.x + o];
            int i = s_i[threadIdx.x + o];
            if (v > s_v[threadIdx.x] || (v == s_v[threadIdx.x] && i < s_i[threadIdx.x])) {
                s_v[threadIdx.x] = v;
                s_i[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (unsigned int)(s_i[0] == 0x7fffffff ? 0 : s_i[0]);
}

/* Device sampling (see sampling.rs, whose sample_row is this kernel's CPU twin). */
#define POOL 1024
#define HOST_TOKEN 0xffffffffu
struct SampleParams { float temperature; int top_k; float top_p; float min_p; float u;
                      int edits_start; int edits_len; int want_logprob; };
struct Edit { unsigned int token; float bias; float rep; float sub; };

__device__ float block_max(float v, float* shared32) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % WARP == 0) shared32[threadIdx.x / WARP] = v;
    __syncthreads();
    float t = NEG_INF;
    for (int i = 0; i < (int)blockDim.x / WARP; i++) t = fmaxf(t, shared32[i]);
    return t;
}

/* Exclusive prefix sum of v over the block (in thread order); *total gets the sum. */
__device__ int block_scan(int v, int* shared32, int* total) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int x = v;
    for (int o = 1; o < WARP; o *= 2) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == WARP - 1) shared32[warp] = x;
    __syncthreads();
    int before = 0, all = 0;
    for (int i = 0; i < (int)blockDim.x / WARP; i++) {
        int s = shared32[i];
        if (i < warp) before += s;
        all += s;
    }
    *total = all;
    return before + x - v;
}

/* Whether candidate a comes before b: larger weight first, then lower id. */
__device__ __forceinline__ bool before(float wa, unsigned int ia, float wb, unsigned int ib) {
    return wa > wb || (wa == wb && ia < ib);
}

/* One block of POOL threads per row b of logits (rows, vocab): the row's edits into work (rows,
   vocab), then greedy, or weights, the POOL largest gathered (radix select on the weights' bits,
   ties to lower ids) and sorted, top-k / top-p / min-p and the walk of u * total, as on the CPU.
   tokens[b] = the token, or HOST_TOKEN when the kept set may reach past the pool; logprobs[b] =
   its log-probability under the raw logits when asked. */
extern "C" __global__ void __launch_bounds__(POOL, 1)
sample_rows(const float* __restrict__ logits, float* __restrict__ work,
            const SampleParams* __restrict__ params, const Edit* __restrict__ edits,
            unsigned int* __restrict__ tokens, float* __restrict__ logprobs, int vocab) {
    __shared__ float pool_w[POOL];
    __shared__ unsigned int pool_id[POOL];
    __shared__ float sf[32];
    __shared__ int si[32];
    __shared__ int hist[256];
    __shared__ int s_int[4];
    size_t b = blockIdx.x;
    const SampleParams p = params[b];
    const float* raw = logits + b * vocab;
    float* w = work + b * vocab;
    int tid = threadIdx.x;
    for (int i = tid; i < vocab; i += blockDim.x) w[i] = raw[i];
    __syncthreads();
    for (int e = tid; e < p.edits_len; e += blockDim.x) {
        Edit ed = edits[p.edits_start + e];
        if (ed.token < (unsigned int)vocab) {
            float x = w[ed.token] + ed.bias;
            if (ed.rep != 1.0f) x = x > 0.0f ? x / ed.rep : x * ed.rep;
            w[ed.token] = x - ed.sub;
        }
    }
    __syncthreads();
    float rmax = 0.0f, lse = 0.0f;
    if (p.want_logprob) {
        float m = NEG_INF;
        for (int i = tid; i < vocab; i += blockDim.x) m = fmaxf(m, raw[i]);
        rmax = block_max(m, sf);
        float s = 0.0f;
        for (int i = tid; i < vocab; i += blockDim.x) s += expf(raw[i] - rmax);
        lse = logf(block_sum(s, sf));
    }
    if (p.temperature <= 0.0f || p.top_k == 1) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
        for (int i = tid; i < vocab; i += blockDim.x) {
            if (w[i] > bv) { bv = w[i]; bi = i; }
        }
        for (int o = WARP / 2; o > 0; o /= 2) {
            float v = __shfl_xor_sync(0xffffffffu, bv, o);
            int j = __shfl_xor_sync(0xffffffffu, bi, o);
            if (v > bv || (v == bv && j < bi)) { bv = v; bi = j; }
        }
        __syncthreads();
        if (tid % WARP == 0) { sf[tid / WARP] = bv; si[tid / WARP] = bi; }
        __syncthreads();
        if (tid == 0) {
            for (int i = 1; i < (int)blockDim.x / WARP; i++) {
                if (sf[i] > bv || (sf[i] == bv && si[i] < bi)) { bv = sf[i]; bi = si[i]; }
            }
            unsigned int tok = bi == 0x7fffffff ? 0u : (unsigned int)bi;
            tokens[b] = tok;
            logprobs[b] = p.want_logprob ? raw[tok] - rmax - lse : 0.0f;
        }
        return;
    }
    float m = NEG_INF;
    for (int i = tid; i < vocab; i += blockDim.x) m = fmaxf(m, w[i]);
    float lmax = block_max(m, sf);
    float part = 0.0f;
    for (int i = tid; i < vocab; i += blockDim.x) {
        float x = expf((w[i] - lmax) / p.temperature);
        w[i] = x;
        part += x;
    }
    float all = block_sum(part, sf);
    __syncthreads();

    /* theta: the POOL-th largest weight's bits; need: how many weights equal to theta to take
       (lowest ids first). Weights are >= 0, so their bits order as they do. */
    unsigned int theta = 0, mask = 0;
    int need = POOL;
    if (vocab > POOL) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            if (tid < 256) hist[tid] = 0;
            __syncthreads();
            for (int i = tid; i < vocab; i += blockDim.x) {
                unsigned int bits = __float_as_uint(w[i]);
                if ((bits & mask) == theta) atomicAdd(&hist[(bits >> shift) & 255], 1);
            }
            __syncthreads();
            if (tid == 0) {
                int acc = 0, bin = 255;
                for (; bin > 0; bin--) {
                    if (acc + hist[bin] >= need) break;
                    acc += hist[bin];
                }
                s_int[0] = bin;
                s_int[1] = need - acc;
            }
            __syncthreads();
            theta |= (unsigned int)s_int[0] << shift;
            mask |= 255u << shift;
            need = s_int[1];
            __syncthreads();
        }
    }
    if (tid == 0) { s_int[2] = 0; s_int[3] = 0; }
    __syncthreads();
    for (int base = 0; base < vocab; base += blockDim.x) {
        int i = base + tid;
        int eq_before = s_int[2], pool_before = s_int[3];
        unsigned int bits = i < vocab ? __float_as_uint(w[i]) : 0u;
        int is_eq = vocab > POOL && i < vocab && bits == theta;
        int n_eq, n_take;
        int eq_rank = eq_before + block_scan(is_eq, si, &n_eq);
        int take = i < vocab && (vocab <= POOL || bits > theta || (is_eq && eq_rank < need));
        int at = pool_before + block_scan(take, si, &n_take);
        if (take && at < POOL) { pool_w[at] = w[i]; pool_id[at] = (unsigned int)i; }
        __syncthreads();
        if (tid == 0) { s_int[2] = eq_before + n_eq; s_int[3] = pool_before + n_take; }
        __syncthreads();
    }
    int pool_n = min(s_int[3], POOL);
    if (tid >= pool_n) { pool_w[tid] = -1.0f; pool_id[tid] = HOST_TOKEN; }
    __syncthreads();
    /* Bitonic sort of the pool, first-to-come first. */
    for (int k = 2; k <= POOL; k *= 2) {
        for (int j = k / 2; j > 0; j /= 2) {
            int ixj = tid ^ j;
            if (ixj > tid) {
                float wa = pool_w[tid], wb = pool_w[ixj];
                unsigned int ia = pool_id[tid], ib = pool_id[ixj];
                bool swap = (tid & k) == 0 ? before(wb, ib, wa, ia) : before(wa, ia, wb, ib);
                if (swap) {
                    pool_w[tid] = wb; pool_id[tid] = ib;
                    pool_w[ixj] = wa; pool_id[ixj] = ia;
                }
            }
            __syncthreads();
        }
    }
    if (tid != 0) return;
    int n = pool_n;
    bool inside = pool_n == vocab;
    int k = p.top_k > 0 ? p.top_k : 0;
    if (k > 0 && k < vocab && k <= n) { n = k; inside = true; }
    bool topk_inside = inside, host = false;
    if (p.top_p < 1.0f) {
        if (!topk_inside && k > 0 && k < vocab) {
            host = true;
        } else {
            float total = 0.0f;
            if (topk_inside) {
                for (int i = 0; i < n; i++) total += pool_w[i];
            } else {
                total = all;
            }
            float acc = 0.0f;
            int found = -1;
            for (int i = 0; i < n; i++) {
                acc += pool_w[i] / total;
                if (acc >= p.top_p) { found = i; break; }
            }
            if (found >= 0) { n = found + 1; inside = true; }
            else if (!inside) host = true;
        }
    }
    if (!host && p.min_p > 0.0f) {
        float floor = pool_w[0] * p.min_p;
        int keep = 0;
        while (keep < n && pool_w[keep] >= floor) keep++;
        if (keep < 1) keep = 1;
        if (keep < n || pool_w[n - 1] < floor) inside = true;
        n = keep;
    }
    unsigned int tok = HOST_TOKEN;
    if (!host && inside) {
        float total = 0.0f;
        for (int i = 0; i < n; i++) total += pool_w[i];
        float r = p.u * total;
        tok = pool_id[n - 1];
        for (int i = 0; i < n; i++) {
            if (r < pool_w[i]) { tok = pool_id[i]; break; }
            r -= pool_w[i];
        }
    }
    tokens[b] = tok;
    logprobs[b] = p.want_logprob && tok != HOST_TOKEN ? raw[tok] - rmax - lse : 0.0f;
}
"#,
    crate::fp8_kernel_source!(),
    super::token_mask::token_mask_source!(),
    super::prefill_attention::prefill_attention_source!(),
    super::feed::feed_source!()
);

/// Checks what can be checked without a compiler: braces, parentheses and brackets balance
/// (outside comments and strings), and every name in [`KERNELS`] is defined as an
/// `extern "C" __global__ void` function. Returns the first problem found.
pub fn sanity_check(src: &str, kernels: &[&str]) -> Result<(), String> {
    let mut stack = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    let mut line = 1;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let end = src[i + 2..]
                .find("*/")
                .ok_or(format!("line {line}: unterminated comment"))?;
            line += src[i..i + 2 + end].matches('\n').count();
            i += end + 4;
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            i += src[i..].find('\n').unwrap_or(src.len() - i);
            continue;
        }
        match c {
            b'{' | b'(' | b'[' => stack.push((c, line)),
            b'}' | b')' | b']' => {
                let open = match c {
                    b'}' => b'{',
                    b')' => b'(',
                    _ => b'[',
                };
                match stack.pop() {
                    Some((o, _)) if o == open => {}
                    Some((o, l)) => {
                        return Err(format!(
                            "line {line}: `{}` closes `{}` opened on line {l}",
                            c as char, o as char
                        ))
                    }
                    None => return Err(format!("line {line}: unmatched `{}`", c as char)),
                }
            }
            _ => {}
        }
        i += 1;
    }
    if let Some((o, l)) = stack.pop() {
        return Err(format!(
            "`{}` opened on line {l} is never closed",
            o as char
        ));
    }
    let defined = defined_kernels(src);
    for k in kernels {
        if !defined.iter().any(|d| d == k) {
            return Err(format!("kernel `{k}` is launched but not defined"));
        }
    }
    Ok(())
}

/// Names of the `extern "C" __global__ void` functions defined in `src`.
pub fn defined_kernels(src: &str) -> Vec<String> {
    let key = "extern \"C\" __global__ void ";
    src.match_indices(key)
        .filter_map(|(at, _)| {
            let mut rest = src[at + key.len()..].trim_start();
            // `__launch_bounds__(threads)` may stand between `void` and the name.
            if let Some(r) = rest.strip_prefix("__launch_bounds__") {
                rest = r[r.find(')')? + 1..].trim_start();
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest[name.len()..]
                .trim_start()
                .starts_with('(')
                .then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_well_formed_and_defines_every_launched_kernel() {
        sanity_check(SOURCE, KERNELS).unwrap();
        assert!(!SOURCE.contains("#include"), "NVRTC must need no headers");
        let defined = defined_kernels(SOURCE);
        assert_eq!(defined.len(), KERNELS.len(), "{defined:?}");
    }

    #[test]
    fn sanity_check_catches_mistakes() {
        assert!(sanity_check("void f() { (", &[]).is_err());
        assert!(sanity_check("void f() }", &[]).is_err());
        assert!(sanity_check("void f() { [) }", &[]).is_err());
        let ok = "extern \"C\" __global__ void k1(int a) { /* } */ }";
        sanity_check(ok, &["k1"]).unwrap();
        let bounded = "extern \"C\" __global__ void __launch_bounds__(128)\nk3(int a) {}";
        assert_eq!(defined_kernels(bounded), ["k3"]);
        assert!(sanity_check(ok, &["k2"]).unwrap_err().contains("k2"));
    }

    #[test]
    fn attention_limits_match_the_source() {
        assert!(SOURCE.contains(&format!("#define ATTN_WARPS {}", ATTN_THREADS / 32)));
        assert!(SOURCE.contains(&format!("#define MAX_GROUP {MAX_GROUP}")));
        // 32 lanes of 8 values cover the largest head.
        assert_eq!(MAX_HEAD_DIM, 32 * 8);
        assert!(ROW_THREADS <= 1024 && ROW_THREADS.is_multiple_of(32));
    }
}
