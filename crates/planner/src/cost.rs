//! The time one step takes: a roofline per part of the forward pass, on one device of a
//! tensor-parallel group, plus the step's fixed costs.
//!
//! - Layer products: every layer's matrices are read once per step (`bytes / bandwidth`) and
//!   multiply every scheduled token (`2 · params · tokens / rate`); the step takes the larger.
//!   A rate measured on the model's own matrices (the CPU probe) was timed with the weights
//!   coming from memory, so its time stands alone.
//! - Output product: the same for the rows whose logits are sampled.
//! - Attention: each sequence's K/V read once and the new tokens' written (`bytes / bandwidth`),
//!   against `4 · head_dim · heads` operations per (query token, attended position) pair.
//! - Tensor parallelism: weights, heads and KV split `tp` ways; two ring all-reduces of the
//!   activations per layer over the link, not overlapped.
//! - Fixed: per step, per layer, per sampled row, and per sampled row and vocabulary entry.

use serde::Serialize;

use crate::device::{Device, MeasuredRates};
use crate::shape::{Compute, Dtype, ModelShape};
use crate::PlanError;

/// One sequence's share of a step, as the cost model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqWork {
    /// Tokens of the sequence already in the KV cache.
    pub start: usize,
    /// Tokens computed this step.
    pub tokens: usize,
    /// Whether the last token's logits are sampled.
    pub sample: bool,
}

/// Where a step's time goes, seconds; `seconds` is their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StepCost {
    pub seconds: f64,
    pub layers_s: f64,
    pub lm_head_s: f64,
    pub attention_s: f64,
    pub all_reduce_s: f64,
    pub fixed_s: f64,
}

impl StepCost {
    /// Adds `o` part by part.
    pub fn add(&mut self, o: &StepCost) {
        self.seconds += o.seconds;
        self.layers_s += o.layers_s;
        self.lm_head_s += o.lm_head_s;
        self.attention_s += o.attention_s;
        self.all_reduce_s += o.all_reduce_s;
        self.fixed_s += o.fixed_s;
    }
}

/// A product's speed: a rate measured on this model's matrices, or a peak times an efficiency.
#[derive(Clone, Debug, PartialEq)]
enum Rate {
    Measured { rows: Vec<usize>, rates: Vec<f64> },
    Peak(f64),
}

impl Rate {
    fn at(&self, rows: usize) -> f64 {
        match self {
            Rate::Measured { rows: r, rates } => MeasuredRates::at(rates, r, rows),
            Rate::Peak(p) => *p,
        }
    }
}

/// The cost of any step of one model on one device group.
#[derive(Clone, Debug)]
pub struct CostModel {
    n_layers: f64,
    /// Bytes of one layer's matrices on one device.
    layer_bytes: f64,
    /// Bytes of the output matrix on one device.
    lm_bytes: f64,
    /// Multiply-adds per token of one layer on one device.
    layer_macs: f64,
    /// Multiply-adds per logits row on one device.
    lm_macs: f64,
    layer_rate: Rate,
    lm_rate: Rate,
    /// Bytes of one token's K and V in one layer on one device.
    kv_token_layer: f64,
    /// Attention operations per (query token, position) pair in one layer on one device.
    attn_ops_pair: f64,
    attn_rate: f64,
    /// Effective memory bandwidth, bytes/s.
    bw: f64,
    /// Seconds of one all-reduce of one token's activations, and per call; 0 without TP.
    ar_token_s: f64,
    ar_call_s: f64,
    step_s: f64,
    layer_s: f64,
    sample_row_s: f64,
    /// Which arithmetic the products run in, and how their speed was found.
    pub products: String,
}

