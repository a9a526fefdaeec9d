//! A weight matrix as the CPU kernels take it: in its GGUF block format when a quantized kernel
//! reads that format, else f32; or, for matrices stacked from parts stored in different formats
//! (Q, K and V of a layer in two quantizations), the parts, each written into its own columns of
//! the product.

use std::borrow::Cow;

use tokenfab_loader::{quant, GgmlType};

use super::{
    glu_rows, matmul_cols, matmul_q_cols, matmul_q_glu_isa, matmul_q_to_glu_isa, Activation, Isa,
    Matrix, QMatrix, QType,
};

/// (rows, cols): one row per output feature.
#[derive(Clone, Debug)]
pub enum Weight {
    F32(Matrix),
    Quant(QMatrix),
    /// Row blocks of one matrix, top to bottom, in different formats (never nested, never one).
    Parts(Vec<Weight>),
}

impl QType {
    /// The GGUF type of these blocks.
    pub fn ggml(self) -> GgmlType {
        match self {
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

    /// The kernels' type for a GGUF type, if they read it.
    pub fn of(t: GgmlType) -> Option<QType> {
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
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::F32(m) => m.rows,
            Weight::Quant(q) => q.rows,
            Weight::Parts(p) => p.iter().map(Weight::rows).sum(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::F32(m) => m.cols,
            Weight::Quant(q) => q.cols,
            Weight::Parts(p) => p[0].cols(),
        }
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(m) => m.data.len() * 4,
            Weight::Quant(q) => q.bytes().len(),
            Weight::Parts(p) => p.iter().map(Weight::bytes).sum(),
        }
    }

    /// `y (n, rows) = x (n, cols) · selfᵀ`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.matmul_cols(x, n, y, self.rows(), 0)
    }

    /// `y (n, rows) = (act(gate) * up) · selfᵀ` for `gu` (n, 2 cols) = gate | up. A quantized
    /// matrix quantizes each activated row as it computes it ([`matmul_q_glu_isa`]: the same
    /// bits) and leaves `h` as it was; any other writes `h (n, cols)` and multiplies that.
    pub fn glu_matmul(&self, act: Activation, gu: &[f32], n: usize, h: &mut [f32], y: &mut [f32]) {
        match self {
            Weight::Quant(q) => matmul_q_glu_isa(Isa::detect(), act, gu, n, q, y),
            _ => {
                glu_rows(act, gu, h, self.cols());
                self.matmul(h, n, y);
            }
        }
    }

    /// `h (n, rows / 2) = act(gate) * up` for `gate | up = x (n, cols) · selfᵀ`, when a fused
    /// kernel does it without writing `gate | up` ([`matmul_q_to_glu_isa`]); otherwise writes
    /// `gu (n, rows) = x · selfᵀ` and returns false (the caller then runs [`Self::glu_matmul`]
    /// of the next matrix on `gu`).
    pub fn matmul_glu(
        &self,
        act: Activation,
        x: &[f32],
        n: usize,
        gu: &mut [f32],
        h: &mut [f32],
    ) -> bool {
        if let Weight::Quant(q) = self {
            if matmul_q_to_glu_isa(Isa::detect(), act, x, n, q, h) {
                return true;
            }
        }
        self.matmul(x, n, gu);
        false
    }

    /// The product into columns `col..col + rows` of `y` (n, stride).
    fn matmul_cols(&self, x: &[f32], n: usize, y: &mut [f32], stride: usize, col: usize) {
        match self {
            Weight::F32(m) => matmul_cols(x, n, m, y, stride, col),
            Weight::Quant(q) => matmul_q_cols(x, n, q, y, stride, col),
            Weight::Parts(parts) => {
                let mut c = col;
                for p in parts {
                    p.matmul_cols(x, n, y, stride, c);
                    c += p.rows();
                }
            }
        }
    }

