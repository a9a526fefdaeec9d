//! Quantized matrix products: weights stay in their GGUF blocks, activations are quantized to 8 bits
//! per block of 32 (as llama.cpp's q8_0/q8_1), and the inner products are integer.
//!
//! One matmul call:
//! 1. `x (n, cols)` is quantized once into a per-thread [`Acts`] buffer (grown, never shrunk);
//!    [`matmul_q_glu_isa`] computes each row of x from the FFN's gate | up first (SwiGLU fused),
//!    and on AVX-512 [`matmul_q_to_glu_isa`] has the gate | up product write SwiGLU's output
//!    instead of its own.
//! 2. Output rows are split over rayon's pool in tasks of [`ROWS_PER_TASK`]. A task walks its rows
//!    [`NR`] at a time: `expand` unpacks those rows' GGUF blocks into a small per-thread [`WTile`]
//!    (one unsigned byte per weight plus per-lane scales; a few KiB, L1-resident), then the
//!    instruction set's kernel multiplies that tile with all `n` quantized rows of x.
//!
//! Every weight format reduces to the same sum, so one kernel per instruction set serves all:
//! `y[i][r] = Σ_b Σ_lane dw[r][b][lane] · dx[i][b] · Σ_{4 elems of lane} uw · qx  +  Σ_h mw[r][h] · sx[i][h]`
//! where a block `b` is 32 elements, a lane 4 of them (the i32 lanes of `maddubs`+`madd` or
//! `vpdpbusd`), and `h` a half block of 16: `sx = dx · Σ qx` over the half, `mw` the weight's
//! offset (Q4_0: `-8·d`, Q4_1: `m`, Q4_K: `-dmin·m`, Q6_K: `-32·d·sc`, Q8_0 on VNNI: `-128·d`).
//!
//! Exception, the hot one: Q4_0/Q4_1/Q8_0 (the default model's formats) use the packed path at
//! every batch size: the matrix repacked once into groups of 16 rows, one row per i32 lane, so a
//! block's 32 products accumulate in i32 and the float work per block is 4 ops per 16 rows instead
//! of 4 per row. `packed.rs` runs it on AVX-512 VNNI (zmm), `packed256.rs` on AVX-VNNI or AVX2
//! (two ymm halves per group; AVX2 for Q4 only). Batches of [`WIDE_MIN_ROWS`]+ rows read a
//! second, wide copy of a Q4 matrix (a byte per weight, no nibble unpack in the loop).
//!
//! On aarch64 every format takes the tiled path: `neon.rs` (`sdot` with dotprod, `smull` and
//! pairwise adds without, bit-identical to each other).

mod expand;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(target_arch = "x86_64")]
mod packed256;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::ops::Range;
#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

use super::{glu_row, two_phase, Activation, Isa, SendPtr};
use crate::error::{Error, Result};

/// Elements per activation block (and per weight sub-block the kernels see).
pub(crate) const QK: usize = 32;
/// Weight rows expanded and multiplied together: the kernels' register tile height.
pub(crate) const NR: usize = 4;
/// Output rows handed to one pool task: small enough to spread a single token over all cores.
const ROWS_PER_TASK: usize = 32;
/// Batches of fewer rows quantize x on the calling thread.
const PAR_QUANTIZE_ROWS: usize = 16;
/// Batches of at least this many rows use a Q4 matrix's wide packing: its weights are reused by
/// enough rows of x that unpacking nibbles costs more than reading twice the bytes.
#[cfg(target_arch = "x86_64")]
const WIDE_MIN_ROWS: usize = 16;
/// Batches of at least this many rows per thread split a small matrix by rows of x (see
/// [`packed::PackedPlan::row_blocks`]).
#[cfg(target_arch = "x86_64")]
const ROW_SPLIT_MIN_ROWS: usize = 12;
// ... when every thread reading all of the packed matrix reads at most
// `Tuning::row_split_max_bytes` in all (chosen from the L2's size; with many threads the split
// by groups, which reads each byte once, wins). Tasks per thread: `Tuning::tasks_per_thread`.

