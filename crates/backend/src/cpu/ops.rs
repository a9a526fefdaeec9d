//! The device operations of [`crate::ops`] on the CPU: host buffers (`Vec<f32>`, only the first
//! `n` rows of which belong to the step), [`Weight`] matrices, the K/V pool as one [`KvStore`]
//! pair per layer, and the kernels of this module. Nothing here allocates once the caller's
//! buffers and the [`CpuScratch`] have seen a step of the same size.

use std::collections::HashMap;
use std::convert::Infallible;
use std::mem::size_of;

use tokenfab_types::TokenId;

use super::attention::{self, AttnInput, AttnShape, KvStore, RowKv};
use super::{add_rms_norm, glu_rows, rms_norm, rms_norm_in_place, rope_isa, Isa, Weight, PAR_ROWS};
use crate::ops::{Activation, AttnLayer, Ops, QkvPrep, Residual, Rope};

/// One step's rows, as the host has them.
#[derive(Clone, Copy)]
pub struct CpuStep<'a> {
    /// (n,) token ids.
    pub tokens: &'a [TokenId],
    /// (n,) position of each row in its sequence.
    pub positions: &'a [u32],
    /// (n,) the pool slot each row's K/V goes to.
    pub slots: &'a [usize],
    /// Rows whose logits are wanted, in output order.
    pub logits_rows: &'a [usize],
    /// Row t's block table and the positions it attends to (before any sliding window).
    pub rows: &'a (dyn Fn(usize) -> RowKv<'a> + Sync),
}

/// Working memory of the CPU operations, kept across steps (it grows, never shrinks).
#[derive(Default)]
pub struct CpuScratch {
    /// (ropes, m, half): cos and sin of each of the step's m distinct positions under each RoPE
    /// (a prefill of many prompts repeats positions: each is computed once).
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// (m,) the distinct positions in order of first appearance, the index of each, and (n,)
    /// each row's index among them.
    distinct: Vec<u32>,
    pos_index: HashMap<u32, usize>,
    angle_of: Vec<usize>,
    /// Per pool thread: attention's online-softmax state (`attention::scratch_len`).
    attn: Vec<f32>,
    /// Whether the step's slots are all different (rows then write K/V in parallel), and the
    /// sorted copy of them that says so.
    distinct_slots: bool,
    sorted_slots: Vec<usize>,
    /// (r, dim): the logits rows' residual, then its final norm.
    resid: Vec<f32>,
    last: Vec<f32>,
}

impl CpuScratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        [&self.cos, &self.sin, &self.attn, &self.resid, &self.last]
            .iter()
            .map(|v| v.capacity() * 4)
            .sum::<usize>()
            + (self.sorted_slots.capacity() + self.angle_of.capacity()) * size_of::<usize>()
            + self.distinct.capacity() * 4
            + self.pos_index.capacity() * size_of::<(u32, usize)>()
    }
}

/// Makes `v` at least `len` long (growing only).
pub fn fit(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// One forward pass on the CPU.
pub struct CpuOps<'a> {
    step: CpuStep<'a>,
    ropes: &'a [Rope],
    /// Per layer: (slots, kv_dim) K and V.
    k: &'a mut [KvStore],
    v: &'a mut [KvStore],
    block_size: usize,
    s: &'a mut CpuScratch,
    /// Set by [`Ops::keep_logits_rows`]: the step's rows are now its logits rows, in order.
    kept: Option<usize>,
}

impl<'a> CpuOps<'a> {
    /// The pass over `step`, computing the RoPE angles of its positions up front.
    pub fn new(
        step: CpuStep<'a>,
        ropes: &'a [Rope],
        (k, v): (&'a mut [KvStore], &'a mut [KvStore]),
        block_size: usize,
        s: &'a mut CpuScratch,
    ) -> Self {
        let per_row: usize = ropes.iter().map(Rope::half).sum();
        let CpuScratch {
            distinct,
            pos_index,
            angle_of,
            ..
        } = s;
        // Sized for n distinct positions, so that a step of a seen row count allocates nothing
        // whatever its positions.
        let n = step.positions.len();
        distinct.clear();
        pos_index.clear();
        angle_of.clear();
        distinct.reserve(n);
        pos_index.reserve(n);
        angle_of.reserve(n);
        for &p in step.positions {
            let j = *pos_index.entry(p).or_insert_with(|| {
                distinct.push(p);
                distinct.len() - 1
            });
            angle_of.push(j);
        }
        let m = distinct.len();
        fit(&mut s.cos, n * per_row);
        fit(&mut s.sin, n * per_row);
        let mut off = 0;
        for rope in ropes {
            let h = rope.half();
            for (j, &p) in s.distinct.iter().enumerate() {
                let r = off + j * h..off + (j + 1) * h;
                rope.angles(p, &mut s.cos[r.clone()], &mut s.sin[r]);
            }
            off += m * h;
        }
        s.sorted_slots.clear();
        s.sorted_slots.extend_from_slice(step.slots);
        s.sorted_slots.sort_unstable();
        s.distinct_slots = s.sorted_slots.windows(2).all(|w| w[0] != w[1]);
        Self {
            step,
            ropes,
            k,
            v,
            block_size,
            s,
            kept: None,
        }
    }

