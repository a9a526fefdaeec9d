//! One typed function per kernel of [`super::kernels::SOURCE`]: device buffers and shapes in, the
//! sizes checked against the buffers, then the launch with the arguments in the order the CUDA
//! signature lists them. Nothing here synchronizes or allocates, so a forward pass made of these
//! calls can be captured as a CUDA graph. Adding a kernel is adding its source, its name to
//! [`super::kernels::KERNELS`], a field to [`Kernels`] and a function here.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use half::bf16;

use super::kernels::{ATTN_THREADS, MAX_GROUP, MAX_HEAD_DIM, MAX_SPLITS, ROW_THREADS};
use super::sampling::{Edit, SampleParams, POOL};
use super::{Error, Gemm, Gpu, GpuBuf, Result};
use crate::ops::{Activation, Heads};

/// The kernels of one loaded module.
pub(crate) struct Kernels {
    embed_rows: CudaFunction,
    residual_norm: CudaFunction,
    qkv_prep: CudaFunction,
    paged_attention: CudaFunction,
    attention_merge: CudaFunction,
    glu: CudaFunction,
    argmax_rows: CudaFunction,
    sample_rows: CudaFunction,
    pub(super) mask_rows: CudaFunction,
    pub(super) prefill_attention: CudaFunction,
    pub(super) prefill_attention_fp8: CudaFunction,
    pub(super) feed_tokens: CudaFunction,
}

impl Kernels {
    pub(crate) fn load(m: &Arc<CudaModule>) -> Result<Self> {
        let f = |name: &str| m.load_function(name).map_err(Error::from);
        Ok(Self {
            embed_rows: f("embed_rows")?,
            residual_norm: f("residual_norm")?,
            qkv_prep: f("qkv_prep")?,
            paged_attention: f("paged_attention")?,
            attention_merge: f("attention_merge")?,
            glu: f("glu")?,
            argmax_rows: f("argmax_rows")?,
            sample_rows: f("sample_rows")?,
            mask_rows: f("mask_rows")?,
            prefill_attention: f("prefill_attention")?,
            prefill_attention_fp8: f("prefill_attention_fp8")?,
            feed_tokens: f("feed_tokens")?,
        })
    }
}

/// A bf16 matrix (rows, cols) on the device, one row per output feature.
pub struct DevMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: GpuBuf<bf16>,
}

/// The cos and sin of every position under one RoPE, as tables (positions, half) made on the
/// host from [`crate::rope::Rope::angles`], and how it pairs dimensions.
pub struct DevRope {
    pub cos: GpuBuf<f32>,
    pub sin: GpuBuf<f32>,
    pub half: usize,
    pub neox: bool,
    /// Positions the tables cover.
    pub positions: usize,
}

/// What a [`Gpu::qkv_prep`] reads besides the rows.
pub struct QkvArgs<'a> {
    pub heads: Heads,
    pub bias: Option<&'a GpuBuf<f32>>,
    pub q_norm: Option<&'a GpuBuf<f32>>,
    pub k_norm: Option<&'a GpuBuf<f32>>,
    pub eps: f32,
    pub positions: &'a GpuBuf<u32>,
    pub rope: &'a DevRope,
    pub slots: &'a GpuBuf<i64>,
}

/// Where each row of a [`Gpu::paged_attention`] finds its K/V.
pub struct AttnArgs<'a> {
    pub heads: Heads,
    pub block_size: usize,
    pub scale: f32,
    /// 0: attend to every position.
    pub window: usize,
    /// Block tables, flattened; row t's starts at `row_table[t]`.
    pub tables: &'a GpuBuf<i32>,
    pub row_table: &'a GpuBuf<i32>,
    /// Positions row t attends to (its position + 1).
    pub row_ctx: &'a GpuBuf<i32>,
    /// The rows `paged_attention` serves, when not every row of the step: the decode rows of a
    /// step whose prefill chunks go to `prefill_attention` (`super::prefill_attention::AttnPlan`).
    /// `None`: rows 0..n (decode-only steps, captured graphs included).
    pub rows: Option<&'a GpuBuf<i32>>,
    /// Shares each row's positions are split into ([`attention_splits`]); above 1, `part`
    /// holds (n, n_heads, splits, head_dim + 2) f32 partials.
    pub splits: usize,
}

