//! GGML weight blocks to f32 and back.
//!
//! [`dequantize`] follows ggml's `dequantize_row_*` (ggml-quants.c) value for value: the same block
//! layouts (ggml-common.h), the same element order and the same float operations in the same order.
//! [`quantize`] follows ggml's `quantize_row_*_ref`, the deterministic reference quantizers that
//! llama.cpp's own tools use to write model files; see [`quantize`] for how close each one is.
//!
//! Both work block by block over fixed-size arrays (`dequant.rs`, `quantize.rs`), so the hot loops
//! carry no per-element bounds checks and allocate nothing. Lengths are checked once, up front, and
//! a mismatch is an [`Error`], never a panic.

mod dequant;
pub mod fp8;
mod quantize;

#[cfg(test)]
mod tests_hand;
#[cfg(test)]
mod tests_roundtrip;

use crate::{Error, GgmlType, Result};

/// The name used in errors: these functions see bytes, not tensors. Callers that know the tensor's
/// name may rewrap the error.
const WHAT: &str = "<quant buffer>";

/// Whether [`dequantize`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | Q8K
    )
}

/// Whether [`quantize`] handles `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K
    )
}

/// Checks that `n` values are a whole number of `ty` blocks and returns their size in bytes.
fn bytes_for(ty: GgmlType, n: usize) -> Result<usize> {
    let bl = ty.block_len();
    // (n / bl) * bl rather than is_multiple_of: the workspace's MSRV is 1.85.
    if (n / bl) * bl != n {
        return Err(Error::BadTensor {
            name: WHAT.into(),
            reason: format!(
                "{n} values is not a whole number of {ty} blocks ({bl} values per block)"
            ),
        });
    }
    (n / bl)
        .checked_mul(ty.block_bytes())
        .ok_or_else(|| Error::BadTensor {
            name: WHAT.into(),
            reason: format!("{n} values of {ty} overflow the address space"),
        })
}

fn unsupported(ty: GgmlType, what: &str) -> Error {
    Error::UnsupportedType {
        name: format!("{WHAT} ({what})"),
        ty: ty.to_string(),
    }
}

/// Decodes `dst.len()` values of type `ty` from `src` into `dst`.
///
/// `dst.len()` must be a whole number of blocks and `src.len()` exactly their size in bytes.
/// Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K
/// (see [`can_dequantize`]); other types give [`Error::UnsupportedType`].
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(ty) {
        return Err(unsupported(ty, "dequantize"));
    }
    let need = bytes_for(ty, dst.len())?;
    if src.len() != need {
        return Err(Error::BadTensor {
            name: WHAT.into(),
            reason: format!(
                "{} values of {ty} take {need} bytes, got {} bytes",
                dst.len(),
                src.len()
            ),
        });
    }
    dequant::run(ty, src, dst);
    Ok(())
}

/// Decodes `n` values of type `ty` from `src` into a new vector; see [`dequantize`].
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>> {
    // Validate before allocating: `n` may come from an untrusted file header.
    if !can_dequantize(ty) {
        return Err(unsupported(ty, "dequantize"));
    }
    if bytes_for(ty, n)? != src.len() {
        return Err(Error::BadTensor {
            name: WHAT.into(),
            reason: format!("{n} values of {ty} do not take {} bytes", src.len()),
        });
    }
    let mut out = vec![0.0; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Encodes `src` as `ty` and appends the bytes to `dst`.
///
/// `src.len()` must be a whole number of blocks. How close each type is to ggml:
/// - F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: ggml's `quantize_row_*_ref` (and its
///   `fp32_to_fp16` / `fp32_to_bf16`) step by step, rounding included.
/// - Q4_K, Q5_K, Q6_K: ggml's `quantize_row_*_ref` algorithm step by step as well (the
///   `make_qkx2_quants` scale/min search for Q4_K/Q5_K, `make_qx_quants` for Q6_K, 6- or 8-bit
///   scale quantization, then re-rounding against the stored scales). It is not checked byte for
///   byte against ggml's output here; a C compiler contracting `a*b+c` into one FMA can make ggml
///   itself differ between builds in rare ties.
/// - Q2_K, Q3_K, Q8_K and the integer types: not implemented ([`Error::UnsupportedType`]).
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut Vec<u8>) -> Result<()> {
    if !can_quantize(ty) {
        return Err(unsupported(ty, "quantize"));
    }
    let need = bytes_for(ty, src.len())?;
    let start = dst.len();
    dst.resize(start + need, 0);
    quantize::run(ty, src, &mut dst[start..]);
    Ok(())
}