/// A GGUF block format the quantized kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QType {
    /// f16 d, 16 bytes of nibbles: x = d·(q − 8).
    Q4_0,
    /// f16 d, f16 m, 16 bytes of nibbles: x = d·q + m.
    Q4_1,
    /// f16 d, u32 high bits, 16 bytes of nibbles: x = d·(q − 16).
    Q5_0,
    /// f16 d, f16 m, u32 high bits, 16 bytes of nibbles: x = d·q + m.
    Q5_1,
    /// f16 d, 32 i8: x = d·q.
    Q8_0,
    /// 256-element super-blocks: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes.
    Q4_K,
    /// As Q4_K plus 32 bytes of fifth bits.
    Q5_K,
    /// 256-element super-blocks: 128 bytes low nibbles, 64 bytes high bits, 16 i8 scales, f16 d.
    Q6_K,
}

impl QType {
    /// Elements per GGUF block.
    pub fn block_len(self) -> usize {
        match self {
            QType::Q4_K | QType::Q5_K | QType::Q6_K => 256,
            _ => 32,
        }
    }

    /// Bytes per GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4_K => 144,
            QType::Q5_K => 176,
            QType::Q6_K => 210,
        }
    }
}

/// A weight matrix kept in its GGUF block layout: `rows` output features, each row `cols` input
/// features stored as `cols / block_len` consecutive blocks, bytes exactly as GGUF stores them.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub ty: QType,
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols / block_len, block_bytes)
    data: Vec<u8>,
    /// Q4_0/Q4_1/Q8_0 repacked for the AVX-512 VNNI kernel (see `packed.rs`), built on first use.
    #[cfg(target_arch = "x86_64")]
    packed: OnceLock<Vec<u8>>,
    /// Q4_0/Q4_1 repacked with one byte per weight, for batches of [`WIDE_MIN_ROWS`] or more
    /// rows (no nibble unpack in the kernel; 1.8x the bytes of `packed`), built on first use.
    #[cfg(target_arch = "x86_64")]
    wide: OnceLock<Vec<u8>>,
}

