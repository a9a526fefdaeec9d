//! One upload per step: the step's inputs (token ids, positions, KV slots, block-table offsets,
//! contexts, logits rows, sampling parameters and edits, the attention plan's tiles and rows,
//! block tables) are packed into one pinned
//! host buffer at the offsets of a [`StepLayout`] and copied to the device with one async copy;
//! each kernel reads its input at the same offset of the device buffer. The offsets depend only
//! on capacities (rows, table entries, edits), never on a step's contents, so a CUDA graph
//! captured over them replays any later step of its bucket. Block tables come last: the copy
//! stops where the step's tables end.
//!
//! Grammar masks are not in it: they are computed on the host while the forward pass runs and go
//! up after it (`token_mask`).

use std::mem::{size_of, size_of_val};
use std::ops::{Deref, DerefMut};

use cudarc::driver::{DevicePtr, PinnedHostSlice};

use super::sampling::{Edit, SampleParams};
use super::{Error, Gpu, GpuBuf, Result};

/// Every section starts at a multiple of this (the device allocator's own alignment; enough for
/// any vector load).
pub const ALIGN: usize = 256;

/// One input's place in the upload: byte offset and capacity in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub offset: usize,
    pub bytes: usize,
}

impl Section {
    pub fn end(&self) -> usize {
        self.offset + self.bytes
    }
}

/// What a layout must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Rows of one forward pass (and logits rows).
    pub rows: usize,
    /// Block-table entries.
    pub table_cap: usize,
    /// Sampling edits (logit bias, penalties) of one step.
    pub edits: usize,
}

/// The offset table: where each of a step's inputs sits in the pinned buffer and in the device
/// buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLayout {
    pub caps: Caps,
    /// (rows,) u32
    pub tokens: Section,
    /// (rows,) u32
    pub positions: Section,
    /// (rows,) i64 KV slot of each row.
    pub slots: Section,
    /// (rows,) i32 offset of each row's block table.
    pub row_table: Section,
    /// (rows,) i32 positions each row attends to.
    pub row_ctx: Section,
    /// (rows,) i32 rows whose logits are wanted.
    pub logit_rows: Section,
    /// (rows,) i32 async scheduling's row map: the previous step's logits row whose sampled
    /// token is this row's input, or -1 (`super::feed`).
    pub feed: Section,
    /// (rows,) [`SampleParams`]
    pub params: Section,
    /// (edits,) [`Edit`]
    pub edits: Section,
    /// (rows, 2) i32 (first row, rows) of each `prefill_attention` tile, and (rows,) i32 the
    /// rows `paged_attention` serves beside them (`super::prefill_attention::AttnPlan`).
    pub tiles: Section,
    pub attn_rows: Section,
    /// (table_cap,) i32 block tables, flattened; last.
    pub tables: Section,
    /// Bytes of the whole buffer.
    pub bytes: usize,
}

impl StepLayout {
    pub fn new(caps: Caps) -> Self {
        let mut at = 0;
        let mut next = |n: usize, size: usize| {
            let s = Section {
                offset: at,
                bytes: n.max(1) * size,
            };
            at = s.end().next_multiple_of(ALIGN);
            s
        };
        let r = caps.rows;
        let l = StepLayout {
            caps,
            tokens: next(r, 4),
            positions: next(r, 4),
            slots: next(r, 8),
            row_table: next(r, 4),
            row_ctx: next(r, 4),
            logit_rows: next(r, 4),
            feed: next(r, 4),
            params: next(r, size_of::<SampleParams>()),
            edits: next(caps.edits, size_of::<Edit>()),
            tiles: next(2 * r, 4),
            attn_rows: next(r, 4),
            tables: next(caps.table_cap, 4),
            bytes: 0,
        };
        StepLayout {
            bytes: l.tables.end(),
            ..l
        }
    }

    /// Whether `caps` fits this layout.
    pub fn holds(&self, caps: Caps) -> bool {
        caps.rows <= self.caps.rows
            && caps.table_cap <= self.caps.table_cap
            && caps.edits <= self.caps.edits
    }
}

