//! The names of a forward pass's phases and the hook a model calls at their boundaries, so that an
//! engine can time the inside of a pass (per layer: norms, matrix products, attention) without the
//! model knowing how it is timed.
//!
//! The model calls [`ForwardHook::phase_done`] right after each phase, on the thread that drives
//! the pass; the hook charges the time since the previous call (or since the pass began) to that
//! phase. Profiling off means no hook (`None`): one branch per phase boundary.

/// A phase of one forward pass. Layer phases repeat per layer; the others run once a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPhase {
    /// Token embedding lookup (and batch checks) before the first layer.
    Embed,
    /// The previous layer's FFN output added to the residual, and RMSNorm before attention.
    AttnNorm,
    /// The fused Q/K/V product (activation quantization included).
    Qkv,
    /// Bias, RoPE and the K/V write into the paged pool.
    RopeKv,
    /// Paged attention.
    Attention,
    /// The attention output product.
    AttnOutput,
    /// The attention output added to the residual, and RMSNorm before the FFN.
    FfnNorm,
    /// The fused gate/up product.
    FfnGateUp,
    /// SwiGLU.
    FfnAct,
    /// The down product.
    FfnDown,
    /// On the rows whose logits are wanted: the last FFN output added to the residual, the last
    /// RMSNorm and the output (vocabulary) product.
    Logits,
}

impl ForwardPhase {
    /// Every phase, in the order a pass runs them.
    pub const ALL: [ForwardPhase; 11] = [
        ForwardPhase::Embed,
        ForwardPhase::AttnNorm,
        ForwardPhase::Qkv,
        ForwardPhase::RopeKv,
        ForwardPhase::Attention,
        ForwardPhase::AttnOutput,
        ForwardPhase::FfnNorm,
        ForwardPhase::FfnGateUp,
        ForwardPhase::FfnAct,
        ForwardPhase::FfnDown,
        ForwardPhase::Logits,
    ];

    /// The label value in metrics (`phase="qkv"`).
    pub fn name(self) -> &'static str {
        match self {
            ForwardPhase::Embed => "embed",
            ForwardPhase::AttnNorm => "attn_norm",
            ForwardPhase::Qkv => "qkv",
            ForwardPhase::RopeKv => "rope_kv",
            ForwardPhase::Attention => "attention",
            ForwardPhase::AttnOutput => "attn_output",
            ForwardPhase::FfnNorm => "ffn_norm",
            ForwardPhase::FfnGateUp => "ffn_gate_up",
            ForwardPhase::FfnAct => "ffn_act",
            ForwardPhase::FfnDown => "ffn_down",
            ForwardPhase::Logits => "logits",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Receives the phase boundaries of forward passes. Passed into a forward as
/// `Option<&mut dyn ForwardHook>`; `None` when profiling is off. `Send`: a pass may run on a
/// compute pool's thread.
pub trait ForwardHook: Send {
    /// Called once before the pass's first phase.
    fn pass_begin(&mut self);
    /// `phase` of `layer` (`None` outside the layers) has just ended.
    fn phase_done(&mut self, layer: Option<usize>, phase: ForwardPhase);
}

/// Calls `hook.phase_done(layer, phase)` when there is a hook: the one line a model writes at each
/// phase boundary.
#[inline(always)]
pub fn mark(hook: &mut Option<&mut dyn ForwardHook>, layer: Option<usize>, phase: ForwardPhase) {
    if let Some(h) = hook.as_deref_mut() {
        h.phase_done(layer, phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(Vec<(Option<usize>, ForwardPhase)>, usize);
    impl ForwardHook for Seen {
        fn pass_begin(&mut self) {
            self.1 += 1;
        }
        fn phase_done(&mut self, layer: Option<usize>, phase: ForwardPhase) {
            self.0.push((layer, phase));
        }
    }

    #[test]
    fn phases_are_listed_in_index_order_with_distinct_names() {
        for (i, p) in ForwardPhase::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
        let mut names: Vec<_> = ForwardPhase::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ForwardPhase::ALL.len());
    }

    #[test]
    fn mark_reaches_the_hook_and_does_nothing_without_one() {
        let mut seen = Seen(Vec::new(), 0);
        {
            let mut hook: Option<&mut dyn ForwardHook> = Some(&mut seen);
            if let Some(h) = hook.as_deref_mut() {
                h.pass_begin();
            }
            mark(&mut hook, Some(3), ForwardPhase::Qkv);
            mark(&mut hook, None, ForwardPhase::Logits);
        }
        assert_eq!(seen.1, 1);
        assert_eq!(
            seen.0,
            vec![(Some(3), ForwardPhase::Qkv), (None, ForwardPhase::Logits)]
        );
        let mut none: Option<&mut dyn ForwardHook> = None;
        mark(&mut none, None, ForwardPhase::Embed);
    }
}