impl CostModel {
    /// The cost model of `shape` on `tp` devices like `dev`, its KV cache stored as `kv`.
    pub fn new(shape: &ModelShape, dev: &Device, tp: usize, kv: Dtype) -> Result<Self, PlanError> {
        dev.validate()?;
        if tp == 0 || !shape.n_heads.is_multiple_of(tp) {
            return Err(PlanError::Invalid(format!(
                "`--tp` must divide the {} attention heads. Given: {tp}",
                shape.n_heads
            )));
        }
        let t = tp as f64;
        let link = match (tp, dev.link_bw) {
            (1, _) => 0.0,
            (_, Some(b)) => b * dev.efficiency.link,
            (_, None) => {
                return Err(PlanError::Invalid(format!(
                    "{} has no device-to-device link: `--tp` must be 1. Given: {tp}",
                    dev.name
                )))
            }
        };
        // Weights stored in a format without a kernel here are widened to f32 (the CPU).
        let stored = |d: Dtype| match dev.peak(d.compute()) {
            Ok((Compute::F32, _)) if d.compute() != Compute::F32 => 4.0 / d.bytes_per_value(),
            _ => 1.0,
        };
        let (layer_c, layer_peak) = dev.peak(shape.weight_dtype.compute())?;
        let (_, lm_peak) = dev.peak(shape.lm_head_dtype.compute())?;
        let measured = dev
            .measured
            .as_ref()
            .filter(|m| m.model == shape.name && tp == 1);
        let (layer_rate, lm_rate, how) = match measured {
            Some(m) => (
                Rate::Measured {
                    rows: m.rows.clone(),
                    rates: m.layers.clone(),
                },
                Rate::Measured {
                    rows: m.rows.clone(),
                    rates: m.lm_head.clone(),
                },
                format!(
                    "rates measured on this model's matrices at {:?} rows",
                    m.rows
                ),
            ),
            None => (
                Rate::Peak(layer_peak * dev.efficiency.compute),
                Rate::Peak(lm_peak * dev.efficiency.compute),
                format!(
                    "{layer_c:?} peak {:.1} TOP/s x efficiency {}",
                    layer_peak / 1e12,
                    dev.efficiency.compute
                ),
            ),
        };
        let kv_heads = shape.n_kv_heads.div_ceil(tp) as f64;
        let hd = shape.head_dim as f64;
        Ok(CostModel {
            n_layers: shape.n_layers as f64,
            layer_bytes: shape.layer_matrix_bytes * stored(shape.weight_dtype) / t,
            lm_bytes: shape.lm_head_bytes * stored(shape.lm_head_dtype) / t,
            layer_macs: shape.layer_params() / t,
            lm_macs: shape.lm_head_params() / t,
            layer_rate,
            lm_rate,
            kv_token_layer: 2.0 * kv_heads * hd * kv.bytes_per_value(),
            attn_ops_pair: 4.0 * hd * shape.n_heads as f64 / t,
            attn_rate: dev.attention_ops * dev.efficiency.attention,
            bw: dev.mem_bw * dev.efficiency.mem_bw,
            ar_token_s: if tp > 1 {
                // Ring all-reduce: each device sends and receives 2 (tp - 1) / tp of the data,
                // bf16 activations of `dim` per token.
                2.0 * (t - 1.0) / t * shape.dim as f64 * 2.0 / link
            } else {
                0.0
            },
            ar_call_s: if tp > 1 {
                dev.overhead.all_reduce_s
            } else {
                0.0
            },
            step_s: dev.overhead.step_s,
            layer_s: dev.overhead.layer_s,
            sample_row_s: dev.overhead.sample_per_vocab_s * shape.vocab_size as f64
                + dev.overhead.row_s,
            products: how,
        })
    }

    /// Seconds of one product of a `bytes`-byte, `macs`-parameter matrix by `rows` rows: the
    /// roofline for a peak; the measured time alone for a measured rate (it was timed with the
    /// weights coming from memory).
    fn product(&self, rate: &Rate, bytes: f64, macs: f64, rows: usize) -> f64 {
        let compute = 2.0 * macs * rows as f64 / rate.at(rows);
        match rate {
            Rate::Measured { .. } => compute,
            Rate::Peak(_) => (bytes / self.bw).max(compute),
        }
    }