impl QMatrix {
    /// Wraps `bytes` (rows · cols / block_len blocks); `cols` must be a whole number of blocks.
    pub fn new(ty: QType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<QMatrix> {
        let bad = |reason: String| Error::BadQMatrix {
            ty,
            rows,
            cols,
            reason,
        };
        if cols == 0 || !cols.is_multiple_of(ty.block_len()) {
            return Err(bad(format!(
                "`cols` must be a positive multiple of {}. Given: {cols}",
                ty.block_len()
            )));
        }
        let need = rows
            .checked_mul(cols / ty.block_len() * ty.block_bytes())
            .ok_or_else(|| bad("size overflows".into()))?;
        if bytes.len() != need {
            return Err(bad(format!(
                "byte length must be {need}. Given: {}",
                bytes.len()
            )));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data: bytes,
            #[cfg(target_arch = "x86_64")]
            packed: OnceLock::new(),
            #[cfg(target_arch = "x86_64")]
            wide: OnceLock::new(),
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    /// The GGUF bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// All the GGUF bytes, (rows, row_bytes).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Builds now the repacked copies the packed path reads on this CPU (decode's, and for Q4
    /// the wide one of batches of [`WIDE_MIN_ROWS`]+ rows), instead of in the first product
    /// that needs each: that product was the first request's prefill, whose time they
    /// dominated. Nothing to do where no packed path reads this format.
    pub fn prepack(&self) {
        #[cfg(target_arch = "x86_64")]
        if packed::packs(Isa::detect(), self.ty) {
            self.packed.get_or_init(|| packed::pack(self, false));
            if self.ty != QType::Q8_0 {
                self.wide.get_or_init(|| packed::pack(self, true));
            }
        }
    }

    /// Bytes of the repacked copies built so far (what the packed kernels read instead of
    /// [`QMatrix::bytes`]; 0 where none is built).
    pub fn packed_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        return [&self.packed, &self.wide]
            .iter()
            .filter_map(|p| p.get().map(Vec::len))
            .sum();
        #[cfg(not(target_arch = "x86_64"))]
        0
    }
}

/// Row geometry shared by the activation buffer and the weight tile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// blocks of 32 per row
    pub nb: usize,
    /// blocks per row padded to even (AVX-512 takes two per register); pad blocks are zero
    pub nbp: usize,
    /// half blocks (16 elements) per row padded to a multiple of 16 floats; pad entries are zero
    pub nhp: usize,
}

impl Geom {
    fn new(cols: usize) -> Geom {
        let nb = cols / QK;
        Geom {
            nb,
            nbp: nb.next_multiple_of(2),
            nhp: (2 * nb).next_multiple_of(16),
        }
    }
}

/// x quantized to 8 bits per block of 32 (q8_1-like): per row `nbp` blocks.
#[derive(Default)]
pub(crate) struct Acts {
    /// (n, nbp * 32): round(x / d), d = max|x| / 127 per block
    pub qx: Vec<i8>,
    /// (n, nbp * 8): each block's d repeated once per 4-element lane (empty after a
    /// packed-only AVX-512 run, whose kernel reads only `qx` and `ds`)
    pub dx: Vec<f32>,
    /// (n, nhp): d · Σ q over each half block of 16 (empty as `dx`)
    pub sx: Vec<f32>,
    /// (n, nbp * 2): per block `[d, sx[2b] + sx[2b + 1]]`, broadcast from memory by `packed.rs`
    pub ds: Vec<f32>,
}

impl Acts {
    /// Sizes the buffers for `n` rows of geometry `g` (grown, never shrunk) and returns raw views
    /// through which rows are then quantized, in parallel if need be. `packed_only`: the caller
    /// reads only `qx` and `ds` (the packed kernel), so the AVX-512 quantizer skips `dx` and `sx`
    /// (a third of the bytes written, and `dx` was the bulk).
    fn prepare(&mut self, isa: Isa, n: usize, g: Geom, packed_only: bool) -> ActsRows {
        let full = !(packed_only && isa == Isa::Avx512Vnni);
        let len = [
            g.nbp * QK,
            if full { g.nbp * 8 } else { 0 },
            if full { g.nhp } else { 0 },
            g.nbp * 2,
        ];
        self.qx.resize(n * len[0], 0);
        self.dx.resize(n * len[1], 0.0);
        self.sx.resize(n * len[2], 0.0);
        self.ds.resize(n * len[3], 0.0);
        ActsRows {
            isa,
            g,
            n,
            len,
            qx: self.qx.as_mut_ptr(),
            dx: self.dx.as_mut_ptr(),
            sx: self.sx.as_mut_ptr(),
            ds: self.ds.as_mut_ptr(),
        }
    }

