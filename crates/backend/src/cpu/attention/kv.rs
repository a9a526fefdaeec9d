//! How K and V rows are stored in the pool: f32, f16, or llama.cpp's Q8_0 blocks (32 values as
//! int8 with one f16 scale).

use std::fmt;
use std::str::FromStr;

use half::f16;

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;

/// The storage type of the K/V pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// Half precision, as llama.cpp's default `-ctk f16 -ctv f16`.
    #[default]
    F16,
    /// Blocks of 32 values: one f16 scale and 32 int8 (llama.cpp's `q8_0` KV); the head size must
    /// be a multiple of 32.
    Q8_0,
}

impl KvDtype {
    /// Bytes one row of `width` values takes (`width` a multiple of 32 for Q8_0).
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * width,
            KvDtype::F16 => 2 * width,
            KvDtype::Q8_0 => width / QK8_0 * std::mem::size_of::<BlockQ8_0>(),
        }
    }

    /// Whether heads of `head_dim` values can be stored this way (Q8_0 blocks must not straddle
    /// two heads); the error says why not.
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), String> {
        if self == KvDtype::Q8_0 && !head_dim.is_multiple_of(QK8_0) {
            return Err(format!(
                "a q8_0 KV cache needs a head size that is a multiple of {QK8_0}; this model's is {head_dim}"
            ));
        }
        Ok(())
    }
}

impl FromStr for KvDtype {
    type Err = String;
    /// `auto` (f16), `f16`, `f32`, `q8_0`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "f16" | "fp16" | "half" => Ok(KvDtype::F16),
            "f32" | "fp32" | "float" => Ok(KvDtype::F32),
            "q8_0" | "q8" => Ok(KvDtype::Q8_0),
            _ => Err(format!(
                "`--kv-cache-dtype` must be auto, f16, f32 or q8_0. Given: {s}"
            )),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8_0 => "q8_0",
        })
    }
}

/// 32 values as `d * qs[i]` (ggml's `block_q8_0`, 34 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

impl BlockQ8_0 {
    /// llama.cpp's `quantize_row_q8_0_ref`: scale = max |x| / 127 (the f32 scale rounds the values,
    /// its f16 is stored).
    pub fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK8_0];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Self {
            d: f16::from_f32(d),
            qs,
        }
    }
}

/// The values of one layer's K or V: (slots, width), one row per token slot.
pub(crate) enum KvData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// (slots, width / 32) blocks.
    Q8_0(Vec<BlockQ8_0>),
}

/// One layer's K (or V) pool: `slots` rows of `width` values (KV heads times head size) in one
/// [`KvDtype`].
pub struct KvStore {
    width: usize,
    pub(crate) data: KvData,
}

impl KvStore {
    /// A zeroed pool of `slots` rows (`width` a multiple of 32 for Q8_0).
    pub fn new(dtype: KvDtype, slots: usize, width: usize) -> Self {
        let data = match dtype {
            KvDtype::F32 => KvData::F32(vec![0.0; slots * width]),
            KvDtype::F16 => KvData::F16(vec![f16::ZERO; slots * width]),
            KvDtype::Q8_0 => {
                assert!(width.is_multiple_of(QK8_0), "q8_0 rows are whole blocks");
                KvData::Q8_0(vec![BlockQ8_0::default(); slots * width / QK8_0])
            }
        };
        Self { width, data }
    }

    pub fn dtype(&self) -> KvDtype {
        match self.data {
            KvData::F32(_) => KvDtype::F32,
            KvData::F16(_) => KvDtype::F16,
            KvData::Q8_0(_) => KvDtype::Q8_0,
        }
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let rows = match &self.data {
            KvData::F32(v) => v.len() / self.width.max(1),
            KvData::F16(v) => v.len() / self.width.max(1),
            KvData::Q8_0(v) => v.len() * QK8_0 / self.width.max(1),
        };
        rows * self.dtype().row_bytes(self.width)
    }