/// Plain values the device reads as they are laid out on the host.
///
/// # Safety
/// `repr(C)` (or a primitive) with no padding, valid for any bits.
pub unsafe trait Pod: Copy {}
// SAFETY: primitives, and `repr(C)` structs of 4-byte scalars with no padding.
unsafe impl Pod for u32 {}
unsafe impl Pod for i32 {}
unsafe impl Pod for i64 {}
unsafe impl Pod for SampleParams {}
unsafe impl Pod for Edit {}

/// Writes a step's inputs into the pinned buffer at their sections, tracking how far the upload
/// must copy.
pub struct Pack<'a> {
    buf: &'a mut [u8],
    end: usize,
}

impl<'a> Pack<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, end: 0 }
    }

    /// Copies `v` to the start of `s`.
    pub fn put<T: Pod>(&mut self, s: Section, v: &[T]) -> Result<()> {
        let n = size_of_val(v);
        if n > s.bytes || s.end() > self.buf.len() {
            return Err(Error::Memory(format!(
                "{n} bytes do not fit a section of {} at {} (buffer {})",
                s.bytes,
                s.offset,
                self.buf.len()
            )));
        }
        // SAFETY: `T: Pod` has no padding, so its bytes are initialized.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), n) };
        self.buf[s.offset..s.offset + n].copy_from_slice(bytes);
        self.end = self.end.max(s.offset + n);
        Ok(())
    }

    /// Bytes from the start that the upload copies.
    pub fn end(&self) -> usize {
        self.end
    }
}

/// A device buffer that is a section of a [`StepUpload`]'s: usable wherever a [`GpuBuf`] is,
/// never freed itself.
pub struct View<T>(Option<GpuBuf<T>>);

impl<T> Deref for View<T> {
    type Target = GpuBuf<T>;
    fn deref(&self) -> &GpuBuf<T> {
        self.0.as_ref().expect("a view lives until dropped")
    }
}

impl<T> DerefMut for View<T> {
    fn deref_mut(&mut self) -> &mut GpuBuf<T> {
        self.0.as_mut().expect("a view lives until dropped")
    }
}

impl<T> Drop for View<T> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            // The upload's buffer owns the memory.
            b.leak();
        }
    }
}

/// The pinned host buffer and its device twin.
pub struct StepUpload {
    pub layout: StepLayout,
    host: PinnedHostSlice<u8>,
    dev: GpuBuf<u8>,
}

impl StepUpload {
    pub fn new(gpu: &Gpu, caps: Caps) -> Result<Self> {
        let layout = StepLayout::new(caps);
        // SAFETY: every byte the upload copies is written by `Pack` first.
        let host = unsafe { gpu.ctx.alloc_pinned::<u8>(layout.bytes) }?;
        Ok(Self {
            layout,
            host,
            dev: gpu.zeros(layout.bytes)?,
        })
    }

    /// A typed view of section `s` of the device buffer, for the launchers. It must not outlive
    /// this upload, which owns the memory.
    pub fn view<T>(&self, gpu: &Gpu, s: Section) -> View<T> {
        let base = self.dev.device_ptr(&gpu.stream).0;
        // SAFETY: the section lies inside `dev` (the layout's bytes) and starts aligned; a View
        // never frees it.
        View(Some(unsafe {
            gpu.stream
                .upgrade_device_ptr(base + s.offset as u64, s.bytes / size_of::<T>())
        }))
    }