    /// Quantizes `x (n, g.nb * 32)` into self on this thread.
    #[cfg(test)]
    fn quantize(&mut self, isa: Isa, x: &[f32], n: usize, g: Geom, packed_only: bool) {
        let rows = self.prepare(isa, n, g, packed_only);
        // SAFETY: `rows` was just made for n rows and nothing else touches the buffers.
        unsafe { rows.quantize(QInput::Rows(x), 0..n) };
    }
}

/// What a product's first phase quantizes, row by row.
#[derive(Clone, Copy)]
enum QInput<'a> {
    /// x (n, cols)
    Rows(&'a [f32]),
    /// x = act(gate) * up of `gu` (n, 2 cols) = gate | up, each row computed into a per-thread
    /// buffer of one row (L1-sized) and quantized from there: the f32 rows are never written out.
    Glu { act: Activation, gu: &'a [f32] },
}

/// Raw views of an [`Acts`]'s buffers sized for `n` rows, so that pool threads quantize
/// disjoint rows at once.
#[derive(Clone, Copy)]
struct ActsRows {
    isa: Isa,
    g: Geom,
    n: usize,
    /// per-row lengths of qx, dx, sx, ds (dx and sx zero in a packed-only AVX-512 run)
    len: [usize; 4],
    qx: *mut i8,
    dx: *mut f32,
    sx: *mut f32,
    ds: *mut f32,
}
// SAFETY: handed to pool threads that each write their own rows (see `quantize`).
unsafe impl Send for ActsRows {}
unsafe impl Sync for ActsRows {}

impl ActsRows {
    /// Rows `rows` of `x (n, g.nb * 32)` quantized into the matching rows of the buffers.
    ///
    /// # Safety
    /// The [`Acts`] these views came from is alive and not resized, and no one else reads or
    /// writes these rows during the call.
    unsafe fn quantize(&self, x: QInput<'_>, rows: Range<usize>) {
        let (g, [lq, ld, ls, lds]) = (self.g, self.len);
        let cols = g.nb * QK;
        let len = match x {
            QInput::Rows(x) => x.len(),
            QInput::Glu { gu, .. } => gu.len() / 2,
        };
        assert!(rows.end <= self.n && len >= self.n * cols);
        // The activated row's buffer: taken out of the thread-local for the call, as `ACTS` is.
        let glu = matches!(x, QInput::Glu { .. });
        let mut row = if glu { GLU_ROW.take() } else { Vec::new() };
        row.resize(if glu { cols } else { 0 }, 0.0);
        for r in rows {
            let part = |p: *mut f32, l: usize| std::slice::from_raw_parts_mut(p.add(r * l), l);
            let xr = match x {
                QInput::Rows(x) => &x[r * cols..(r + 1) * cols],
                QInput::Glu { act, gu } => {
                    let (gate, up) = gu[2 * r * cols..2 * (r + 1) * cols].split_at(cols);
                    glu_row(self.isa, act, gate, up, &mut row);
                    &row[..]
                }
            };
            quantize_row(
                self.isa,
                xr,
                g,
                std::slice::from_raw_parts_mut(self.qx.add(r * lq), lq),
                part(self.dx, ld),
                part(self.sx, ls),
                part(self.ds, lds),
            );
        }
        if glu {
            GLU_ROW.set(row);
        }
    }
}

/// One row of [`Acts`]: `xr (nb * 32)` into `qr (nbp * 32)`, `dsr (nbp * 2)` and, unless they
/// are empty (a packed-only AVX-512 run), `dr (nbp * 8)` and `sr (nhp)`.
fn quantize_row(
    isa: Isa,
    xr: &[f32],
    g: Geom,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [f32],
    dsr: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: AVX-512 VNNI comes with F/BW/VL; the slices hold nb blocks (checked inside).
        unsafe {
            if dr.is_empty() {
                avx512::quantize_blocks::<false>(xr, g.nb, qr, dr, sr, dsr);
            } else {
                avx512::quantize_blocks::<true>(xr, g.nb, qr, dr, sr, dsr);
                dr[g.nb * 8..].fill(0.0);
                sr[2 * g.nb..].fill(0.0);
            }
        }
        qr[g.nb * QK..].fill(0);
        dsr[2 * g.nb..].fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let simd = matches!(isa, Isa::Avx2 | Isa::AvxVnni);
    #[cfg(target_arch = "aarch64")]
    let simd = matches!(isa, Isa::Neon | Isa::NeonDot);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let simd = {
        let _ = isa;
        false
    };
    if simd {
        // SAFETY: both come with AVX2; the slices hold nb blocks (checked inside).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::quantize_blocks(xr, g.nb, qr, dr, sr)
        };
        // SAFETY: NEON was detected; the slices hold nb blocks (checked inside).
        #[cfg(target_arch = "aarch64")]
        unsafe {
            neon::quantize_blocks(xr, g.nb, qr, dr, sr)
        };
    } else {
        for b in 0..g.nb {
            let xb = &xr[b * QK..(b + 1) * QK];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sums = [0i32; 2];
            for (j, (q, &v)) in qr[b * QK..(b + 1) * QK].iter_mut().zip(xb).enumerate() {
                // Round half away from zero (as roundf), without a libm call.
                let t = v * id;
                *q = (t + 0.5f32.copysign(t)) as i8;
                sums[j / 16] += *q as i32;
            }
            dr[b * 8..(b + 1) * 8].fill(d);
            sr[2 * b] = d * sums[0] as f32;
            sr[2 * b + 1] = d * sums[1] as f32;
        }
    }
    for b in 0..g.nb {
        dsr[2 * b] = dr[8 * b];
        dsr[2 * b + 1] = sr[2 * b] + sr[2 * b + 1];
    }
    qr[g.nb * QK..].fill(0);
    dr[g.nb * 8..].fill(0.0);
    sr[2 * g.nb..].fill(0.0);
    dsr[2 * g.nb..].fill(0.0);
}

/// [`NR`] weight rows unpacked for the kernels, in the same padded geometry as [`Acts`].
#[derive(Default)]
pub(crate) struct WTile {
    /// (NR, nbp * 32): unsigned weight codes (signed i8 for Q8_0 when `signed`)
    pub uw: Vec<u8>,
    /// (NR, nbp * 8): the scale of each 4-element lane
    pub dw: Vec<f32>,
    /// (NR, nhp): the offset term of each half block
    pub mw: Vec<f32>,
    /// Q8_0 stored as raw i8 with no offset (the AVX2 `maddubs` and scalar paths); otherwise every
    /// code is unsigned and the offset goes to `mw`.
    pub signed: bool,
}

/// The activation rows a kernel multiplies, with their geometry.
pub(crate) struct KernelArgs<'a> {
    pub acts: &'a Acts,
    pub n: usize,
    pub g: Geom,
    pub tile: &'a WTile,
    /// valid rows in the tile (the rest are zero padding and not written)
    pub nr: usize,
    pub y: SendPtr,
    pub y_stride: usize,
    pub y_col: usize,
}