    /// The time of one step computing `seqs`.
    pub fn step(&self, seqs: &[SeqWork]) -> StepCost {
        let tokens: usize = seqs.iter().map(|s| s.tokens).sum();
        let sampled = seqs.iter().filter(|s| s.sample).count();
        let (mut pairs, mut kv_read) = (0.0, 0.0);
        for s in seqs {
            let (start, n) = (s.start as f64, s.tokens as f64);
            // Token i (0-based) of this step sits at start + i and attends to start + i + 1
            // positions.
            pairs += n * start + n * (n + 1.0) / 2.0;
            kv_read += start + n;
        }
        let l = self.n_layers;
        let t = tokens as f64;
        let layers_s = if tokens == 0 {
            0.0
        } else {
            l * self.product(&self.layer_rate, self.layer_bytes, self.layer_macs, tokens)
        };
        let lm_head_s = if sampled == 0 {
            0.0
        } else {
            self.product(&self.lm_rate, self.lm_bytes, self.lm_macs, sampled)
        };
        let kv_bytes = l * self.kv_token_layer * (kv_read + t);
        let attention_s = (kv_bytes / self.bw).max(l * self.attn_ops_pair * pairs / self.attn_rate);
        let all_reduce_s = 2.0 * l * (self.ar_token_s * t + self.ar_call_s);
        let fixed_s = self.step_s + l * self.layer_s + self.sample_row_s * sampled as f64;
        StepCost {
            seconds: layers_s + lm_head_s + attention_s + all_reduce_s + fixed_s,
            layers_s,
            lm_head_s,
            attention_s,
            all_reduce_s,
            fixed_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::device::{Efficiency, Overhead};

    /// A device with round numbers: 1 TB/s, 100 TOP/s bf16, attention 10 TOP/s, all at
    /// efficiency 1, 1 ms per step.
    pub(crate) fn round_device() -> Device {
        Device {
            name: "round".into(),
            source: "test".into(),
            memory_bytes: 100e9,
            mem_bw: 1e12,
            peaks: BTreeMap::from([(Compute::Bf16, 100e12)]),
            attention_ops: 10e12,
            link_bw: Some(100e9),
            efficiency: Efficiency::MEASURED,
            overhead: Overhead {
                step_s: 1e-3,
                ..Overhead::default()
            },
            widens_to_f32: false,
            measured: None,
            assumptions: vec![],
        }
    }

    /// A model with round byte counts: 10 layers of 2 GB, a 0.2 GB output matrix of 100,000 x
    /// 1000, one KV head of 128 per layer, 8 query heads.
    pub(crate) fn round_shape() -> ModelShape {
        // The byte counts are set directly; the parameter count follows the tiny preset's sizes.
        let mut s = ModelShape::resolve("tiny", Some(Dtype::Bf16)).unwrap();
        s.name = "round".into();
        s.n_layers = 10;
        s.n_heads = 8;
        s.n_kv_heads = 1;
        s.head_dim = 128;
        s.vocab_size = 100_000;
        s.dim = 1000;
        s.layer_matrix_bytes = 2e9;
        s.lm_head_bytes = 2e8;
        s
    }

    #[test]
    fn decode_of_one_is_weight_bandwidth_plus_fixed() {
        let s = round_shape();
        let c = CostModel::new(&s, &round_device(), 1, Dtype::Bf16).unwrap();
        // One token at position 0: layers 10 x max(2e9 B / 1e12 B/s = 2 ms, 2 * lp / 100e12).
        let lp = s.layer_params();
        assert!(2.0 * lp / 100e12 < 2e-3);
        let one = c.step(&[SeqWork {
            start: 0,
            tokens: 1,
            sample: true,
        }]);
        assert!((one.layers_s - 20e-3).abs() < 1e-12, "{one:?}");
        // Output: max(2e8 / 1e12 = 0.2 ms, 2 * 100,000 * 1000 / 1e14 = 2 us) = 0.2 ms.
        assert!((one.lm_head_s - 0.2e-3).abs() < 1e-12);
        // KV: 10 layers x 2 x 128 x 2 B = 5,120 B per token; 1 read + 1 written = 10,240 B.
        assert!((one.attention_s - 10_240.0 / 1e12).abs() < 1e-18);
        assert_eq!(one.fixed_s, 1e-3);
        assert_eq!(one.all_reduce_s, 0.0);
        let sum = one.layers_s + one.lm_head_s + one.attention_s + one.fixed_s;
        assert!((one.seconds - sum).abs() < 1e-15);
    }

    #[test]
    fn fixed_costs_per_step_layer_and_sampled_row() {
        let s = round_shape();
        let mut d = round_device();
        // 1 ms per step, 10 us per layer, 0.1 ms per sampled row, 1 ns per vocabulary entry.
        d.overhead = Overhead {
            step_s: 1e-3,
            layer_s: 10e-6,
            sample_per_vocab_s: 1e-9,
            row_s: 0.1e-3,
            all_reduce_s: 0.0,
        };
        let c = CostModel::new(&s, &d, 1, Dtype::Bf16).unwrap();
        let w = |sample| SeqWork {
            start: 10,
            tokens: 1,
            sample,
        };
        // 1 ms + 10 layers x 10 us + 3 rows x (0.1 ms + 100,000 x 1 ns).
        let step = c.step(&[w(true), w(true), w(false), w(true)]);
        assert!(
            (step.fixed_s - (1e-3 + 100e-6 + 3.0 * 0.2e-3)).abs() < 1e-12,
            "{step:?}"
        );
    }

    #[test]
    fn large_batches_turn_compute_bound() {
        let s = round_shape();
        let c = CostModel::new(&s, &round_device(), 1, Dtype::Bf16).unwrap();
        let lp = s.layer_params();
        // The ridge: tokens where 2 lp t / 1e14 = 2e9 / 1e12.
        let ridge = (2e-3 * 100e12 / (2.0 * lp)).ceil() as usize;
        let big = c.step(&[SeqWork {
            start: 0,
            tokens: 4 * ridge,
            sample: false,
        }]);
        let want = 10.0 * 2.0 * lp * (4 * ridge) as f64 / 100e12;
        assert!((big.layers_s - want).abs() < 1e-12 * want.max(1.0));
        assert_eq!(big.lm_head_s, 0.0, "no row sampled");
        // Prefill of n tokens from 0: n (n + 1) / 2 pairs of 4 * 128 * 8 operations per layer.
        let n = (4 * ridge) as f64;
        let ops = 10.0 * 4096.0 * n * (n + 1.0) / 2.0;
        let bytes = 10.0 * 512.0 * 2.0 * 2.0 * n;
        assert!((big.attention_s - (ops / 10e12).max(bytes / 1e12)).abs() < 1e-12);
    }

    #[test]
    fn measured_rates_replace_the_roofline_for_their_model() {
        let s = round_shape();
        let mut d = round_device();
        // 1 GOP/s at 1 row, 4 GOP/s from 16 rows: slower than the bandwidth would allow.
        d.measured = Some(MeasuredRates {
            model: "round".into(),
            rows: vec![1, 16],
            layers: vec![1e9, 4e9],
            lm_head: vec![2e9, 2e9],
        });
        let c = CostModel::new(&s, &d, 1, Dtype::Bf16).unwrap();
        assert!(c.products.contains("measured"));
        let lp = s.layer_params();
        for (rows, rate) in [(1usize, 1e9), (16, 4e9), (4, 2.5e9)] {
            let step = c.step(&vec![
                SeqWork {
                    start: 0,
                    tokens: 1,
                    sample: false,
                };
                rows
            ]);
            // 4 rows sit halfway between 1 and 16 in log: 2.5 GOP/s.
            let want = 10.0 * 2.0 * lp * rows as f64 / rate;
            assert!(
                (step.layers_s - want).abs() < 1e-9 * want,
                "{rows}: {step:?}"
            );
        }
        // Another model falls back to the peaks.
        let mut other = s.clone();
        other.name = "other".into();
        let c = CostModel::new(&other, &d, 1, Dtype::Bf16).unwrap();
        assert!(c.products.contains("peak"));
    }

    #[test]
    fn tensor_parallel_splits_and_all_reduces() {
        let s = round_shape();
        let d = round_device();
        let c1 = CostModel::new(&s, &d, 1, Dtype::Bf16).unwrap();
        let c8 = CostModel::new(&s, &d, 8, Dtype::Bf16).unwrap();
        let w = [SeqWork {
            start: 100,
            tokens: 1,
            sample: true,
        }];
        let (a, b) = (c1.step(&w), c8.step(&w));
        assert!((b.layers_s - a.layers_s / 8.0).abs() < 1e-12);
        // Ring all-reduce: 2 * 7/8 * 1000 * 2 B / 100 GB/s = 35 ns per token, 2 per layer.
        assert!((b.all_reduce_s - 2.0 * 10.0 * 35e-9).abs() < 1e-15, "{b:?}");
        assert!(CostModel::new(&s, &d, 3, Dtype::Bf16).is_err());
        let mut solo = d.clone();
        solo.link_bw = None;
        assert!(CostModel::new(&s, &solo, 2, Dtype::Bf16)
            .unwrap_err()
            .to_string()
            .contains("`--tp` must be 1"));
    }

    #[test]
    fn precision_changes_bytes_and_peak() {
        let mut s = round_shape();
        let mut d = round_device();
        d.peaks.insert(Compute::Fp8, 200e12);
        s.restore(Dtype::Fp8);
        let c = CostModel::new(&s, &d, 1, Dtype::Fp8).unwrap();
        let one = c.step(&[SeqWork {
            start: 0,
            tokens: 1,
            sample: false,
        }]);
        // Half the bytes of bf16 per parameter.
        let want = 10.0 * s.layer_params() / 1e12;
        assert!((one.layers_s - want).abs() < 1e-12);
        s.restore(Dtype::Ggml(tokenfab_loader::GgmlType::Q4_1));
        assert!(CostModel::new(&s, &d, 1, Dtype::Bf16)
            .unwrap_err()
            .to_string()
            .contains("Int8"));
    }
}
