//! The device operations of [`crate::ops`] on a CUDA device: f32 activations, bf16 product
//! inputs and weights ([`DevMatrix`]), a bf16 K/V pool per layer, the step's inputs staged in a
//! [`DevStep`], each operation one launch of [`super::launch`] (or a cuBLAS GEMM). Nothing here
//! synchronizes or allocates, so a whole forward pass can be captured as a CUDA graph.
//!
//! Extending it (FP8 weights, say): a new [`DevMatrix`] kind and its product in `matmul`; a new
//! step (device sampling) is a kernel, its launcher, and an operation here and in `ops::Ops`.

use half::bf16;

use super::launch::{attention_splits, attention_workspace, AttnArgs, DevMatrix, DevRope, QkvArgs};
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
    /// (rows,) sampling parameters of the logits rows, and their edits (device sampling).
    pub params: View<SampleParams>,
    pub edits: View<Edit>,
    /// (table_cap,) block tables, flattened.
    pub tables: View<i32>,
    /// (rows, dim) the final norm of the logits rows.
    pub last: GpuBuf<bf16>,
    /// Split-K partials of attention for the step sizes that split
    /// ([`super::launch::attention_workspace`]).
    pub attn_part: GpuBuf<f32>,
    /// The device's multiprocessors, which set the split.
    pub multiprocessors: usize,
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
            params: upload.view(gpu, l.params),
            edits: upload.view(gpu, l.edits),
            tables: upload.view(gpu, l.tables),
            upload,
            last: gpu.zeros(caps.rows * dim)?,
        })
    }
}

/// K and V of one layer: (slots, kv_dim) bf16 each.
pub struct DevKv {
    pub k: GpuBuf<bf16>,
    pub v: GpuBuf<bf16>,
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
}

impl Ops for CudaOps<'_> {
    type Act = GpuBuf<f32>;
    type In = GpuBuf<bf16>;
    type Matrix = DevMatrix;
    type Vector = GpuBuf<f32>;
    type Error = Error;

    fn embed(&mut self, table: &DevMatrix, scale: f32, x: &mut GpuBuf<f32>) -> Result<()> {
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

    fn matmul(&mut self, x: &GpuBuf<bf16>, w: &DevMatrix, y: &mut GpuBuf<f32>) -> Result<()> {
        self.gpu.matmul(x, w, y, self.n)
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
        let kv = &mut self.kv[layer];
        self.gpu.qkv_prep(qkv, &a, (&mut kv.k, &mut kv.v), self.n)
    }

    fn attention(
        &mut self,
        layer: usize,
        qkv: &GpuBuf<f32>,
        p: &AttnLayer,
        out: &mut GpuBuf<bf16>,
    ) -> Result<()> {
        let a = AttnArgs {
            heads: p.heads,
            block_size: self.block_size,
            scale: p.scale,
            window: p.window.unwrap_or(0),
            tables: &self.step.tables,
            row_table: &self.step.row_table,
            row_ctx: &self.step.row_ctx,
            splits: attention_splits(self.n, p.heads, self.step.multiprocessors),
        };
        let kv = &self.kv[layer];
        let part = &mut self.step.attn_part;
        self.gpu
            .paged_attention(qkv, (&kv.k, &kv.v), &a, (out, part), self.n)
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
        w: &DevMatrix,
        out: &mut GpuBuf<f32>,
    ) -> Result<()> {
        if self.r == 0 {
            return Ok(());
        }
        let s = &mut *self.step;
        let rows = (&*s.logit_rows, self.r);
        self.gpu
            .norm_rows(x, (&*add.add, add.norm), norm, eps, rows, &mut s.last)?;
        self.gpu.matmul(&s.last, w, out, self.r)
    }
}