thread_local! {
    static ACTS: Cell<Acts> = Cell::new(Acts::default());
    static TILE: Cell<WTile> = Cell::new(WTile::default());
    static GLU_ROW: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `y (n, w.rows) = x (n, w.cols) · wᵀ` with integer inner products, split over output rows across
/// the thread pool. Same contract as [`super::matmul`].
pub fn matmul_q(x: &[f32], n: usize, w: &QMatrix, y: &mut [f32]) {
    matmul_q_isa(Isa::detect(), x, n, w, y)
}

/// [`matmul_q`] with an explicit instruction set (tests compare paths; it must be one of
/// [`Isa::available`]).
pub fn matmul_q_isa(isa: Isa, x: &[f32], n: usize, w: &QMatrix, y: &mut [f32]) {
    assert_eq!(y.len(), n * w.rows, "matmul_q: y is not (n, m)");
    matmul_q_cols_isa(isa, x, n, w, y, w.rows, 0)
}

/// `x (n, w.cols) · wᵀ` into columns `col..col + w.rows` of `y` (n, stride), the other columns
/// untouched: one part of a product whose parts are stored in different formats (Q, K and V of
/// one layer in two quantizations) written where one stacked matrix would write it.
pub fn matmul_q_cols(x: &[f32], n: usize, w: &QMatrix, y: &mut [f32], stride: usize, col: usize) {
    matmul_q_cols_isa(Isa::detect(), x, n, w, y, stride, col)
}

/// [`matmul_q_cols`] with an explicit instruction set.
///
/// One fork-join: the pool's threads first quantize x in runs of rows, then (once every row
/// is done) share out the weight tasks; see [`two_phase`].
pub fn matmul_q_cols_isa(
    isa: Isa,
    x: &[f32],
    n: usize,
    w: &QMatrix,
    y: &mut [f32],
    stride: usize,
    col: usize,
) {
    assert_eq!(x.len(), n * w.cols, "matmul_q: x is not (n, k)");
    product(isa, QInput::Rows(x), n, w, y, stride, col, false)
}

/// `y (n, w.rows) = (act(gate) * up) · wᵀ` for `gu` (n, 2 w.cols) = gate | up: the first phase
/// computes each activated row into a buffer of one row and quantizes it from there, so the f32
/// rows of [`super::glu_rows`] are never written out nor read back. The same bits as
/// [`super::glu_rows_isa`] then [`matmul_q_isa`] (the same row kernel and quantizer).
pub fn matmul_q_glu_isa(
    isa: Isa,
    act: Activation,
    gu: &[f32],
    n: usize,
    w: &QMatrix,
    y: &mut [f32],
) {
    assert_eq!(gu.len(), 2 * n * w.cols, "matmul_q_glu: gu is not (n, 2 k)");
    assert_eq!(y.len(), n * w.rows, "matmul_q_glu: y is not (n, m)");
    product(isa, QInput::Glu { act, gu }, n, w, y, w.rows, 0, false)
}

/// `h (n, w.rows / 2) = silu(gate) · up` where `gate | up = x (n, w.cols) · wᵀ` of a stacked
/// gate | up matrix `w`, in one pass: each tile of the packed AVX-512 kernel multiplies a group
/// of gate rows and the matching group of up rows and writes their SiLU product, so the
/// (n, w.rows) product is never written nor read back. The same bits as [`matmul_q_isa`] then
/// [`super::glu_rows_isa`]. Returns false, having done nothing, where no such kernel runs (other
/// instruction sets or formats, GELU, halves not whole groups of 16): the caller does the two.
pub fn matmul_q_to_glu_isa(
    isa: Isa,
    act: Activation,
    x: &[f32],
    n: usize,
    w: &QMatrix,
    h: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni
        && act == Activation::Silu
        && packed::packs(isa, w.ty)
        && w.rows.is_multiple_of(2 * packed::G)
    {
        assert_eq!(x.len(), n * w.cols, "matmul_q_to_glu: x is not (n, k)");
        assert_eq!(
            h.len(),
            n * w.rows / 2,
            "matmul_q_to_glu: h is not (n, m / 2)"
        );
        product(isa, QInput::Rows(x), n, w, h, w.rows / 2, 0, true);
        return true;
    }
    let _ = (isa, act, x, n, w, h);
    false
}

/// The product of [`matmul_q_cols_isa`] over any [`QInput`].
///
/// `glu_out` (packed AVX-512 path only, `w` a stacked gate | up matrix of whole groups per half):
/// `y` (n, stride) receives `silu(gate) · up` in columns `col..col + w.rows / 2` instead.
#[allow(clippy::too_many_arguments)]
fn product(
    isa: Isa,
    x: QInput<'_>,
    n: usize,
    w: &QMatrix,
    y: &mut [f32],
    stride: usize,
    col: usize,
    glu_out: bool,
) {
    let (k, m) = (w.cols, if glu_out { w.rows / 2 } else { w.rows });
    assert!(
        col + m <= stride && y.len() == n * stride,
        "matmul_q: y is not (n, stride) with room for columns {col}..{}",
        col + m
    );
    assert!(Isa::available().contains(&isa), "{isa:?} not available");
    if n == 0 || m == 0 {
        return;
    }
    let g = Geom::new(k);
    // Taken out of the thread-local for the call: a nested call on this thread (rayon work
    // stealing) finds an empty buffer and grows its own instead of aliasing this one.
    let mut acts = ACTS.take();
    #[cfg(target_arch = "x86_64")]
    let packed = packed::packs(isa, w.ty);
    #[cfg(not(target_arch = "x86_64"))]
    let packed = false;
    let rows = acts.prepare(isa, n, g, packed);
    // Runs of rows to quantize: one for a few rows (decode), else a few per thread.
    let per = if n < PAR_QUANTIZE_ROWS {
        n
    } else {
        n.div_ceil(2 * rayon::current_num_threads()).max(8)
    };
    let quantize = |c: usize| {
        // SAFETY: run c owns rows c·per.., disjoint across runs; `acts` outlives the fork-join
        // and is not resized in it.
        unsafe { rows.quantize(x, c * per..((c + 1) * per).min(n)) }
    };
    let acts_at = ActsAt::new(&acts);
    // SAFETY (of every `acts_at.get()` below): split by groups, the second phase starts after
    // the last row is written, and only reads; split by rows, a task reads only the rows it has
    // just written itself.
    #[cfg(target_arch = "x86_64")]
    if packed {
        let (plan, run) = packed::plan(isa, n, g, w, y, stride, col, glu_out);
        if plan.row_blocks > 1 {
            // Each task quantizes its own rows of x and multiplies them by every group: no wait
            // between the phases, and no quantized row crosses to another core.
            let rb = n.div_ceil(plan.row_blocks);
            two_phase(
                0,
                |_| {},
                plan.row_blocks,
                |t| {
                    let r = t * rb..((t + 1) * rb).min(n);
                    // SAFETY: task t owns rows r, disjoint across tasks; `acts` outlives the
                    // fork-join and is not resized in it; the kernel reads only rows r.
                    unsafe {
                        rows.quantize(x, r.clone());
                        run(acts_at.get(), r, 0..plan.groups)
                    }
                },
            );
        } else {
            let per_task = plan.groups_per_task;
            two_phase(n.div_ceil(per), quantize, plan.group_tasks, |t| {
                let gr = t * per_task..((t + 1) * per_task).min(plan.groups);
                run(unsafe { acts_at.get() }, 0..n, gr)
            });
        }
        ACTS.set(acts);
        return;
    }
    let signed = w.ty == QType::Q8_0 && isa != Isa::Avx512Vnni;
    let out = SendPtr(y.as_mut_ptr());
    let tasks = m.div_ceil(ROWS_PER_TASK);
    two_phase(n.div_ceil(per), quantize, tasks, |t| {
        let acts = unsafe { acts_at.get() };
        let mut tile = TILE.take();
        tile.signed = signed;
        tile.uw.resize(NR * g.nbp * QK, 0);
        tile.dw.resize(NR * g.nbp * 8, 0.0);
        tile.mw.resize(NR * g.nhp, 0.0);
        let end = ((t + 1) * ROWS_PER_TASK).min(m);
        let mut r0 = t * ROWS_PER_TASK;
        while r0 < end {
            let nr = (end - r0).min(NR);
            for s in 0..NR {
                let r = (s < nr).then_some(r0 + s);
                // SAFETY: Avx2 and Avx512Vnni are only available with AVX2 and F16C.
                #[cfg(target_arch = "x86_64")]
                if let (Some(r), Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni) = (r, isa) {
                    if unsafe { avx2::expand_row(w, r, g, &mut tile, s) } {
                        continue;
                    }
                }
                // SAFETY: NEON was detected.
                #[cfg(target_arch = "aarch64")]
                if let (Some(r), Isa::Neon | Isa::NeonDot) = (r, isa) {
                    if unsafe { neon::expand_row(w, r, g, &mut tile, s) } {
                        continue;
                    }
                }
                expand::row(w, r, g, &mut tile, s);
            }
            let args = KernelArgs {
                acts,
                n,
                g,
                tile: &tile,
                nr,
                y: out,
                y_stride: stride,
                y_col: col + r0,
            };
            // SAFETY: each task writes only columns of its own rows r0..end of y, disjoint
            // across tasks, and y outlives the parallel loop; the ISA was checked available.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 | Isa::AvxVnni => avx2::rows(&args),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512Vnni => avx512::rows(&args),
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon => neon::rows(&args, w.ty),
                    #[cfg(target_arch = "aarch64")]
                    Isa::NeonDot => neon::rows_dot(&args, w.ty),
                    _ => scalar::rows(&args),
                }
            }
            r0 += nr;
        }
        TILE.set(tile);
    });
    ACTS.set(acts);
}

/// A shared view of the [`Acts`] that the first phase of a matmul writes through [`ActsRows`]:
/// the reference is made only in the second phase, after the writes.
#[derive(Clone, Copy)]
struct ActsAt(*const Acts);
// SAFETY: read by pool threads in the second phase only (see `get`).
unsafe impl Send for ActsAt {}
unsafe impl Sync for ActsAt {}

impl ActsAt {
    fn new(acts: &Acts) -> ActsAt {
        ActsAt(acts)
    }

    /// # Safety
    /// No row is being written any more, and the [`Acts`] is alive.
    unsafe fn get<'a>(self) -> &'a Acts {
        &*self.0
    }
}
