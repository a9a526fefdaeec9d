//! The device operations of [`crate::ops`] on a CUDA device: f32 activations, bf16 product
//! inputs and weights ([`super::launch::DevMatrix`]), a bf16 K/V pool per layer, the step's inputs staged in a
//! [`DevStep`], each operation one launch of [`super::launch`] (or a cuBLAS GEMM). Nothing here
//! synchronizes or allocates, so a whole forward pass can be captured as a CUDA graph.
//!
//! Weights are [`DevWeight`]s: bf16, or FP8 with a scale (products through cuBLASLt, their
//! inputs quantized into the step's [`Fp8Scratch`]). A new step (device sampling) is a kernel,
//! its launcher, and an operation here and in `ops::Ops`.

use half::bf16;

use super::fp8::{DevWeight, Fp8Scratch};
use super::launch::{attention_splits, attention_workspace, AttnArgs, DevRope, KvPtrs, QkvArgs};
use super::prefill_attention::AttnSplit;
use super::sampling::{Edit, SampleParams};
use super::staging::{Caps, StepUpload, View};
use super::{Error, Gpu, GpuBuf, Result};
use crate::ops::{Activation, AttnLayer, Heads, Ops, QkvPrep, Residual};

/// One step's inputs on the device, at fixed addresses (captured graphs replay them), for up to
/// `rows` rows and `table_cap` block-table entries: sections of one buffer filled by one upload
/// per step ([`StepUpload`]).
pub struct DevStep {
    pub rows: usize,
    pub table_cap: usize,
    /// The pinned buffer, its device twin and the offset table of the sections below.
    pub upload: StepUpload,
    /// (rows,)
    pub tokens: View<u32>,
    pub positions: View<u32>,
    /// The pool slot each row's K/V goes to.
    pub slots: View<i64>,
    /// Offset of each row's block table in `tables`.
    pub row_table: View<i32>,
    /// Positions each row attends to (its position + 1).
    pub row_ctx: View<i32>,
    /// Rows whose logits are wanted, in output order.
    pub logit_rows: View<i32>,
    /// (rows,) async scheduling's row map (`super::feed`): where a row's input token comes from.
    pub feed: View<i32>,
    /// (rows,) the tokens the last device-sampled step chose, per logits row, which `feed`
    /// indexes; kept across regrowth (`CudaExecutor` copies them over).
    pub sampled: GpuBuf<u32>,
    /// (rows,) sampling parameters of the logits rows, and their edits (device sampling).
    pub params: View<SampleParams>,
    pub edits: View<Edit>,
    /// (rows, 2) `prefill_attention`'s tiles and (rows,) the rows `paged_attention` serves
    /// beside them, when a step has prefill chunks ([`AttnSplit`]).
    pub tiles: View<i32>,
    pub attn_rows: View<i32>,
    /// (table_cap,) block tables, flattened.
    pub tables: View<i32>,
    /// (rows, dim) the final norm of the logits rows.
    pub last: GpuBuf<bf16>,
    /// Split-K partials of attention for the step sizes that split
    /// ([`super::launch::attention_workspace`]).
    pub attn_part: GpuBuf<f32>,
    /// The device's multiprocessors, which set the split.
    pub multiprocessors: usize,
    /// The quantized input of FP8 products (set when the model has FP8 weights).
    pub fp8: Option<Fp8Scratch>,
}

impl DevStep {
    pub fn new(gpu: &Gpu, caps: Caps, dim: usize, heads: Heads) -> Result<Self> {
        let sms = gpu.info.multiprocessors;
        let upload = StepUpload::new(gpu, caps)?;
        let l = upload.layout;
        Ok(Self {
            attn_part: gpu.zeros(attention_workspace(caps.rows, heads, sms))?,
            multiprocessors: sms,
            rows: caps.rows,
            table_cap: caps.table_cap,
            tokens: upload.view(gpu, l.tokens),
            positions: upload.view(gpu, l.positions),
            slots: upload.view(gpu, l.slots),
            row_table: upload.view(gpu, l.row_table),
            row_ctx: upload.view(gpu, l.row_ctx),
            logit_rows: upload.view(gpu, l.logit_rows),
            feed: upload.view(gpu, l.feed),
            sampled: gpu.zeros(caps.rows.max(1))?,
            params: upload.view(gpu, l.params),
            edits: upload.view(gpu, l.edits),
            tiles: upload.view(gpu, l.tiles),
            attn_rows: upload.view(gpu, l.attn_rows),
            tables: upload.view(gpu, l.tables),
            upload,
            last: gpu.zeros(caps.rows * dim)?,
            fp8: None,
        })
    }
}

/// K and V of one layer: (slots, kv_dim) each, bf16 or E4M3 codes (`--kv-cache-dtype fp8`:
/// one byte per value, `value = code x scale`; the scales are vLLM's `k_scale`/`v_scale`).
pub enum DevKv {
    Bf16 {
        k: GpuBuf<bf16>,
        v: GpuBuf<bf16>,
    },
    Fp8 {
        k: GpuBuf<u8>,
        v: GpuBuf<u8>,
        k_scale: f32,
        v_scale: f32,
    },
}

impl DevKv {
    /// A zeroed layer of `n` values per pool.
    pub fn zeros(gpu: &Gpu, n: usize, fp8: Option<(f32, f32)>) -> Result<Self> {
        Ok(match fp8 {
            None => DevKv::Bf16 {
                k: gpu.zeros(n)?,
                v: gpu.zeros(n)?,
            },
            Some((k_scale, v_scale)) => DevKv::Fp8 {
                k: gpu.zeros(n)?,
                v: gpu.zeros(n)?,
                k_scale,
                v_scale,
            },
        })
    }