/// Blocks of `paged_attention` per row: one per KV head and group chunk of up to
/// [`MAX_GROUP`] query heads.
pub fn attention_blocks_per_row(h: Heads) -> usize {
    h.n_kv_heads * (h.n_heads / h.n_kv_heads.max(1)).div_ceil(MAX_GROUP)
}

/// Split-K for decode: how many shares each row's positions are split into so that a step of `n`
/// rows launches about two blocks per multiprocessor, at most [`MAX_SPLITS`]; 1 once the rows
/// alone fill the device. It depends on `n` only, so a CUDA graph of a bucket keeps it as its
/// contexts grow.
pub fn attention_splits(n: usize, h: Heads, multiprocessors: usize) -> usize {
    let blocks = (n * attention_blocks_per_row(h)).max(1);
    (2 * multiprocessors).div_ceil(blocks).clamp(1, MAX_SPLITS)
}

/// f32s of the split-K partials a step of up to `rows` rows needs.
pub fn attention_workspace(rows: usize, h: Heads, multiprocessors: usize) -> usize {
    (1..=rows)
        .map(|n| {
            let s = attention_splits(n, h, multiprocessors);
            if s > 1 {
                n * h.n_heads * s * (h.head_dim + 2)
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0)
}

/// One layer's K and V pools as device addresses: bf16 values, or E4M3 codes with their
/// (k_scale, v_scale) ([`super::fp8`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvPtrs {
    pub k: u64,
    pub v: u64,
    /// Elements of each pool.
    pub len: (usize, usize),
    pub fp8_scales: Option<(f32, f32)>,
}

impl AttnArgs<'_> {
    /// What both attention kernels (`paged_attention`, `prefill_attention`) need of `n` rows: a
    /// head shape they handle (GQA groups, 16-byte lanes) and buffers of the step's size.
    pub(super) fn fits(
        &self,
        qkv: &GpuBuf<f32>,
        kv: &KvPtrs,
        out: &GpuBuf<bf16>,
        n: usize,
    ) -> bool {
        let h = self.heads;
        h.head_dim <= MAX_HEAD_DIM
            && h.head_dim.is_multiple_of(8)
            && h.n_kv_heads > 0
            && h.n_heads.is_multiple_of(h.n_kv_heads)
            && qkv.len() >= n * h.qkv_dim()
            && out.len() >= n * h.q_dim()
            && self.row_table.len() >= n
            && self.row_ctx.len() >= n
            && kv.len.0 == kv.len.1
    }
}

/// One `residual_norm` launch: device addresses of x and out, what is added, which rows.
struct NormLaunch<'a> {
    x: u64,
    add: Option<(&'a GpuBuf<f32>, Option<&'a GpuBuf<f32>>)>,
    rows: Option<&'a GpuBuf<i32>>,
    out: u64,
    n: usize,
    write_x: bool,
}

pub(super) fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Memory(format!(
            "{what}: a buffer is smaller than the launch reads"
        )))
    }
}

