//! Which checkpoint tensor becomes which GGUF tensor, in which type, and the conversions that
//! need a copy (row permutation, norm offset, quantization), run in parallel over tensors.

use rayon::prelude::*;

use super::arch::{self, Arch, ArchMeta, Op};
use super::{resolve, unsupported, Quantization};
use crate::quant;
use crate::safetensors::{SafeTensors, StTensor};
use crate::{Error, GgmlType, Result, TensorInfo};

/// One tensor of the GGUF view and where it comes from.
pub(super) struct Planned {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous one.
    pub dims: Vec<u64>,
    pub shard: usize,
    pub src: StTensor,
    pub in_ty: GgmlType,
    pub op: Op,
    pub out_ty: GgmlType,
    /// Rounded through FP8 E4M3 with one scale for the tensor before it is stored
    /// (`--quantization fp8`; per tensor as the device's FP8 product takes it).
    pub fp8: bool,
}

impl Planned {
    /// Served from the mapping as it is: nothing to compute.
    fn mapped(&self) -> bool {
        matches!(self.op, Op::Keep | Op::FirstRows(_)) && self.out_ty == self.in_ty && !self.fp8
    }

    fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// Where the bytes of one tensor of the view live.
pub(super) enum Source {
    Shard { shard: usize, start: usize },
    Owned(Vec<u8>),
}

/// Maps every tensor of `shards` and picks its stored type.
pub(super) fn plan(
    arch: Arch,
    m: &ArchMeta,
    shards: &[SafeTensors],
    tied: bool,
    n_vocab: usize,
    q: Quantization,
) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for (shard, st) in shards.iter().enumerate() {
        for t in &st.tensors {
            let Some((name, op)) = arch::map_tensor(arch, &t.name, m, tied, n_vocab)? else {
                continue;
            };
            let in_ty = t.ggml_type()?;
            let mut dims: Vec<u64> = t.shape.iter().rev().copied().collect();
            // A scalar (a KV cache scale) is one value.
            if dims.is_empty() {
                dims.push(1);
            }
            if dims.len() > 2 {
                return Err(unsupported(format!(
                    "tensor `{}` has shape {:?}; scalars, 1-D and 2-D tensors are supported",
                    t.name, t.shape
                )));
            }
            if let Op::FirstRows(n) = op {
                let rows = dims.last_mut().expect("not empty");
                *rows = (*rows).min(n as u64);
            }
            let out_ty = if op == Op::AddOne {
                GgmlType::F32
            } else {
                in_ty
            };
            plan.push(Planned {
                name,
                dims,
                shard,
                src: t.clone(),
                in_ty,
                op,
                out_ty,
                fp8: false,
            });
        }
    }
    if let Some(dup) = plan
        .iter()
        .enumerate()
        .find(|(i, p)| plan[..*i].iter().any(|o| o.name == p.name))
    {
        return Err(unsupported(format!(
            "two checkpoint tensors map to `{}` (the second is `{}`)",
            dup.1.name, dup.1.src.name
        )));
    }
    // Matrices whose rows are whole blocks are quantized; norms, biases and RoPE factors are not.
    let is_matrix = |p: &Planned| {
        p.dims.len() == 2 && p.name.ends_with(".weight") && p.dims[0].is_multiple_of(32)
    };
    let matrix_types: Vec<GgmlType> = plan
        .iter()
        .filter(|p| is_matrix(p))
        .map(|p| p.in_ty)
        .collect();
    if let Some(qt) = resolve(q, &matrix_types) {
        let output = if plan.iter().any(|p| p.name == "output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        for p in plan.iter_mut().filter(|p| is_matrix(p)) {
            p.fp8 = q == Quantization::Fp8;
            p.out_ty = if matches!(qt, GgmlType::Q4_0 | GgmlType::Q4_1) && p.name == output {
                GgmlType::Q8_0
            } else {
                qt
            };
        }
    }
    Ok(plan)
}