    /// Packs with `fill` into the pinned buffer, then queues one copy of the bytes written.
    /// The stream is drained first, so the previous step's copy has read the pinned bytes (a
    /// step already ends by reading its results back, so this waits only after a failed step;
    /// packing step N+1 while step N runs would need a second pinned buffer).
    pub fn upload(
        &mut self,
        gpu: &Gpu,
        fill: impl FnOnce(&mut Pack) -> Result<()>,
    ) -> Result<usize> {
        gpu.stream.synchronize()?;
        let buf = self.host.as_mut_slice()?;
        let mut p = Pack::new(buf);
        fill(&mut p)?;
        let end = p.end();
        if end > 0 {
            let dst = self.dev.device_ptr(&gpu.stream).0;
            // SAFETY: `end` bytes lie inside both buffers; the pinned bytes stay untouched until
            // the next upload, which drains the stream first.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(dst, &buf[..end], gpu.stream.cu_stream())
            }?;
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(rows: usize, table_cap: usize, edits: usize) -> Caps {
        Caps {
            rows,
            table_cap,
            edits,
        }
    }

    /// Sections are aligned, disjoint, in order, sized for their capacities, tables last.
    #[test]
    fn sections_are_aligned_disjoint_and_sized() {
        for c in [caps(1, 1, 0), caps(7, 100, 3), caps(512, 262_145, 4096)] {
            let l = StepLayout::new(c);
            let s = [
                l.tokens,
                l.positions,
                l.slots,
                l.row_table,
                l.row_ctx,
                l.logit_rows,
                l.feed,
                l.params,
                l.edits,
                l.tiles,
                l.attn_rows,
                l.tables,
            ];
            for w in s.windows(2) {
                assert!(w[0].end() <= w[1].offset, "{l:?}");
            }
            assert!(s.iter().all(|x| x.offset % ALIGN == 0), "{l:?}");
            assert_eq!(l.tokens.bytes, c.rows.max(1) * 4);
            assert_eq!(l.slots.bytes, c.rows.max(1) * 8);
            assert_eq!(l.params.bytes, c.rows.max(1) * 32);
            assert_eq!(l.edits.bytes, c.edits.max(1) * 16);
            // A tile holds at least one row.
            assert_eq!(l.tiles.bytes, (2 * c.rows).max(1) * 4);
            assert_eq!(l.attn_rows.bytes, c.rows.max(1) * 4);
            assert_eq!(l.tables.bytes, c.table_cap.max(1) * 4);
            assert_eq!(l.bytes, l.tables.end());
            assert!(l.holds(c) && !l.holds(caps(c.rows + 1, 1, 0)));
        }
        // Offsets depend on capacities only.
        assert_eq!(
            StepLayout::new(caps(8, 9, 10)),
            StepLayout::new(caps(8, 9, 10))
        );
    }

    /// Packed values read back from their offsets; the upload ends where the last written
    /// value does; what does not fit its section is an error.
    #[test]
    fn packing_puts_each_input_at_its_offset() {
        let l = StepLayout::new(caps(4, 32, 2));
        let mut buf = vec![0u8; l.bytes];
        let mut p = Pack::new(&mut buf);
        p.put(l.tokens, &[1u32, 2, 3]).unwrap();
        p.put(l.slots, &[-1i64, 1 << 40]).unwrap();
        let e = Edit {
            token: 9,
            bias: 1.5,
            rep: 1.0,
            sub: 0.25,
        };
        p.put(l.edits, &[e]).unwrap();
        assert_eq!(p.end(), l.edits.offset + 16);
        p.put(l.tables, &[7i32, 8]).unwrap();
        assert_eq!(p.end(), l.tables.offset + 8);
        assert!(p.put(l.tokens, &[0u32; 5]).is_err());
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let i64_at = |o: usize| i64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        assert_eq!(
            (0..3)
                .map(|i| u32_at(l.tokens.offset + 4 * i))
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(i64_at(l.slots.offset), -1);
        assert_eq!(i64_at(l.slots.offset + 8), 1 << 40);
        assert_eq!(u32_at(l.edits.offset), 9);
        assert_eq!(f32::from_bits(u32_at(l.edits.offset + 4)), 1.5);
        assert_eq!(f32::from_bits(u32_at(l.edits.offset + 12)), 0.25);
        assert_eq!(u32_at(l.tables.offset + 4), 8);
    }
}
