//! The model's weights on the device: a host matrix uploaded (bf16, or FP8 codes with one scale
//! for the layers' matrices), or a dummy model's generated there from its seed.

use half::bf16;
use rayon::prelude::*;
use tokenfab_backend::cuda::fp8::{self, DevFp8Matrix, DevWeight};
use tokenfab_backend::cuda::launch::DevMatrix;
use tokenfab_backend::cuda::{Gpu, GpuBuf};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::weight::{MatrixRole, Weight, Weights};

fn to_bf16(m: &[f32]) -> Vec<bf16> {
    m.par_iter().map(|&v| bf16::from_f32(v)).collect()
}

/// One host matrix on the device: FP8 (quantized here with one scale, the twin of the device's
/// activation quantization) for layer matrices when `fp8`, else bf16.
pub(super) fn upload_matrix(
    gpu: &Gpu,
    role: MatrixRole,
    w: &Weight,
    fp8: bool,
) -> Result<DevWeight> {
    let m = w.f32();
    if fp8 && role == MatrixRole::Layer {
        let q = fp8::quantize_reference(&m.data, m.rows, m.cols)?;
        return Ok(DevWeight::Fp8(DevFp8Matrix {
            rows: m.rows,
            cols: m.cols,
            codes: gpu.upload(&q.codes)?,
            scale: gpu.upload(&q.scales)?,
        }));
    }
    Ok(DevWeight::Bf16(DevMatrix {
        rows: m.rows,
        cols: m.cols,
        data: gpu.upload(&to_bf16(&m.data))?,
    }))
}

/// A matrix stacked from dummy tensors `parts` (name, rows), each `cols` wide with fan-in
/// `cols`, generated on the device: bf16, or FP8 codes with the parts' common scale `a / 448`.
fn dummy_matrix(
    gpu: &Gpu,
    seed: u64,
    parts: &[(String, usize)],
    cols: usize,
    fp8: bool,
) -> Result<DevWeight> {
    let rows: usize = parts.iter().map(|p| p.1).sum();
    let a = fp8::dummy_range(cols);
    let mut at = 0;
    if fp8 {
        let mut codes = gpu.zeros::<u8>(rows * cols)?;
        for (name, r) in parts {
            gpu.dummy_fill_fp8(&mut codes, (at, r * cols), fp8::dummy_key(seed, name))?;
            at += r * cols;
        }
        return Ok(DevWeight::Fp8(DevFp8Matrix {
            rows,
            cols,
            codes,
            scale: gpu.upload(&[a / tokenfab_loader::quant::fp8::E4M3_MAX])?,
        }));
    }
    let mut data = gpu.zeros::<bf16>(rows * cols)?;
    for (name, r) in parts {
        gpu.dummy_fill_bf16(&mut data, (at, r * cols), fp8::dummy_key(seed, name), a)?;
        at += r * cols;
    }
    Ok(DevWeight::Bf16(DevMatrix { rows, cols, data }))
}

/// The weights of a [`crate::model::DeviceDummy`], made on the device: the same tensors, names
/// and values as the host's dummy GGUF (`tokenfab_engine::dummy::build_gguf`), the layers'
/// matrices in FP8 when `fp8`; nothing of them passes through host memory.
pub(super) fn dummy_weights(
    gpu: &Gpu,
    c: &ModelConfig,
    d: crate::model::DeviceDummy,
    fp8: bool,
) -> Result<Weights<DevWeight, GpuBuf<f32>>> {
    let seed = d.seed;
    let one = |name: &str, rows: usize| vec![(name.to_string(), rows)];
    let ones = || -> Result<GpuBuf<f32>> { Ok(gpu.upload(&vec![1f32; c.dim])?) };
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let qkv = [
            (n("attn_q.weight"), c.q_dim()),
            (n("attn_k.weight"), c.kv_dim()),
            (n("attn_v.weight"), c.kv_dim()),
        ];
        let gate_up = [
            (n("ffn_gate.weight"), c.ffn_dim),
            (n("ffn_up.weight"), c.ffn_dim),
        ];
        layers.push(crate::weight::LayerWeights {
            attn_norm: ones()?,
            wqkv: dummy_matrix(gpu, seed, &qkv, c.dim, fp8)?,
            bqkv: None,
            q_norm: None,
            k_norm: None,
            wo: dummy_matrix(
                gpu,
                seed,
                &one(&n("attn_output.weight"), c.dim),
                c.q_dim(),
                fp8,
            )?,
            post_attn_norm: None,
            ffn_norm: ones()?,
            w_gate_up: dummy_matrix(gpu, seed, &gate_up, c.dim, fp8)?,
            w_down: dummy_matrix(
                gpu,
                seed,
                &one(&n("ffn_down.weight"), c.dim),
                c.ffn_dim,
                fp8,
            )?,
            post_ffn_norm: None,
        });
    }
    let vocab = |name: &str| dummy_matrix(gpu, seed, &one(name, c.vocab_size), c.dim, false);
    Ok(Weights {
        tok_embd: vocab("token_embd.weight")?,
        output: if d.tied_embeddings {
            None
        } else {
            Some(vocab("output.weight")?)
        },
        output_norm: ones()?,
        layers,
    })
}