/// The view's tensors (offsets still 0) with their bytes, then the generated F32 tensors.
pub(super) fn run(
    plan: &[Planned],
    shards: &[SafeTensors],
    extra: &[(String, Vec<f32>)],
) -> Result<Vec<(TensorInfo, Source)>> {
    let mut out: Vec<(TensorInfo, Source)> =
        plan.par_iter()
            .map(|p| {
                let n_bytes =
                    p.out_ty.bytes_for(p.n_elements() as u64).ok_or_else(|| {
                        unsupported(format!("tensor `{}` is too large", p.src.name))
                    })? as usize;
                let info = TensorInfo {
                    name: p.name.clone(),
                    dims: p.dims.clone(),
                    ty: p.out_ty,
                    offset: 0,
                    n_bytes,
                };
                let src = if p.mapped() {
                    Source::Shard {
                        shard: p.shard,
                        start: p.src.start,
                    }
                } else {
                    Source::Owned(convert(p, shards[p.shard].bytes(&p.src))?)
                };
                Ok((info, src))
            })
            .collect::<Result<_>>()?;
    for (name, values) in extra {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.push((
            TensorInfo {
                name: name.clone(),
                dims: vec![values.len() as u64],
                ty: GgmlType::F32,
                offset: 0,
                n_bytes: bytes.len(),
            },
            Source::Owned(bytes),
        ));
    }
    Ok(out)
}

/// Dequantizes, transforms and re-encodes one tensor.
fn convert(p: &Planned, bytes: &[u8]) -> Result<Vec<u8>> {
    let n = p.n_elements();
    let named = |e: Error| match e {
        Error::BadTensor { reason, .. } => Error::BadTensor {
            name: p.src.name.clone(),
            reason,
        },
        Error::UnsupportedType { ty, .. } => Error::UnsupportedType {
            name: p.src.name.clone(),
            ty,
        },
        e => e,
    };
    let in_bytes = n * p.in_ty.block_bytes() / p.in_ty.block_len();
    let cols = p.dims[0] as usize;
    let half = matches!(p.in_ty, GgmlType::BF16 | GgmlType::F16);
    if p.fp8 && half && matches!(p.op, Op::Keep | Op::FirstRows(_)) {
        // FP8 rounding straight from the stored bf16/f16, a row at a time: no f32 copy of the
        // tensor (the permuted Q/K rows below still take one).
        let mut out = Vec::with_capacity(p.out_ty.bytes_for(n as u64).unwrap_or(0) as usize);
        let bf = p.in_ty == GgmlType::BF16;
        quant::fp8::round_half_rows(&bytes[..in_bytes], bf, cols, |row| {
            quant::quantize(p.out_ty, row, &mut out)
        })
        .map_err(named)?;
        return Ok(out);
    }
    let mut x = quant::dequantize_to_vec(p.in_ty, &bytes[..in_bytes], n).map_err(named)?;
    match p.op {
        Op::Keep | Op::FirstRows(_) => {}
        Op::AddOne => x.iter_mut().for_each(|v| *v += 1.0),
        Op::Permute { heads } => {
            x = permute_rows(&x, p.dims[p.dims.len() - 1] as usize, heads).ok_or_else(|| {
                Error::BadTensor {
                    name: p.src.name.clone(),
                    reason: format!(
                        "shape {:?} does not split into {heads} heads of paired rows",
                        p.src.shape
                    ),
                }
            })?
        }
    }
    if p.fp8 {
        use quant::fp8::{Fp8Matrix, Fp8Scaling};
        x = Fp8Matrix::quantize(&x, n / cols.max(1), cols, Fp8Scaling::PerTensor)
            .map_err(named)?
            .dequantize();
    }
    let mut out = Vec::with_capacity(p.out_ty.bytes_for(n as u64).unwrap_or(0) as usize);
    // Row by row keeps the f32 copy the only large temporary; quantizers work per block anyway.
    for row in x.chunks(cols.max(1)) {
        quant::quantize(p.out_ty, row, &mut out).map_err(named)?;
    }
    Ok(out)
}

/// llama.cpp's `LlamaModel.permute` (`reshape(heads, 2, rows / heads / 2, cols)
/// .swapaxes(1, 2)`): within each head, row `2i + j` of the result is row `j * half + i` of `x`.
/// `None` when the rows do not split into heads of an even number of rows.
pub(super) fn permute_rows(x: &[f32], rows: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0
        || rows == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !x.len().is_multiple_of(rows)
    {
        return None;
    }
    let cols = x.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = h * hd + j * half + i;
                let to = h * hd + 2 * i + j;
                out[to * cols..(to + 1) * cols].copy_from_slice(&x[from * cols..(from + 1) * cols]);
            }
        }
    }
    Some(out)
}
