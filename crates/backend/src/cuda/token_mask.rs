//! Grammar masks on the device (structured outputs): each constrained row's allowed tokens travel
//! as packed bit words (the layout of `tokenfab_structured::TokenMask`: bit `t % 32` of word
//! `t / 32`, set when token `t` is allowed) and `mask_rows` sets every other logit of the row to
//! -inf before `sample_rows` reads it, as vLLM applies its bitmask on the GPU, so the logits stay
//! on the device. [`mask_row`] is its CPU twin: what `TokenMask::apply` does on the host.

use cudarc::driver::PushKernelArg;

use super::kernels::ROW_THREADS;
use super::launch::{check, grid};
use super::{Gpu, GpuBuf, Result};

/// The kernel's CUDA C, appended to [`super::kernels::SOURCE`] (it uses its `NEG_INF`).
macro_rules! token_mask_source {
    () => {
        r#"
/* Grammar masks: block i masks logits row rows[i] (vocab wide) with the bit words
   masks[i * words ..][..words]: a token whose bit is clear gets -inf (the host's TokenMask::apply).
   words >= ceil(vocab / 32). grid (masked rows), ROW_THREADS threads. */
extern "C" __global__ void mask_rows(float* __restrict__ logits, const int* __restrict__ rows,
                                     const unsigned int* __restrict__ masks, int words, int vocab) {
    float* l = logits + (size_t)rows[blockIdx.x] * vocab;
    const unsigned int* m = masks + (size_t)blockIdx.x * words;
    for (int t = threadIdx.x; t < vocab; t += blockDim.x) {
        if (((m[t >> 5] >> (t & 31)) & 1u) == 0u) l[t] = NEG_INF;
    }
}
"#
    };
}
pub(crate) use token_mask_source;

/// Words of one row's mask for a vocabulary of `vocab` tokens.
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// The CPU twin of `mask_rows` for one row: tokens whose bit in `words` is clear get -inf.
pub fn mask_row(logits: &mut [f32], words: &[u32]) {
    for (t, l) in logits.iter_mut().enumerate() {
        if words.get(t / 32).is_none_or(|w| w >> (t % 32) & 1 == 0) {
            *l = f32::NEG_INFINITY;
        }
    }
}

impl Gpu {
    /// Masks rows `rows[..n]` of `logits` (rows, vocab) in place with `masks` (n,
    /// [`mask_words`]) (see [`mask_row`]). Every row index is below the logits' rows (the
    /// caller's check).
    pub fn mask_rows(
        &self,
        (logits, vocab): (&mut GpuBuf<f32>, usize),
        rows: &GpuBuf<i32>,
        masks: &GpuBuf<u32>,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let words = mask_words(vocab);
        check(
            rows.len() >= n && masks.len() >= n * words && vocab <= i32::MAX as usize,
            "mask_rows",
        )?;
        let (l, r, m) = (self.ptr(logits), self.ptr(rows), self.ptr(masks));
        let (w, v) = (words as i32, vocab as i32);
        let mut b = self.stream.launch_builder(&self.k.mask_rows);
        b.arg(&l).arg(&r).arg(&m).arg(&w).arg(&v);
        // SAFETY: sizes checked above; row indices checked by the caller.
        unsafe { b.launch(grid(n, 1, ROW_THREADS)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twin keeps exactly the set bits, and nothing past the words it is given.
    #[test]
    fn the_twin_keeps_the_allowed_tokens() {
        let vocab = 70;
        let allowed = [0usize, 5, 31, 32, 63, 64, 69];
        let mut words = vec![0u32; mask_words(vocab)];
        for &t in &allowed {
            words[t / 32] |= 1 << (t % 32);
        }
        let mut l: Vec<f32> = (0..vocab).map(|i| i as f32).collect();
        mask_row(&mut l, &words);
        for (t, &x) in l.iter().enumerate() {
            assert_eq!(x.is_finite(), allowed.contains(&t), "token {t}");
        }
        let mut l = vec![1.0f32; 40];
        mask_row(&mut l, &[u32::MAX]);
        assert!(l[..32].iter().all(|x| x.is_finite()) && l[32..].iter().all(|x| x.is_infinite()));
    }
}
