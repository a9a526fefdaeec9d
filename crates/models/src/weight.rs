//! A weight matrix as the CPU kernels take it: kept in its GGUF block format when a quantized
//! kernel reads that format, else dequantized to f32.

use std::borrow::Cow;

use tokenfab_backend::cpu::{self, Matrix};
use tokenfab_backend::{QMatrix, QType};
use tokenfab_loader::{quant, GgmlType, Gguf};

use crate::error::{Error, Result};

/// (rows, cols): one row per output feature.
#[derive(Clone, Debug)]
pub enum Weight {
    F32(Matrix),
    Quant(QMatrix),
}

fn qtype(t: GgmlType) -> Option<QType> {
    Some(match t {
        GgmlType::Q4_0 => QType::Q4_0,
        GgmlType::Q4_1 => QType::Q4_1,
        GgmlType::Q5_0 => QType::Q5_0,
        GgmlType::Q5_1 => QType::Q5_1,
        GgmlType::Q8_0 => QType::Q8_0,
        GgmlType::Q4K => QType::Q4_K,
        GgmlType::Q5K => QType::Q5_K,
        GgmlType::Q6K => QType::Q6_K,
        _ => return None,
    })
}

fn ggml(t: QType) -> GgmlType {
    match t {
        QType::Q4_0 => GgmlType::Q4_0,
        QType::Q4_1 => GgmlType::Q4_1,
        QType::Q5_0 => GgmlType::Q5_0,
        QType::Q5_1 => GgmlType::Q5_1,
        QType::Q8_0 => GgmlType::Q8_0,
        QType::Q4_K => GgmlType::Q4K,
        QType::Q5_K => GgmlType::Q5K,
        QType::Q6_K => GgmlType::Q6K,
    }
}

/// The raw tensor `name` of ggml dims `[cols, rows]` (trailing 1s allowed), checked.
pub(crate) fn raw<'g>(g: &'g Gguf, name: &str, dims: &[u64]) -> Result<(GgmlType, &'g [u8])> {
    let t = g
        .tensor(name)
        .ok_or_else(|| tokenfab_loader::Error::MissingTensor(name.into()))?;
    let mut found = t.dims.clone();
    while found.len() > dims.len() && found.last() == Some(&1) {
        found.pop();
    }
    if found != dims {
        return Err(Error::Shape {
            name: name.into(),
            expected: dims.to_vec(),
            found: t.dims.clone(),
        });
    }
    Ok((t.ty, g.tensor_bytes(t)))
}

/// Dequantizes a whole tensor to f32.
pub(crate) fn dequant(name: &str, ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    quant::dequantize(ty, bytes, &mut out).map_err(|e| match e {
        tokenfab_loader::Error::UnsupportedType { ty, .. } => {
            tokenfab_loader::Error::UnsupportedType {
                name: name.into(),
                ty,
            }
        }
        e => e,
    })?;
    Ok(out)
}

impl Weight {
    /// Reads a (rows, cols) weight: quantized formats the kernels know stay as they are (unless
    /// `f32_only`), everything else becomes f32.
    pub fn load(g: &Gguf, name: &str, rows: usize, cols: usize, f32_only: bool) -> Result<Self> {
        let (ty, bytes) = raw(g, name, &[cols as u64, rows as u64])?;
        match qtype(ty).filter(|_| !f32_only) {
            Some(q) => Ok(Weight::Quant(
                QMatrix::new(q, rows, cols, bytes.to_vec())
                    .map_err(|e| Error::Config(e.to_string()))?,
            )),
            None => Ok(Weight::F32(Matrix::new(
                rows,
                cols,
                dequant(name, ty, bytes, rows * cols)?,
            ))),
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Weight::F32(m) => m.rows,
            Weight::Quant(q) => q.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::F32(m) => m.cols,
            Weight::Quant(q) => q.cols,
        }
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(m) => m.data.len() * 4,
            Weight::Quant(q) => q.bytes().len(),
        }
    }

    /// `y (n, rows) = x (n, cols) · selfᵀ`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        match self {
            Weight::F32(m) => cpu::matmul(x, n, m, y),
            Weight::Quant(q) => cpu::matmul_q(x, n, q, y),
        }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::F32(m) => out.copy_from_slice(m.row(r)),
            Weight::Quant(q) => {
                quant::dequantize(ggml(q.ty), q.row(r), out).expect("validated block sizes")
            }
        }
    }

    /// The whole matrix as f32 (borrowed when it already is).
    pub fn f32(&self) -> Cow<'_, Matrix> {
        match self {
            Weight::F32(m) => Cow::Borrowed(m),
            Weight::Quant(q) => {
                let mut data = vec![0f32; q.rows * q.cols];
                quant::dequantize(ggml(q.ty), q.bytes(), &mut data).expect("validated block sizes");
                Cow::Owned(Matrix::new(q.rows, q.cols, data))
            }
        }
    }

    /// Stacks matrices of equal width row-wise (Q, K, V into one product). Same quantized format:
    /// blocks are concatenated; otherwise everything becomes f32.
    pub fn stack(parts: Vec<Weight>) -> Weight {
        let cols = parts[0].cols();
        let rows = parts.iter().map(Weight::rows).sum();
        let same_q = match &parts[0] {
            Weight::Quant(q0) => parts
                .iter()
                .all(|p| matches!(p, Weight::Quant(q) if q.ty == q0.ty))
                .then_some(q0.ty),
            Weight::F32(_) => None,
        };
        match same_q {
            Some(ty) => {
                let bytes = parts
                    .iter()
                    .flat_map(|p| match p {
                        Weight::Quant(q) => q.bytes().iter().copied(),
                        Weight::F32(_) => unreachable!("all quantized"),
                    })
                    .collect();
                Weight::Quant(QMatrix::new(ty, rows, cols, bytes).expect("whole rows of blocks"))
            }
            None => {
                let data = parts.iter().flat_map(|p| p.f32().data.clone()).collect();
                Weight::F32(Matrix::new(rows, cols, data))
            }
        }
    }
}
