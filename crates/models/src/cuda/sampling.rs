//! Sampling on the device for [`CudaExecutor`]: the step's sampling inputs go up with the batch,
//! the grammar masks (computed on the host while the forward pass runs) go up after it, then
//! `mask_rows` and `sample_rows` run on the logits where they are, and only each row's token and
//! log-probability come back, plus the logits of the rows the host samples or reads. The tokens
//! stay on the device too (`DevStep::sampled`): the next step's fed rows read them
//! (`feed_tokens`, async scheduling).

use tokenfab_backend::cuda::{self, Gpu, GpuBuf};

use super::CudaExecutor;
use crate::batch::ForwardBatch;
use crate::error::Result;
use crate::executor::{
    check_feed, check_masks, check_sampling, rows_to_copy, DeviceSampler, DeviceSampling,
    SampledStep, TokenMasks,
};

/// Device buffers of one step's sampling, grown when a step needs more; host copies of what
/// comes back.
#[derive(Default)]
pub(super) struct DevSampling {
    /// (masked rows,) logits row of each mask, and (masked rows, ceil(vocab / 32)) their words.
    mask_rows: Option<GpuBuf<i32>>,
    masks: Option<GpuBuf<u32>>,
    /// (rows,) log-probabilities out (the tokens go to `DevStep::sampled`).
    logprobs: Option<GpuBuf<f32>>,
    /// Rows of `DevStep::sampled` the last sampled step filled: what a feed may index (0 after
    /// a step the host sampled).
    pub(super) sampled_rows: usize,
    /// (rows, vocab) `sample_rows`' scratch.
    work: Option<GpuBuf<f32>>,
    /// The launched step: logits rows, and which the host reads.
    rows: usize,
    host: Vec<bool>,
    // What comes back.
    host_tokens: Vec<u32>,
    host_logprobs: Vec<f32>,
    host_at: Vec<usize>,
    back: Vec<f32>,
}

/// `buf` with room for `n` values: reallocated (contents dropped) when smaller.
fn room<'a, T>(gpu: &Gpu, buf: &'a mut Option<GpuBuf<T>>, n: usize) -> Result<&'a mut GpuBuf<T>>
where
    T: cuda::cudarc::driver::DeviceRepr + cuda::cudarc::driver::ValidAsZeroBits,
{
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        *buf = Some(gpu.zeros(n.max(1))?);
    }
    Ok(buf.as_mut().expect("allocated above"))
}

impl DeviceSampler for CudaExecutor {
    fn launch(&mut self, batch: &ForwardBatch, s: &DeviceSampling) -> Result<()> {
        check_sampling(s, batch.logits_rows.len(), self.cfg.vocab_size)?;
        check_feed(s, batch.tokens.len(), self.sampling.sampled_rows)?;
        // The parameters and edits go up with the batch (`DevStep::params`, `edits`).
        self.sampling.rows = self.run_batch(batch, Some(s))?;
        self.sampling.host.clear();
        self.sampling.host.extend_from_slice(s.host);
        Ok(())
    }

    fn sample(&mut self, m: &TokenMasks) -> Result<SampledStep<'_>> {
        let (r, vocab) = (self.sampling.rows, self.cfg.vocab_size);
        check_masks(m, r, vocab)?;
        let (g, d) = (&self.gpu, &mut self.sampling);
        d.host_tokens.clear();
        d.host_logprobs.clear();
        d.back.clear();
        if r > 0 {
            let n = m.rows.len();
            if n > 0 {
                let rows: Vec<i32> = m.rows.iter().map(|&x| x as i32).collect();
                g.write(&rows, room(g, &mut d.mask_rows, n)?)?;
                g.write(m.words, room(g, &mut d.masks, m.words.len())?)?;
                let (rows, masks) = (d.mask_rows.as_ref(), d.masks.as_ref());
                let (rows, masks) = (rows.expect("written"), masks.expect("written"));
                g.mask_rows((&mut self.acts.logits, vocab), rows, masks, n)?;
            }
            room(g, &mut d.work, r * vocab)?;
            room(g, &mut d.logprobs, r)?;
            let (Some(work), Some(logprobs)) = (&mut d.work, &mut d.logprobs) else {
                unreachable!("every buffer was made above");
            };
            // `DevStep::sampled` holds the step's rows (rows <= its capacity).
            let tokens = &mut self.step.sampled;
            g.sample_rows(
                (&self.acts.logits, vocab),
                work,
                (&self.step.params, &self.step.edits),
                (tokens, logprobs),
                r,
            )?;
            d.host_tokens = g.read(tokens, r)?;
            d.host_logprobs = g.read(logprobs, r)?;
        }
        d.sampled_rows = r;
        let copy = rows_to_copy(&mut d.host_tokens, &d.host, &mut d.host_at);
        d.back.resize(copy.len() * vocab, 0.0);
        for (i, &row) in copy.iter().enumerate() {
            let src = self.acts.logits.slice(row * vocab..(row + 1) * vocab);
            g.stream
                .memcpy_dtoh(&src, &mut d.back[i * vocab..(i + 1) * vocab])
                .map_err(cuda::Error::from)?;
        }
        g.stream.synchronize().map_err(cuda::Error::from)?;
        Ok(SampledStep {
            tokens: &d.host_tokens,
            logprobs: &d.host_logprobs,
            host_at: &d.host_at,
            logits: &mut d.back,
        })
    }
}