    /// Builds the repacked copies the CPU kernels read (see [`QMatrix::prepack`]).
    pub fn prepack(&self) {
        match self {
            Weight::F32(_) => {}
            Weight::Quant(q) => q.prepack(),
            Weight::Parts(parts) => parts.iter().for_each(Weight::prepack),
        }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::F32(m) => out.copy_from_slice(m.row(r)),
            Weight::Quant(q) => {
                quant::dequantize(q.ty.ggml(), q.row(r), out).expect("validated block sizes")
            }
            Weight::Parts(parts) => {
                let mut r = r;
                for p in parts {
                    if r < p.rows() {
                        return p.row_f32(r, out);
                    }
                    r -= p.rows();
                }
                panic!("row outside the matrix");
            }
        }
    }

    /// The whole matrix as f32 (borrowed when it already is).
    pub fn f32(&self) -> Cow<'_, Matrix> {
        match self {
            Weight::F32(m) => Cow::Borrowed(m),
            Weight::Quant(q) => {
                let mut data = vec![0f32; q.rows * q.cols];
                quant::dequantize(q.ty.ggml(), q.bytes(), &mut data)
                    .expect("validated block sizes");
                Cow::Owned(Matrix::new(q.rows, q.cols, data))
            }
            Weight::Parts(parts) => {
                let data = parts.iter().flat_map(|p| p.f32().data.clone()).collect();
                Cow::Owned(Matrix::new(self.rows(), self.cols(), data))
            }
        }
    }

    /// Stacks matrices of equal width row-wise (Q, K, V into one product). Neighbours in the same
    /// format are joined (quantized blocks concatenated, f32 rows appended); what remains in
    /// different formats becomes [`Weight::Parts`].
    pub fn stack(parts: Vec<Weight>) -> Weight {
        let cols = parts[0].cols();
        let mut out: Vec<Weight> = Vec::new();
        for p in parts.into_iter().flat_map(|p| match p {
            Weight::Parts(v) => v,
            w => vec![w],
        }) {
            assert_eq!(p.cols(), cols, "stacked matrices have equal widths");
            match (out.last_mut(), p) {
                (Some(Weight::Quant(a)), Weight::Quant(b)) if a.ty == b.ty => {
                    let mut bytes = a.bytes().to_vec();
                    bytes.extend_from_slice(b.bytes());
                    *a = QMatrix::new(a.ty, a.rows + b.rows, cols, bytes)
                        .expect("whole rows of blocks");
                }
                (Some(Weight::F32(a)), Weight::F32(b)) => {
                    a.data.extend_from_slice(&b.data);
                    a.rows += b.rows;
                }
                (_, p) => out.push(p),
            }
        }
        match out.len() {
            1 => out.pop().expect("one part"),
            _ => Weight::Parts(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ty: GgmlType, rows: usize, seed: f32) -> (Weight, Vec<f32>) {
        let v: Vec<f32> = (0..rows * 64)
            .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.5)
            .collect();
        let mut bytes = Vec::new();
        quant::quantize(ty, &v, &mut bytes).unwrap();
        let mut deq = vec![0f32; v.len()];
        quant::dequantize(ty, &bytes, &mut deq).unwrap();
        let w = QMatrix::new(QType::of(ty).unwrap(), rows, 64, bytes).unwrap();
        (Weight::Quant(w), deq)
    }

    /// Q5_0 | Q5_0 | Q8_0 (a Gemma 3 layer's Q, K, V): the first two join, the third stays a
    /// part, and the stacked product equals the product of the stacked dequantized rows.
    #[test]
    fn mixed_formats_stack_into_parts_that_multiply_as_one() {
        let (a, da) = q(GgmlType::Q5_0, 8, 0.0);
        let (b, db) = q(GgmlType::Q5_0, 4, 1.0);
        let (c, dc) = q(GgmlType::Q8_0, 4, 2.0);
        let w = Weight::stack(vec![a, b, c]);
        let Weight::Parts(parts) = &w else {
            panic!("mixed formats stay parts")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!((w.rows(), w.cols()), (16, 64));
        let all: Vec<f32> = da.iter().chain(&db).chain(&dc).copied().collect();
        assert_eq!(w.f32().data, all);
        let mut row = vec![0f32; 64];
        w.row_f32(13, &mut row);
        assert_eq!(row, &all[13 * 64..14 * 64]);

        let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut y = vec![0f32; 3 * 16];
        w.matmul(&x, 3, &mut y);
        let f = Weight::F32(Matrix::new(16, 64, all));
        let mut want = vec![0f32; 3 * 16];
        f.matmul(&x, 3, &mut want);
        for (a, b) in y.iter().zip(&want) {
            // 8-bit activations against f32 ones.
            assert!((a - b).abs() < 0.05, "{a} vs {b}");
        }
        // f32 neighbours join too.
        let s = Weight::stack(vec![
            Weight::F32(Matrix::new(1, 2, vec![1.0, 2.0])),
            Weight::F32(Matrix::new(1, 2, vec![3.0, 4.0])),
        ]);
        assert!(matches!(&s, Weight::F32(m) if m.data == [1.0, 2.0, 3.0, 4.0]));
    }

    /// SwiGLU then the product, in one call: a quantized matrix (fused, `h` untouched), parts in
    /// two formats and an f32 matrix (through `h`) give the bits of the two separate steps.
    #[test]
    fn glu_matmul_equals_glu_then_matmul_for_every_kind_of_weight() {
        let (a, _) = q(GgmlType::Q4_1, 8, 0.5);
        let (b, _) = q(GgmlType::Q8_0, 4, 1.5);
        let parts = Weight::stack(vec![a.clone(), b]);
        assert!(matches!(parts, Weight::Parts(_)));
        let dense = Weight::F32(a.f32().into_owned());
        let n = 19;
        let gu: Vec<f32> = (0..n * 2 * 64)
            .map(|i| (i as f32 * 0.71).sin() * 4.0)
            .collect();
        for w in [a, parts, dense] {
            let mut h = vec![0f32; n * 64];
            glu_rows(Activation::Silu, &gu, &mut h, 64);
            let mut want = vec![0f32; n * w.rows()];
            w.matmul(&h, n, &mut want);
            let mut h2 = vec![7f32; n * 64];
            let mut y = vec![f32::NAN; n * w.rows()];
            w.glu_matmul(Activation::Silu, &gu, n, &mut h2, &mut y);
            assert_eq!(y, want, "{:?}", std::mem::discriminant(&w));
            if matches!(w, Weight::Quant(_)) {
                assert!(h2.iter().all(|&v| v == 7.0), "the fused product wrote h");
            }
        }
    }
}
