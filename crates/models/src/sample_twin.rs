//! Device sampling on the CPU: an executor whose [`DeviceSampler`] runs the CPU twins of the
//! device kernels (`token_mask::mask_row`, `sampling::sample_row`) over another executor's
//! logits, step for step as [`crate::CudaExecutor`] runs `mask_rows` and `sample_rows`. The
//! engine's tests drive it to hold device sampling against host sampling without a GPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokenfab_backend::cuda::sampling::{sample_row, HOST};
use tokenfab_backend::cuda::token_mask::{mask_row, mask_words};

use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::executor::{
    check_feed, check_masks, check_sampling, rows_to_copy, DeviceSampler, DeviceSampling, Executor,
    SampledStep, TokenMasks,
};
use tokenfab_backend::cuda::feed::feed_rows;
use tokenfab_backend::cuda::sampling::{Edit, SampleParams};

/// How many rows the twin sampled itself and how many it handed back to the host.
#[derive(Default, Debug)]
pub struct TwinCounts {
    pub device: AtomicUsize,
    pub host: AtomicUsize,
}

pub struct SampleTwin {
    inner: Box<dyn Executor>,
    /// (rows, vocab) the launched batch's logits, "on the device".
    logits: Vec<f32>,
    /// The launched batch's sampling inputs, "uploaded".
    params: Vec<SampleParams>,
    edits: Vec<Edit>,
    host: Vec<bool>,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    host_at: Vec<usize>,
    /// (rows copied back, vocab)
    back: Vec<f32>,
    /// (rows,) the last sampled step's tokens, "left on the device" for the next step's feed.
    last: Vec<u32>,
    /// Scratch: the launched batch's tokens after the feed.
    fed: Vec<u32>,
    pub counts: Arc<TwinCounts>,
}

impl SampleTwin {
    pub fn new(inner: Box<dyn Executor>) -> Self {
        Self {
            inner,
            logits: Vec::new(),
            params: Vec::new(),
            edits: Vec::new(),
            host: Vec::new(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            host_at: Vec::new(),
            back: Vec::new(),
            last: Vec::new(),
            fed: Vec::new(),
            counts: Arc::default(),
        }
    }
}

impl Executor for SampleTwin {
    fn forward(&mut self, batch: &ForwardBatch) -> Result<&mut [f32]> {
        // Nothing sampled on the device: nothing to feed from.
        self.last.clear();
        self.inner.forward(batch)
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> usize {
        self.inner.num_blocks()
    }
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
    fn device(&self) -> String {
        format!("{} (device-sampling twin)", self.inner.device())
    }
    fn device_sampler(&mut self) -> Option<&mut dyn DeviceSampler> {
        Some(self)
    }
}

impl DeviceSampler for SampleTwin {
    fn launch(&mut self, batch: &ForwardBatch, s: &DeviceSampling) -> Result<()> {
        let vocab = self.inner.config().vocab_size;
        check_sampling(s, batch.logits_rows.len(), vocab)?;
        check_feed(s, batch.tokens.len(), self.last.len())?;
        self.params.clear();
        self.params.extend_from_slice(s.params);
        self.edits.clear();
        self.edits.extend_from_slice(s.edits);
        self.host.clear();
        self.host.extend_from_slice(s.host);
        // The feed, as `feed_tokens` applies it before the embedding.
        self.fed.clear();
        self.fed.extend_from_slice(batch.tokens);
        feed_rows(&mut self.fed, s.feed, &self.last);
        let fed = ForwardBatch {
            tokens: &self.fed,
            ..batch.clone()
        };
        let l = self.inner.forward(&fed)?;
        self.logits.clear();
        self.logits.extend_from_slice(l);
        Ok(())
    }

    fn sample(&mut self, m: &TokenMasks) -> Result<SampledStep<'_>> {
        let vocab = self.inner.config().vocab_size;
        let rows = self.params.len();
        check_masks(m, rows, vocab)?;
        let words = mask_words(vocab);
        for (i, &r) in m.rows.iter().enumerate() {
            let r = r as usize;
            mask_row(
                &mut self.logits[r * vocab..(r + 1) * vocab],
                &m.words[i * words..(i + 1) * words],
            );
        }
        self.tokens.clear();
        self.logprobs.clear();
        for (r, p) in self.params.iter().enumerate() {
            if self.host[r] {
                self.tokens.push(HOST);
                self.logprobs.push(0.0);
                continue;
            }
            let row = &self.logits[r * vocab..(r + 1) * vocab];
            let edits = &self.edits[p.edits_start as usize..][..p.edits_len as usize];
            let got = sample_row(row, p, edits);
            self.tokens.push(got.token);
            self.logprobs.push(got.logprob);
        }
        let copy = rows_to_copy(&mut self.tokens, &self.host, &mut self.host_at);
        // Rows the host samples hold `HOST`: a feed from one fails the next step's token check.
        self.last.clone_from(&self.tokens);
        let device = self.tokens.iter().filter(|&&t| t != HOST).count();
        self.counts.device.fetch_add(device, Ordering::Relaxed);
        self.counts.host.fetch_add(copy.len(), Ordering::Relaxed);
        self.back.clear();
        for r in copy {
            self.back
                .extend_from_slice(&self.logits[r * vocab..(r + 1) * vocab]);
        }
        Ok(SampledStep {
            tokens: &self.tokens,
            logprobs: &self.logprobs,
            host_at: &self.host_at,
            logits: &mut self.back,
        })
    }
}

#[cfg(test)]
mod tests {
    use tokenfab_backend::cuda::sampling::row_inputs;
    use tokenfab_loader::Gguf;
    use tokenfab_types::SamplingParams;