    /// Stores `src` (width values) as row `slot`, converted to the pool's type.
    pub fn write(&mut self, slot: usize, src: &[f32]) {
        // SAFETY: `&mut self`: no other writer.
        unsafe { self.rows().write(slot, src) }
    }

    /// A handle through which several threads store rows at once (each a different slot).
    pub(crate) fn rows(&mut self) -> KvRows<'_> {
        let ptr = match &mut self.data {
            KvData::F32(v) => KvPtr::F32(v.as_mut_ptr()),
            KvData::F16(v) => KvPtr::F16(v.as_mut_ptr()),
            KvData::Q8_0(v) => KvPtr::Q8_0(v.as_mut_ptr()),
        };
        let slots = match &self.data {
            KvData::F32(v) => v.len() / self.width.max(1),
            KvData::F16(v) => v.len() / self.width.max(1),
            KvData::Q8_0(v) => v.len() * QK8_0 / self.width.max(1),
        };
        KvRows {
            width: self.width,
            slots,
            ptr,
            _store: std::marker::PhantomData,
        }
    }

    /// Row `slot` as f32 (the portable conversion; tests and references use it).
    pub fn read(&self, slot: usize, out: &mut [f32]) {
        let w = self.width;
        match &self.data {
            KvData::F32(v) => out.copy_from_slice(&v[slot * w..(slot + 1) * w]),
            KvData::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[slot * w..(slot + 1) * w]) {
                    *o = h.to_f32();
                }
            }
            KvData::Q8_0(v) => {
                let nb = w / QK8_0;
                for (o, b) in out
                    .chunks_exact_mut(QK8_0)
                    .zip(&v[slot * nb..(slot + 1) * nb])
                {
                    let d = b.d.to_f32();
                    for (o, &q) in o.iter_mut().zip(&b.qs) {
                        *o = d * q as f32;
                    }
                }
            }
        }
    }
}

/// A pool's rows, written from several threads at once ([`KvStore::rows`]); it borrows the
/// store mutably, so nothing reads it meanwhile.
pub(crate) struct KvRows<'a> {
    width: usize,
    slots: usize,
    ptr: KvPtr,
    _store: std::marker::PhantomData<&'a mut KvStore>,
}

#[derive(Clone, Copy)]
enum KvPtr {
    F32(*mut f32),
    F16(*mut f16),
    Q8_0(*mut BlockQ8_0),
}

// SAFETY: the handle writes only through `write`, whose callers keep threads on distinct slots.
unsafe impl Send for KvRows<'_> {}
unsafe impl Sync for KvRows<'_> {}

impl KvRows<'_> {
    /// Stores `src` (width values) as row `slot`, converted to the pool's type.
    ///
    /// # Safety
    /// No other thread writes row `slot` during the call.
    pub(crate) unsafe fn write(&self, slot: usize, src: &[f32]) {
        let w = self.width;
        assert_eq!(src.len(), w, "KV row width");
        assert!(slot < self.slots, "KV slot {slot} of {}", self.slots);
        match self.ptr {
            KvPtr::F32(p) => {
                std::slice::from_raw_parts_mut(p.add(slot * w), w).copy_from_slice(src)
            }
            // F16C when the processor has it, 8 values at a time; the same rounding as
            // `f16::from_f32`. One value at a time this loop was ~5% of a 64-prompt prefill's
            // forward, on one thread.
            KvPtr::F16(p) => {
                crate::cpu::f32_to_f16(src, std::slice::from_raw_parts_mut(p.add(slot * w), w))
            }
            KvPtr::Q8_0(p) => {
                let nb = w / QK8_0;
                let row = std::slice::from_raw_parts_mut(p.add(slot * nb), nb);
                for (d, s) in row.iter_mut().zip(src.chunks_exact(QK8_0)) {
                    *d = BlockQ8_0::quantize(s);
                }
            }
        }
    }
}