    fn n(&self) -> usize {
        self.kept.unwrap_or(self.step.tokens.len())
    }
}

impl Ops for CpuOps<'_> {
    type Act = Vec<f32>;
    type In = Vec<f32>;
    type Matrix = Weight;
    type Vector = Vec<f32>;
    type Error = Infallible;

    fn embed(&mut self, table: &Weight, scale: f32, x: &mut Vec<f32>) -> Result<(), Infallible> {
        let dim = table.cols();
        for (xr, &tok) in x.chunks_exact_mut(dim).zip(self.step.tokens) {
            table.row_f32(tok as usize, xr);
            if scale != 1.0 {
                xr.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(())
    }

    fn residual_norm(
        &mut self,
        x: &mut Vec<f32>,
        add: Option<Residual<'_, Vec<f32>, Vec<f32>>>,
        norm: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), Infallible> {
        let (d, n) = (norm.len(), self.n());
        let (x, out) = (&mut x[..n * d], &mut out[..n * d]);
        let post = add.as_ref().and_then(|r| r.norm);
        let add = add.map(|r| &mut r.add[..n * d]);
        let rows = |x: &mut [f32], add: Option<&mut [f32]>, out: &mut [f32]| match add {
            None => rms_norm(x, norm, eps, out),
            Some(add) => {
                if let Some(p) = post {
                    rms_norm_in_place(add, p, eps);
                }
                add_rms_norm(x, add, norm, eps, out);
            }
        };
        // Rows are independent and each is normed the same way wherever it runs, so a batch's
        // rows go to the pool (on one thread the two norms were ~4% of a prefill's forward).
        if n >= PAR_ROWS {
            use rayon::prelude::*;
            let task = PAR_ROWS / 2 * d;
            let (xs, outs) = (x.par_chunks_mut(task), out.par_chunks_mut(task));
            match add {
                None => xs.zip(outs).for_each(|(x, out)| rows(x, None, out)),
                Some(add) => (xs.zip(add.par_chunks_mut(task)))
                    .zip(outs)
                    .for_each(|((x, add), out)| rows(x, Some(add), out)),
            }
        } else {
            rows(x, add, out);
        }
        Ok(())
    }

    fn matmul(&mut self, x: &Vec<f32>, w: &Weight, y: &mut Vec<f32>) -> Result<(), Infallible> {
        let n = self.n();
        w.matmul(&x[..n * w.cols()], n, &mut y[..n * w.rows()]);
        Ok(())
    }

    fn qkv_prep(
        &mut self,
        layer: usize,
        qkv: &mut Vec<f32>,
        p: &QkvPrep<'_, Vec<f32>>,
    ) -> Result<(), Infallible> {
        let (hd, q_dim, kv_dim) = (p.heads.head_dim, p.heads.q_dim(), p.heads.kv_dim());
        let width = p.heads.qkv_dim();
        let n = self.n();
        let rope = &self.ropes[p.rope];
        let h = rope.half();
        let m = self.s.distinct.len();
        let off: usize = m * self.ropes[..p.rope].iter().map(Rope::half).sum::<usize>();
        let (cos_all, sin_all, angle_of) = (&self.s.cos, &self.s.sin, &self.s.angle_of);
        let (isa, slots) = (Isa::detect(), self.step.slots);
        // Each row's K and V go to its own slot, so rows write them as they finish, wherever
        // they run (while the row is in cache); only a step with a repeated slot writes them
        // afterwards, in order, so that the last row wins as it always did.
        let parallel_kv = self.s.distinct_slots;
        let (k, v) = (self.k[layer].rows(), self.v[layer].rows());
        // Per row: bias, Q/K norms, RoPE on Q and K, K and V into the pool. Rows are independent
        // and computed the same way on any thread, so a batch's rows go to the pool
        // (single-threaded this was ~7% of a 64-stream step's forward).
        let prep = |(t, row): (usize, &mut [f32])| {
            if let Some(b) = p.bias {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(w) = p.q_norm {
                rms_norm_in_place(&mut row[..q_dim], w, p.eps);
            }
            if let Some(w) = p.k_norm {
                rms_norm_in_place(&mut row[q_dim..q_dim + kv_dim], w, p.eps);
            }
            let a = off + angle_of[t] * h..off + (angle_of[t] + 1) * h;
            let (cos, sin) = (&cos_all[a.clone()], &sin_all[a]);
            rope_isa(isa, rope, &mut row[..q_dim + kv_dim], hd, cos, sin);
            if parallel_kv {
                // SAFETY: slots are distinct across the step's rows (`distinct_slots`), and each
                // row is prepared once.
                unsafe {
                    k.write(slots[t], &row[q_dim..q_dim + kv_dim]);
                    v.write(slots[t], &row[q_dim + kv_dim..]);
                }
            }
        };
        let rows = &mut qkv[..n * width];
        if n >= PAR_ROWS {
            use rayon::prelude::*;
            rows.par_chunks_exact_mut(width)
                .enumerate()
                .with_min_len(PAR_ROWS / 2)
                .for_each(prep);
        } else {
            rows.chunks_exact_mut(width).enumerate().for_each(prep);
        }
        if !parallel_kv {
            for (t, row) in rows.chunks_exact(width).enumerate() {
                // SAFETY: one thread writes.
                unsafe {
                    k.write(slots[t], &row[q_dim..q_dim + kv_dim]);
                    v.write(slots[t], &row[q_dim + kv_dim..]);
                }
            }
        }
        Ok(())
    }

    fn attention(
        &mut self,
        layer: usize,
        qkv: &Vec<f32>,
        p: &AttnLayer,
        out: &mut Vec<f32>,
    ) -> Result<(), Infallible> {
        let shape = AttnShape {
            n_heads: p.heads.n_heads,
            n_kv_heads: p.heads.n_kv_heads,
            head_dim: p.heads.head_dim,
            block_size: self.block_size,
            scale: p.scale,
        };
        fit(&mut self.s.attn, attention::scratch_len(&shape));
        let (n, width) = (self.n(), p.heads.qkv_dim());
        let (rows, window) = (self.step.rows, p.window);
        let inp = AttnInput {
            shape,
            q: &qkv[..n * width],
            q_stride: width,
            rows: move |t: usize| rows(t).windowed(window),
            k: &self.k[layer],
            v: &self.v[layer],
        };
        attention::paged_attention(&inp, &mut out[..n * p.heads.q_dim()], &mut self.s.attn);
        Ok(())
    }

    fn glu(
        &mut self,
        act: Activation,
        gu: &Vec<f32>,
        ffn: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), Infallible> {
        let n = self.n();
        glu_rows(act, &gu[..n * 2 * ffn], &mut out[..n * ffn], ffn);
        Ok(())
    }

    fn matmul_glu(
        &mut self,
        x: &Vec<f32>,
        w: &Weight,
        act: Activation,
        ffn: usize,
        gu: &mut Vec<f32>,
        h: &mut Vec<f32>,
    ) -> Result<bool, Infallible> {
        let n = self.n();
        let (x, gu, h) = (
            &x[..n * w.cols()],
            &mut gu[..n * 2 * ffn],
            &mut h[..n * ffn],
        );
        Ok(w.matmul_glu(act, x, n, gu, h))
    }

    fn glu_matmul(
        &mut self,
        act: Activation,
        gu: &Vec<f32>,
        ffn: usize,
        h: &mut Vec<f32>,
        w: &Weight,
        y: &mut Vec<f32>,
    ) -> Result<(), Infallible> {
        let n = self.n();
        let (gu, h, y) = (
            &gu[..n * 2 * ffn],
            &mut h[..n * ffn],
            &mut y[..n * w.rows()],
        );
        w.glu_matmul(act, gu, n, h, y);
        Ok(())
    }

    fn keep_logits_rows(
        &mut self,
        x: &mut Vec<f32>,
        dim: usize,
        att: &mut Vec<f32>,
        q_dim: usize,
    ) -> Result<bool, Infallible> {
        let rows = self.step.logits_rows;
        let r = rows.len();
        if self.kept.is_some() || r >= self.n() {
            return Ok(false);
        }
        // Through the scratch: the rows need not be in increasing order.
        for (buf, width) in [(x, dim), (att, q_dim)] {
            fit(&mut self.s.last, r * width);
            let tmp = &mut self.s.last[..r * width];
            for (t, &row) in tmp.chunks_exact_mut(width).zip(rows) {
                t.copy_from_slice(&buf[row * width..(row + 1) * width]);
            }
            buf[..r * width].copy_from_slice(tmp);
        }
        self.kept = Some(r);
        Ok(true)
    }

    fn logits(
        &mut self,
        x: &Vec<f32>,
        add: Residual<'_, Vec<f32>, Vec<f32>>,
        norm: &Vec<f32>,
        eps: f32,
        w: &Weight,
        out: &mut Vec<f32>,
    ) -> Result<(), Infallible> {
        let (dim, r) = (norm.len(), self.step.logits_rows.len());
        fit(&mut self.s.resid, r * dim);
        fit(&mut self.s.last, r * dim);
        let (kept, rows) = (self.kept.is_some(), self.step.logits_rows);
        let (resid, last) = (&mut self.s.resid[..r * dim], &mut self.s.last[..r * dim]);
        for (i, o) in resid.chunks_exact_mut(dim).enumerate() {
            // Where logits row i is: moved to row i if the rows were kept.
            let row = if kept { i } else { rows[i] };
            let span = row * dim..(row + 1) * dim;
            o.copy_from_slice(&add.add[span.clone()]);
            if let Some(p) = add.norm {
                rms_norm_in_place(o, p, eps);
            }
            o.iter_mut().zip(&x[span]).for_each(|(o, x)| *o += x);
        }
        rms_norm(resid, norm, eps, last);
        w.matmul(last, r, &mut out[..r * w.rows()]);
        Ok(())
    }
}