    pub(crate) fn ptrs(&self, gpu: &Gpu) -> KvPtrs {
        match self {
            DevKv::Bf16 { k, v } => gpu.bf16_kv(k, v),
            DevKv::Fp8 {
                k,
                v,
                k_scale,
                v_scale,
            } => KvPtrs {
                fp8_scales: Some((*k_scale, *v_scale)),
                ..gpu.bf16_kv(k, v)
            },
        }
    }
}

/// One forward pass on the device over `n` staged rows, `r` of them producing logits.
pub struct CudaOps<'a> {
    pub gpu: &'a Gpu,
    pub n: usize,
    pub r: usize,
    pub step: &'a mut DevStep,
    /// Indexed by `QkvPrep::rope`.
    pub ropes: &'a [DevRope],
    /// Per layer.
    pub kv: &'a mut [DevKv],
    pub block_size: usize,
    /// How attention splits the rows (staged in `step.tiles` and `step.attn_rows`); the default,
    /// no tiles, has `paged_attention` serve all `n` rows (decode steps, captured graphs).
    pub attn: AttnSplit,
}

impl Ops for CudaOps<'_> {
    type Act = GpuBuf<f32>;
    type In = GpuBuf<bf16>;
    type Matrix = DevWeight;
    type Vector = GpuBuf<f32>;
    type Error = Error;

    fn embed(&mut self, table: &DevWeight, scale: f32, x: &mut GpuBuf<f32>) -> Result<()> {
        let DevWeight::Bf16(table) = table else {
            return Err(Error::Memory(
                "the embedding table is looked up in bf16; an FP8 table has no lookup kernel"
                    .into(),
            ));
        };
        self.gpu
            .embed_rows(&self.step.tokens, table, scale, x, self.n)
    }

    fn residual_norm(
        &mut self,
        x: &mut GpuBuf<f32>,
        add: Option<Residual<'_, GpuBuf<f32>, GpuBuf<f32>>>,
        norm: &GpuBuf<f32>,
        eps: f32,
        out: &mut GpuBuf<bf16>,
    ) -> Result<()> {
        let add = add.map(|a| (&*a.add, a.norm));
        self.gpu.residual_norm(x, add, norm, eps, out, self.n)
    }

    fn matmul(&mut self, x: &GpuBuf<bf16>, w: &DevWeight, y: &mut GpuBuf<f32>) -> Result<()> {
        let fp8 = self.step.fp8.as_mut();
        self.gpu.matmul_any(x, w, y, self.n, fp8)
    }

    fn qkv_prep(
        &mut self,
        layer: usize,
        qkv: &mut GpuBuf<f32>,
        p: &QkvPrep<'_, GpuBuf<f32>>,
    ) -> Result<()> {
        let a = QkvArgs {
            heads: p.heads,
            bias: p.bias,
            q_norm: p.q_norm,
            k_norm: p.k_norm,
            eps: p.eps,
            positions: &self.step.positions,
            rope: &self.ropes[p.rope],
            slots: &self.step.slots,
        };
        let kv = self.kv[layer].ptrs(self.gpu);
        self.gpu.launch_qkv_prep(qkv, &a, kv, self.n)
    }

    fn attention(
        &mut self,
        layer: usize,
        qkv: &GpuBuf<f32>,
        p: &AttnLayer,
        out: &mut GpuBuf<bf16>,
    ) -> Result<()> {
        // Prefill chunks' rows by tiles, the others (decode rows) by the decode kernel with
        // split-K over their count; without tiles, every row by the decode kernel.
        let s = &mut *self.step;
        let (paged, rows) = match self.attn.tiles {
            0 => (self.n, None),
            _ => (self.attn.paged_rows, Some(&*s.attn_rows)),
        };
        let a = AttnArgs {
            heads: p.heads,
            block_size: self.block_size,
            scale: p.scale,
            window: p.window.unwrap_or(0),
            tables: &s.tables,
            row_table: &s.row_table,
            row_ctx: &s.row_ctx,
            rows,
            splits: attention_splits(paged, p.heads, s.multiprocessors),
        };
        let kv = self.kv[layer].ptrs(self.gpu);
        let tiles = (&*s.tiles, self.attn.tiles);
        self.gpu
            .launch_prefill_attention(qkv, kv, &a, tiles, out, self.n)?;
        self.gpu
            .launch_paged_attention(qkv, kv, &a, (out, &mut s.attn_part), paged)
    }

    fn glu(
        &mut self,
        act: Activation,
        gu: &GpuBuf<f32>,
        ffn: usize,
        out: &mut GpuBuf<bf16>,
    ) -> Result<()> {
        self.gpu.glu(act, gu, ffn, out, self.n)
    }

    fn logits(
        &mut self,
        x: &GpuBuf<f32>,
        add: Residual<'_, GpuBuf<f32>, GpuBuf<f32>>,
        norm: &GpuBuf<f32>,
        eps: f32,
        w: &DevWeight,
        out: &mut GpuBuf<f32>,
    ) -> Result<()> {
        if self.r == 0 {
            return Ok(());
        }
        let s = &mut *self.step;
        let rows = (&*s.logit_rows, self.r);
        self.gpu
            .norm_rows(x, (&*add.add, add.norm), norm, eps, rows, &mut s.last)?;
        self.gpu.matmul_any(&s.last, w, out, self.r, s.fp8.as_mut())
    }
}