    use super::*;
    use crate::batch::SeqSlice;
    use crate::kv::KvDtype;
    use crate::testing::tiny_llama;
    use crate::{CpuExecutor, Model};

    /// A vocabulary past the device's candidate pool: a greedy row and a top-k row are sampled
    /// "on the device", a row with no cut comes back for the host, and so does a row the host
    /// reads; the copied logits are the row's, masked.
    #[test]
    fn rows_come_back_for_the_host_with_their_masked_logits() {
        let vocab = 3000;
        let m = Model::from_gguf(&Gguf::from_bytes(tiny_llama("llama", vocab).to_bytes()).unwrap())
            .unwrap();
        let mut cpu = CpuExecutor::new(m, KvDtype::F32, 4, 8).unwrap();
        let tables = [vec![0u32, 1], vec![2, 3], vec![4, 5], vec![6, 7]];
        let seqs: Vec<SeqSlice> = (0..4)
            .map(|i| SeqSlice {
                rows: i * 2..i * 2 + 2,
                block_table: &tables[i],
            })
            .collect();
        let tokens = [5, 6, 7, 8, 9, 10, 11, 12];
        let positions = [0, 1, 0, 1, 0, 1, 0, 1];
        let batch = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logits_rows: &[1, 3, 5, 7],
        };
        let want = cpu.forward(&batch).unwrap().to_vec();

        let mut twin = SampleTwin::new(Box::new(
            CpuExecutor::new(
                Model::from_gguf(&Gguf::from_bytes(tiny_llama("llama", vocab).to_bytes()).unwrap())
                    .unwrap(),
                KvDtype::F32,
                4,
                8,
            )
            .unwrap(),
        ));
        let mut edits = Vec::new();
        let sampled = |t: f32, k: usize, edits: &mut Vec<_>| {
            let p = SamplingParams {
                temperature: t,
                top_k: k,
                ..Default::default()
            };
            row_inputs(&p, &[], (&[], &[]), 0.5, edits)
        };
        let params = [
            sampled(0.0, 0, &mut edits),
            sampled(1.0, 10, &mut edits),
            sampled(1.0, 0, &mut edits),
            SampleParams::default(),
        ];
        let host = [false, false, false, true];
        let d = twin.device_sampler().unwrap();
        d.launch(
            &batch,
            &DeviceSampling {
                params: &params,
                edits: &edits,
                host: &host,
                feed: &[],
            },
        )
        .unwrap();
        // Row 3 (read on the host) may only take tokens 100..160.
        let mut words = vec![0u32; mask_words(vocab)];
        words[100 / 32 + 1] = u32::MAX;
        words[100 / 32] = !((1 << (100 % 32)) - 1);
        let got = d
            .sample(&TokenMasks {
                rows: &[3],
                words: &words,
            })
            .unwrap();
        let row = |r: usize| &want[r * vocab..(r + 1) * vocab];
        let argmax =
            |x: &[f32]| (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b }) as u32;
        assert_eq!(got.tokens[0], argmax(row(0)));
        assert_ne!(got.tokens[1], HOST);
        assert_eq!(&got.tokens[2..], &[HOST, HOST]);
        assert_eq!(got.host_at, &[usize::MAX, usize::MAX, 0, 1]);
        assert_eq!(got.logits.len(), 2 * vocab);
        assert_eq!(&got.logits[..vocab], row(2));
        let masked = &got.logits[vocab..];
        for (t, (&a, &b)) in masked.iter().zip(row(3)).enumerate() {
            let allowed = (100..160).contains(&t);
            assert_eq!(a, if allowed { b } else { f32::NEG_INFINITY }, "token {t}");
        }
        assert_eq!(twin.counts.device.load(Ordering::Relaxed), 2);
        assert_eq!(twin.counts.host.load(Ordering::Relaxed), 2);
    }

    /// Async scheduling's feed through the twin: decode steps whose input tokens the twin takes
    /// from its last sampled tokens give the tokens of steps fed by the host; a feed past the
    /// last step's rows is refused.
    #[test]
    fn fed_steps_match_host_fed_steps() {
        let twin = || {
            let m =
                Model::from_gguf(&Gguf::from_bytes(tiny_llama("llama", 50).to_bytes()).unwrap())
                    .unwrap();
            SampleTwin::new(Box::new(CpuExecutor::new(m, KvDtype::F32, 4, 16).unwrap()))
        };
        let (mut a, mut b) = (twin(), twin());
        let fed = crate::testing::fed_steps(&mut a, 6, true);
        assert_eq!(fed, crate::testing::fed_steps(&mut b, 6, false));
        assert!(fed.iter().any(|t| t[0] != fed[0][0]), "{fed:?}");
        let bad = ForwardBatch {
            tokens: &[1],
            positions: &[0],
            seqs: &[SeqSlice {
                rows: 0..1,
                block_table: &[0],
            }],
            logits_rows: &[0],
        };
        let s = DeviceSampling {
            params: &[SampleParams::default()],
            edits: &[],
            host: &[false],
            feed: &[2],
        };
        let e = a.device_sampler().unwrap().launch(&bad, &s).unwrap_err();
        assert!(e.to_string().contains("logits row 2"), "{e}");
    }
}
