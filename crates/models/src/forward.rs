//! The forward pass, written once over the device operations of [`tokenfab_backend::ops`], for
//! every architecture of [`crate::config::Arch`] and every device: per layer, the residual joins
//! the previous output and is normed, the stacked QKV product, the per-row QKV step (bias, Q/K
//! norms, RoPE, K/V into the pool), paged attention (windowed on sliding-window layers), the
//! output product, then the same residual step before the FFN: the gate|up product, the gated
//! activation and the down product. What differs between architectures is data (norms present or
//! not, scales, window, activation), not code.

use tokenfab_backend::ops::{AttnLayer, Ops, QkvPrep, Residual};
use tokenfab_types::profile::{mark, ForwardHook, ForwardPhase as P};

use crate::config::ModelConfig;
use crate::weight::Weights;

/// The activations of one pass over `n` rows, `r` of them producing logits; `A` a device's f32
/// rows, `I` the rows its products read. Row t of each buffer belongs to the batch's token t.
#[derive(Default)]
pub struct Acts<A, I> {
    /// (n, dim) residual stream
    pub x: A,
    /// (n, dim) normalized residual
    pub xn: I,
    /// (n, q_dim + 2 kv_dim) Q | K | V
    pub qkv: A,
    /// (n, q_dim) attention output
    pub att: I,
    /// (n, dim) output of the attention or FFN projection, added to `x` by the next norm
    pub tmp: A,
    /// (n, 2 ffn) gate | up
    pub gu: A,
    /// (n, ffn) act(gate) * up (left unwritten by a device that fuses it into the down product)
    pub h: I,
    /// (r, vocab)
    pub logits: A,
}

/// Runs one pass: the step's rows, KV pool and RoPE tables are the device's (`d`), the weights
/// `w` on the same device. Leaves the logits of the step's chosen rows in `a.logits`.
pub fn forward<D: Ops>(
    c: &ModelConfig,
    w: &Weights<D::Matrix, D::Vector>,
    d: &mut D,
    a: &mut Acts<D::Act, D::In>,
) -> Result<(), D::Error> {
    forward_hooked(c, w, d, a, None)
}

/// [`forward`], telling `hook` (when there is one) where each phase of each layer ends: the
/// phases' times are only meaningful on a device whose operations have finished when they return
/// (the CPU's). Without a hook, one branch per phase boundary.
pub fn forward_hooked<D: Ops>(
    c: &ModelConfig,
    w: &Weights<D::Matrix, D::Vector>,
    d: &mut D,
    a: &mut Acts<D::Act, D::In>,
    mut hook: Option<&mut dyn ForwardHook>,
) -> Result<(), D::Error> {
    let (heads, eps) = (c.heads(), c.rms_eps);
    if let Some(h) = hook.as_deref_mut() {
        h.pass_begin();
    }
    d.embed(&w.tok_embd, c.embed_scale, &mut a.x)?;
    mark(&mut hook, None, P::Embed);
    // The hot loop: every layer over all rows of all sequences at once.
    for (l, lw) in w.layers.iter().enumerate() {
        // The previous layer's FFN output joins the residual here.
        let prev = (l > 0).then(|| Residual {
            add: &mut a.tmp,
            norm: w.layers[l - 1].post_ffn_norm.as_ref(),
        });
        let at = Some(l);
        d.residual_norm(&mut a.x, prev, &lw.attn_norm, eps, &mut a.xn)?;
        mark(&mut hook, at, P::AttnNorm);
        d.matmul(&a.xn, &lw.wqkv, &mut a.qkv)?;
        mark(&mut hook, at, P::Qkv);
        let prep = QkvPrep {
            heads,
            bias: lw.bqkv.as_ref(),
            q_norm: lw.q_norm.as_ref(),
            k_norm: lw.k_norm.as_ref(),
            eps,
            rope: c.rope_index(l),
        };
        d.qkv_prep(l, &mut a.qkv, &prep)?;
        mark(&mut hook, at, P::RopeKv);
        let attn = AttnLayer {
            heads,
            scale: c.attn_scale,
            window: c.window(l),
        };
        d.attention(l, &a.qkv, &attn, &mut a.att)?;
        if l + 1 == c.n_layers {
            // Past the last attention only the logits rows' outputs are read (a prefill's other
            // rows have written their K/V): the rest of the layer runs on those rows alone.
            d.keep_logits_rows(&mut a.x, c.dim, &mut a.att, heads.q_dim())?;
        }
        mark(&mut hook, at, P::Attention);
        d.matmul(&a.att, &lw.wo, &mut a.tmp)?;
        mark(&mut hook, at, P::AttnOutput);
        let out = Residual {
            add: &mut a.tmp,
            norm: lw.post_attn_norm.as_ref(),
        };
        d.residual_norm(&mut a.x, Some(out), &lw.ffn_norm, eps, &mut a.xn)?;
        mark(&mut hook, at, P::FfnNorm);
        // The gated activation goes with the product before it where the device fuses them
        // (the CPU's packed AVX-512 kernel: gate | up is never written), else with the down
        // product (the CPU with a quantized `w_down`); either way ffn_act's time falls in
        // another phase's.
        let fused = d.matmul_glu(
            &a.xn,
            &lw.w_gate_up,
            c.activation,
            c.ffn_dim,
            &mut a.gu,
            &mut a.h,
        )?;
        mark(&mut hook, at, P::FfnGateUp);
        mark(&mut hook, at, P::FfnAct);
        if fused {
            d.matmul(&a.h, &lw.w_down, &mut a.tmp)?;
        } else {
            d.glu_matmul(
                c.activation,
                &a.gu,
                c.ffn_dim,
                &mut a.h,
                &lw.w_down,
                &mut a.tmp,
            )?;
        }
        mark(&mut hook, at, P::FfnDown);
    }
    // The last FFN output joins the residual of the logits rows only.
    let last = Residual {
        add: &mut a.tmp,
        norm: w.layers[c.n_layers - 1].post_ffn_norm.as_ref(),
    };
    d.logits(&a.x, last, &w.output_norm, eps, w.output(), &mut a.logits)?;
    mark(&mut hook, None, P::Logits);
    Ok(())
}