pub(super) fn grid(x: usize, y: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// A bf16 K/V pair as [`KvPtrs`].
    pub(crate) fn bf16_kv<T>(&self, k: &GpuBuf<T>, v: &GpuBuf<T>) -> KvPtrs {
        KvPtrs {
            k: self.ptr(k),
            v: self.ptr(v),
            len: (k.len(), v.len()),
            fp8_scales: None,
        }
    }

    /// Launches attention kernel `f` (paged or prefill, bf16 or FP8 K/V) with the buffer
    /// addresses `ptrs` and then what every attention signature ends with: the head shape, block
    /// size, scale, window and, for FP8 K/V, the K and V scales.
    ///
    /// # Safety
    /// The caller checked `ptrs`' buffers against the shapes the kernel reads under `cfg`.
    pub(super) unsafe fn launch_attention(
        &self,
        f: &CudaFunction,
        ptrs: &[u64],
        a: &AttnArgs<'_>,
        kv: &KvPtrs,
        cfg: LaunchConfig,
    ) -> Result<()> {
        let h = a.heads;
        let ints = [
            h.n_heads as i32,
            h.n_kv_heads as i32,
            h.head_dim as i32,
            a.block_size as i32,
        ];
        let window = a.window as i32;
        let mut b = self.stream.launch_builder(f);
        for p in ptrs {
            b.arg(p);
        }
        for i in &ints {
            b.arg(i);
        }
        b.arg(&a.scale).arg(&window);
        if let Some((ks, vs)) = &kv.fp8_scales {
            b.arg(ks).arg(vs);
        }
        // SAFETY: the caller's contract above.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    pub(super) fn opt_ptr<T>(&self, b: Option<&GpuBuf<T>>) -> u64 {
        b.map_or(0, |b| self.ptr(b))
    }

    /// `x (n, dim) f32 = table[tokens] * scale`. Every token is below `table.rows` (checked by
    /// the caller when staging).
    pub fn embed_rows(
        &self,
        tokens: &GpuBuf<u32>,
        table: &DevMatrix,
        scale: f32,
        x: &mut GpuBuf<f32>,
        n: usize,
    ) -> Result<()> {
        check(tokens.len() >= n && x.len() >= n * table.cols, "embed_rows")?;
        let (t, e, xp, dim) = (
            self.ptr(tokens),
            self.ptr(&table.data),
            self.ptr(x),
            table.cols as i32,
        );
        let mut b = self.stream.launch_builder(&self.k.embed_rows);
        b.arg(&t).arg(&e).arg(&xp).arg(&dim).arg(&scale);
        // SAFETY: sizes checked above; tokens index rows of the table (the caller's check).
        unsafe { b.launch(grid(n, 1, ROW_THREADS)) }?;
        Ok(())
    }

    /// The residual step before a norm, on the first `n` rows: `x += post ? rms_norm(add) *
    /// post : add` (when `add` is given), then `out (n, dim) bf16 = rms_norm(x) * w`.
    pub fn residual_norm(
        &self,
        x: &mut GpuBuf<f32>,
        add: Option<(&GpuBuf<f32>, Option<&GpuBuf<f32>>)>,
        w: &GpuBuf<f32>,
        eps: f32,
        out: &mut GpuBuf<bf16>,
        n: usize,
    ) -> Result<()> {
        let need = n * w.len();
        check(
            x.len() >= need && out.len() >= need && add.is_none_or(|(a, _)| a.len() >= need),
            "residual_norm",
        )?;
        let l = NormLaunch {
            x: self.ptr(x),
            add,
            rows: None,
            out: self.ptr(out),
            n,
            write_x: true,
        };
        self.launch_residual_norm(&l, w, eps)
    }

    /// The final norm of the rows whose logits are wanted: for output row b, with
    /// `s = rows[b]`, `out[b] bf16 = rms_norm(x[s] + add'[s]) * w`, `add'` as in
    /// [`Self::residual_norm`]; x is left as it is. Every index is a row of x (the caller's
    /// plan).
    pub fn norm_rows(
        &self,
        x: &GpuBuf<f32>,
        add: (&GpuBuf<f32>, Option<&GpuBuf<f32>>),
        w: &GpuBuf<f32>,
        eps: f32,
        (rows, r): (&GpuBuf<i32>, usize),
        out: &mut GpuBuf<bf16>,
    ) -> Result<()> {
        check(
            add.0.len() >= x.len() && out.len() >= r * w.len() && rows.len() >= r,
            "norm_rows",
        )?;
        let l = NormLaunch {
            x: self.ptr(x),
            add: Some(add),
            rows: Some(rows),
            out: self.ptr(out),
            n: r,
            write_x: false,
        };
        self.launch_residual_norm(&l, w, eps)
    }

    fn launch_residual_norm(&self, l: &NormLaunch<'_>, w: &GpuBuf<f32>, eps: f32) -> Result<()> {
        let (add, rows, n) = (l.add, l.rows, l.n);
        let dim = w.len();
        check(
            add.and_then(|a| a.1).is_none_or(|p| p.len() == dim),
            "residual_norm: post-norm width",
        )?;
        let (ap, pp, rp, wp) = (
            self.opt_ptr(add.map(|a| a.0)),
            self.opt_ptr(add.and_then(|a| a.1)),
            self.opt_ptr(rows),
            self.ptr(w),
        );
        let (d, write) = (dim as i32, i32::from(l.write_x));
        let mut b = self.stream.launch_builder(&self.k.residual_norm);
        b.arg(&l.x).arg(&ap).arg(&pp).arg(&rp).arg(&wp).arg(&l.out);
        b.arg(&d).arg(&eps).arg(&write);
        // SAFETY: the public callers checked the sizes; `rows` indices are rows of x.
        unsafe { b.launch(grid(n, 1, ROW_THREADS)) }?;
        Ok(())
    }

    /// Bias, Q/K norms, RoPE and the K/V write of `n` rows of `qkv` (n, qkv_dim) into one
    /// layer's `k`, `v` (slots, kv_dim). Positions are below `rope.positions` and slots inside the
    /// pool (checked by the caller when staging).
    pub fn qkv_prep(
        &self,
        qkv: &mut GpuBuf<f32>,
        a: &QkvArgs<'_>,
        (k, v): (&mut GpuBuf<bf16>, &mut GpuBuf<bf16>),
        n: usize,
    ) -> Result<()> {
        let kv = self.bf16_kv(k, v);
        self.launch_qkv_prep(qkv, a, kv, n)
    }

    /// [`Self::qkv_prep`] into a pool of either kind ([`KvPtrs`]).
    pub(crate) fn launch_qkv_prep(
        &self,
        qkv: &mut GpuBuf<f32>,
        a: &QkvArgs<'_>,
        kv: KvPtrs,
        n: usize,
    ) -> Result<()> {
        let h = a.heads;
        let hd = h.head_dim;
        check(
            qkv.len() >= n * h.qkv_dim()
                && a.positions.len() >= n
                && a.slots.len() >= n
                && a.bias.is_none_or(|b| b.len() == h.qkv_dim())
                && a.q_norm.is_none_or(|w| w.len() == hd)
                && a.k_norm.is_none_or(|w| w.len() == hd)
                && a.rope.cos.len() >= a.rope.positions * a.rope.half
                && 2 * a.rope.half <= hd
                && kv.len.0 == kv.len.1,
            "qkv_prep",
        )?;
        let ptrs = [
            self.ptr(qkv),
            self.opt_ptr(a.bias),
            self.opt_ptr(a.q_norm),
            self.opt_ptr(a.k_norm),
        ];
        let (pos, cos, sin, slots) = (
            self.ptr(a.positions),
            self.ptr(&a.rope.cos),
            self.ptr(&a.rope.sin),
            self.ptr(a.slots),
        );
        let (kp, vp) = (kv.k, kv.v);
        let ints = [
            a.rope.half as i32,
            i32::from(a.rope.neox),
            h.n_heads as i32,
            h.n_kv_heads as i32,
            hd as i32,
        ];
        let f = match kv.fp8_scales {
            None => &self.k.qkv_prep,
            Some(_) => &self.k8.qkv_prep,
        };
        let inv = kv.fp8_scales.map(|(k, v)| (1.0 / k, 1.0 / v));
        let mut b = self.stream.launch_builder(f);
        b.arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&ptrs[2])
            .arg(&ptrs[3])
            .arg(&a.eps);
        b.arg(&pos)
            .arg(&cos)
            .arg(&sin)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&slots);
        b.arg(&kp)
            .arg(&vp)
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&ints[4]);
        if let Some((ki, vi)) = &inv {
            b.arg(ki).arg(vi);
        }
        // SAFETY: sizes checked above; positions and slots were checked against the tables and
        // the pool when staged.
        unsafe { b.launch(grid(n, 1, ROW_THREADS)) }?;
        Ok(())
    }

    /// `out (n, q_dim) bf16`: each row's Q heads of `qkv` attending to its positions of one
    /// layer's `k`, `v`, split `a.splits` ways with partials in `part`. Block tables hold blocks
    /// of the pool (checked when staged). With `a.rows`, `n` rows are served, the ones it lists
    /// (each a row of `qkv` and `out`: the host's plan).
    pub fn paged_attention(
        &self,
        qkv: &GpuBuf<f32>,
        (k, v): (&GpuBuf<bf16>, &GpuBuf<bf16>),
        a: &AttnArgs<'_>,
        (out, part): (&mut GpuBuf<bf16>, &mut GpuBuf<f32>),
        n: usize,
    ) -> Result<()> {
        let kv = self.bf16_kv(k, v);
        self.launch_paged_attention(qkv, kv, a, (out, part), n)
    }

    /// [`Self::paged_attention`] over a pool of either kind ([`KvPtrs`]).
    pub(crate) fn launch_paged_attention(
        &self,
        qkv: &GpuBuf<f32>,
        kv: KvPtrs,
        a: &AttnArgs<'_>,
        (out, part): (&mut GpuBuf<bf16>, &mut GpuBuf<f32>),
        n: usize,
    ) -> Result<()> {
        let h = a.heads;
        let splits = a.splits.max(1);
        check(
            a.fits(qkv, &kv, out, n)
                && splits <= MAX_SPLITS
                && (splits == 1 || part.len() >= n * h.n_heads * splits * (h.head_dim + 2))
                && a.rows.is_none_or(|r| r.len() >= n),
            "paged_attention",
        )?;
        if n == 0 {
            return Ok(());
        }
        let ptrs = [
            self.ptr(qkv),
            kv.k,
            kv.v,
            self.ptr(a.tables),
            self.ptr(a.row_table),
            self.ptr(a.row_ctx),
            self.opt_ptr(a.rows),
            self.ptr(out),
            self.ptr(part),
        ];
        let f = match kv.fp8_scales {
            None => &self.k.paged_attention,
            Some(_) => &self.k8.paged_attention,
        };
        let cfg = LaunchConfig {
            grid_dim: (n as u32, attention_blocks_per_row(h) as u32, splits as u32),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above; tables and contexts were checked against the pool when
        // staged.
        unsafe { self.launch_attention(f, &ptrs, a, &kv, cfg) }?;
        if splits > 1 {
            let (pp, rp, op) = (self.ptr(part), self.opt_ptr(a.rows), self.ptr(out));
            let (nh, hd, sp) = (h.n_heads as i32, h.head_dim as i32, splits as i32);
            let mut b = self.stream.launch_builder(&self.k.attention_merge);
            b.arg(&pp).arg(&rp).arg(&op).arg(&nh).arg(&hd).arg(&sp);
            // SAFETY: `part` holds the partials of every (row, head, split) (checked above).
            unsafe { b.launch(grid(n, h.n_heads, ATTN_THREADS)) }?;
        }
        Ok(())
    }

    /// `out (n, ffn) bf16 = act(gate) * up` of `gu` (n, 2 ffn) f32.
    pub fn glu(
        &self,
        act: Activation,
        gu: &GpuBuf<f32>,
        ffn: usize,
        out: &mut GpuBuf<bf16>,
        n: usize,
    ) -> Result<()> {
        check(gu.len() >= n * 2 * ffn && out.len() >= n * ffn, "glu")?;
        let (g, h) = (self.ptr(gu), self.ptr(out));
        let (nn, f) = (n as i32, ffn as i32);
        let a = match act {
            Activation::Silu => 0i32,
            Activation::GeluTanh => 1,
        };
        let blocks = (n * ffn).div_ceil(ROW_THREADS as usize).clamp(1, 65535);
        let mut b = self.stream.launch_builder(&self.k.glu);
        b.arg(&g).arg(&h).arg(&nn).arg(&f).arg(&a);
        // SAFETY: sizes checked above.
        unsafe { b.launch(grid(blocks, 1, ROW_THREADS)) }?;
        Ok(())
    }

    /// `out[i]` = the argmax of row i of `logits` (r, vocab), lowest id on ties.
    pub fn argmax_rows(
        &self,
        logits: &GpuBuf<f32>,
        vocab: usize,
        out: &mut GpuBuf<u32>,
        r: usize,
    ) -> Result<()> {
        check(logits.len() >= r * vocab && out.len() >= r, "argmax_rows")?;
        let (l, o, v) = (self.ptr(logits), self.ptr(out), vocab as i32);
        let mut b = self.stream.launch_builder(&self.k.argmax_rows);
        b.arg(&l).arg(&o).arg(&v);
        // SAFETY: sizes checked above.
        unsafe { b.launch(grid(r, 1, ROW_THREADS)) }?;
        Ok(())
    }

    /// Samples each of the first `r` rows of `logits` (r, vocab) on the device (see
    /// [`super::sampling`]): `out.0[i]` its token ([`super::sampling::HOST`]: the host's),
    /// `out.1[i]` the token's log-probability when asked. `work` (r, vocab) is scratch. The
    /// caller checked `params` and `edits` ([`super::sampling::check_row_inputs`]).
    pub fn sample_rows(
        &self,
        (logits, vocab): (&GpuBuf<f32>, usize),
        work: &mut GpuBuf<f32>,
        (params, edits): (&GpuBuf<SampleParams>, &GpuBuf<Edit>),
        out: (&mut GpuBuf<u32>, &mut GpuBuf<f32>),
        r: usize,
    ) -> Result<()> {
        check(
            logits.len() >= r * vocab
                && work.len() >= r * vocab
                && params.len() >= r
                && out.0.len() >= r
                && out.1.len() >= r
                && vocab <= i32::MAX as usize,
            "sample_rows",
        )?;
        let ptrs = [
            self.ptr(logits),
            self.ptr(work),
            self.ptr(params),
            self.ptr(edits),
            self.ptr(out.0),
            self.ptr(out.1),
        ];
        let v = vocab as i32;
        let mut b = self.stream.launch_builder(&self.k.sample_rows);
        for p in &ptrs {
            b.arg(p);
        }
        b.arg(&v);
        // SAFETY: sizes checked above; each row's edits lie in `edits` (the caller's check).
        unsafe { b.launch(grid(r, 1, POOL as u32)) }?;
        Ok(())
    }

    /// `y (n, w.rows) f32 = x (n, w.cols) bf16 · wᵀ` on the tensor cores.
    pub fn matmul(
        &self,
        x: &GpuBuf<bf16>,
        w: &DevMatrix,
        y: &mut GpuBuf<f32>,
        n: usize,
    ) -> Result<()> {
        check(
            x.len() >= n * w.cols && y.len() >= n * w.rows && w.data.len() == w.rows * w.cols,
            "matmul",
        )?;
        let g = Gemm {
            x: self.ptr(x),
            w: self.ptr(&w.data),
            y: self.ptr(y),
            n,
            inp: w.cols,
            out: w.rows,
            accumulate: false,
        };
        // SAFETY: the three buffers hold those shapes (checked above).
        unsafe { self.gemm_bf16(g) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H200_SMS: usize = 132;

    fn heads(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Heads {
        Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        }
    }

    #[test]
    fn a_block_serves_a_whole_gqa_group_up_to_max_group() {
        // Llama 3 70B: 64 query heads over 8 KV heads, one block per KV head.
        assert_eq!(attention_blocks_per_row(heads(64, 8, 128)), 8);
        // SmolLM2: 9 over 3.
        assert_eq!(attention_blocks_per_row(heads(9, 3, 64)), 3);
        // A group of 16 takes two blocks per KV head; multi-head attention one per head.
        assert_eq!(attention_blocks_per_row(heads(32, 2, 128)), 4);
        assert_eq!(attention_blocks_per_row(heads(12, 12, 64)), 12);
    }

    #[test]
    fn split_k_fills_the_device_for_small_decode_batches_only() {
        let h = heads(64, 8, 128);
        // One sequence: 8 blocks, split 16 ways (the cap) -> 128 blocks.
        assert_eq!(attention_splits(1, h, H200_SMS), MAX_SPLITS);
        // 4 rows: 32 blocks, 9 shares -> 288 blocks, about two per SM.
        assert_eq!(attention_splits(4, h, H200_SMS), 9);
        // 33 rows and up fill 264 blocks without splitting.
        assert_eq!(attention_splits(33, h, H200_SMS), 1);
        assert_eq!(attention_splits(512, h, H200_SMS), 1);
        for n in 1..300 {
            let s = attention_splits(n, h, H200_SMS);
            assert!((1..=MAX_SPLITS).contains(&s));
            assert!(s == 1 || n * 8 * (s - 1) < 2 * H200_SMS, "{n}: {s}");
        }
        // The workspace holds the largest split step's partials, and is small.
        let ws = attention_workspace(512, h, H200_SMS);
        let most = (1..=512)
            .map(|n| match attention_splits(n, h, H200_SMS) {
                1 => 0,
                s => n * 64 * s * 130,
            })
            .max()
            .unwrap();
        assert_eq!(ws, most);
        assert!(ws * 4 < 8 << 20, "{ws}");
        assert_eq!(attention_workspace(0, h, H200_SMS), 0);
    }
}
