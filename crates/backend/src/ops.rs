//! The device operations a model's forward pass is written in, so that each architecture is
//! written once (crates/models `forward.rs`) and runs on every device: the CPU
//! ([`crate::cpu::ops::CpuOps`]) and CUDA ([`crate::cuda::ops::CudaOps`]).
//!
//! An implementation is a view of one forward pass on one device: it knows the step's rows
//! (tokens, positions, KV slots, block tables, the rows whose logits are wanted), owns or borrows
//! the KV pool and any working memory, and holds the RoPE tables of the model. The activation
//! buffers are the caller's, typed by the device: [`Ops::Act`] for f32 rows (the residual stream,
//! products), [`Ops::In`] for rows a product reads (f32 on the CPU, bf16 on CUDA). Every
//! operation reads and writes the first `n` rows of its buffers, `n` being the step's row count.
//!
//! The operations are the fused steps the supported architectures need, named for what they do:
//! adding one is adding a method here and its kernels on each device.

pub use crate::cpu::Activation;
pub use crate::rope::{Rope, RopeKind};

/// The attention heads of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    /// Divides `n_heads`; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of a Q | K | V row.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// What happens to each Q | K | V row between the QKV product and attention: the bias is added,
/// each Q and K head is RMS-normed, Q and K heads are rotated at the row's position, and K and V
/// are written to the layer's KV pool at the row's slot.
pub struct QkvPrep<'w, V> {
    pub heads: Heads,
    /// (qkv_dim,) Q | K | V biases (Qwen2).
    pub bias: Option<&'w V>,
    /// (head_dim,) RMSNorm weight of every Q head, and of every K head (Qwen3, Gemma 3).
    pub q_norm: Option<&'w V>,
    pub k_norm: Option<&'w V>,
    pub eps: f32,
    /// Which of the device's RoPEs (Gemma 3's sliding-window layers have their own base).
    pub rope: usize,
}

/// One layer's attention: causal over each row's sequence, through its block table.
#[derive(Clone, Copy, Debug)]
pub struct AttnLayer {
    pub heads: Heads,
    /// Multiplies q·k.
    pub scale: f32,
    /// Attend only to the last `window` positions (the row's own included); `None`: all.
    pub window: Option<usize>,
}

/// A projection's output joining the residual stream, RMS-normed by `norm` first when set
/// (Gemma 3's post-attention and post-FFN norms). The device may leave `add` changed.
pub struct Residual<'a, A, V> {
    pub add: &'a mut A,
    pub norm: Option<&'a V>,
}

/// The operations of a forward pass on one device. Shapes: `n` rows per step, `r` logits rows.
pub trait Ops {
    /// f32 rows: the residual stream and products.
    type Act;
    /// Rows a product reads.
    type In;
    /// A weight matrix (rows, cols) on the device: one row per output feature.
    type Matrix;
    /// A vector (norm weights, biases) on the device.
    type Vector;
    type Error;

    /// `x (n, dim) = table[tokens] * scale`.
    fn embed(
        &mut self,
        table: &Self::Matrix,
        scale: f32,
        x: &mut Self::Act,
    ) -> Result<(), Self::Error>;

    /// `x += add` (when given), then `out (n, dim) = rms_norm(x) * norm` (dim = `norm`'s length).
    fn residual_norm(
        &mut self,
        x: &mut Self::Act,
        add: Option<Residual<'_, Self::Act, Self::Vector>>,
        norm: &Self::Vector,
        eps: f32,
        out: &mut Self::In,
    ) -> Result<(), Self::Error>;

    /// `y (n, w.rows) = x (n, w.cols) · wᵀ`.
    fn matmul(
        &mut self,
        x: &Self::In,
        w: &Self::Matrix,
        y: &mut Self::Act,
    ) -> Result<(), Self::Error>;

    /// [`QkvPrep`] on every row of `qkv` (n, qkv_dim), writing layer `layer`'s K/V.
    fn qkv_prep(
        &mut self,
        layer: usize,
        qkv: &mut Self::Act,
        p: &QkvPrep<'_, Self::Vector>,
    ) -> Result<(), Self::Error>;

    /// `out (n, q_dim)`: each row's Q heads (from `qkv`) attending to layer `layer`'s K/V.
    fn attention(
        &mut self,
        layer: usize,
        qkv: &Self::Act,
        p: &AttnLayer,
        out: &mut Self::In,
    ) -> Result<(), Self::Error>;

    /// `h (n, ffn) = act(gate) * up` for `gate | up = x · wᵀ` (`w` the stacked gate | up
    /// matrix), where the device does it without writing `gate | up`: returns true. Otherwise
    /// (the default) it writes `gu (n, 2 ffn) = x · wᵀ`, as [`Ops::matmul`], and returns false;
    /// the caller then runs [`Ops::glu_matmul`] on `gu`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_glu(
        &mut self,
        x: &Self::In,
        w: &Self::Matrix,
        _act: Activation,
        _ffn: usize,
        gu: &mut Self::Act,
        _h: &mut Self::In,
    ) -> Result<bool, Self::Error> {
        self.matmul(x, w, gu)?;
        Ok(false)
    }

    /// `out (n, ffn) = act(gate) * up` for `gu` (n, 2 ffn) = gate | up.
    fn glu(
        &mut self,
        act: Activation,
        gu: &Self::Act,
        ffn: usize,
        out: &mut Self::In,
    ) -> Result<(), Self::Error>;

    /// `y (n, w.rows) = (act(gate) * up) · wᵀ` for `gu` (n, 2 ffn) = gate | up: [`Ops::glu`] into
    /// `h` (n, ffn), then [`Ops::matmul`]. A device may do both in one pass and leave `h` unwritten
    /// (the CPU quantizes each activated row for a quantized `w` as it computes it).
    fn glu_matmul(
        &mut self,
        act: Activation,
        gu: &Self::Act,
        ffn: usize,
        h: &mut Self::In,
        w: &Self::Matrix,
        y: &mut Self::Act,
    ) -> Result<(), Self::Error> {
        self.glu(act, gu, ffn, h)?;
        self.matmul(h, w, y)
    }

    /// From here on, only the step's logits rows: rows `logits_rows[i]` of `x` (n, dim) and `att`
    /// (n, q_dim) move to row `i`, and the later operations run on those `r` rows (the last
    /// layer after its attention: no other row's output is read; llama.cpp's `inp_out_ids`).
    /// Each row is computed as it would be in any batch, so this changes no result. Returns
    /// whether the device did it (`false`: it goes on with all rows, as by default).
    fn keep_logits_rows(
        &mut self,
        _x: &mut Self::Act,
        _dim: usize,
        _att: &mut Self::In,
        _q_dim: usize,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    /// The logits of the step's chosen rows only: `out (r, w.rows) = rms_norm(x + add) * norm ·
    /// wᵀ` on those rows (`x` itself is left as it is).
    fn logits(
        &mut self,
        x: &Self::Act,
        add: Residual<'_, Self::Act, Self::Vector>,
        norm: &Self::Vector,
        eps: f32,
        w: &Self::Matrix,
        out: &mut Self::Act,
    ) -> Result<(), Self::Error>;
}
