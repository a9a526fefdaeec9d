//! GGUF (v2 and v3) reader: header, metadata, tensor infos and memory-mapped tensor data.
//!
//! Every count, length and offset in the file is checked against the bytes actually present before
//! it is used, so a truncated, corrupt or hostile file yields an [`Error`] naming what is wrong and
//! never a panic, an out-of-bounds read or a huge allocation.

mod value;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use value::{Value, ValueType};
pub use write::GgufWriter;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (GGUF files in the wild nest at most once).
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor's description; `dims` are in ggml order (`dims[0]` is the contiguous one).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (whole blocks).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub(crate) enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; a file changed underneath us while mapped is outside
        // what any mmap-based loader (llama.cpp included) can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Storage::Mmap(mmap))
    }
}

/// One run of tensor bytes: `len` bytes of `storages[storage]` from `start`, seen at offsets
/// `base..base + len` of the tensor data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub storage: usize,
    pub start: usize,
    pub len: usize,
}

/// Where tensor bytes live. A GGUF file's data section is one segment of one mapping; a Hugging
/// Face checkpoint has one segment per tensor, in its safetensors mappings or, for tensors
/// converted at load (quantized, permuted), in an owned buffer. `TensorInfo::offset` is an offset
/// into the segments laid end to end (for a checkpoint, a virtual one).
struct TensorData {
    storages: Vec<Storage>,
    /// Sorted by `base`, not overlapping.
    segments: Vec<Segment>,
}

impl TensorData {
    /// The bytes at `offset..offset + len`, when one segment holds them.
    fn get(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let i = self
            .segments
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        let s = self.segments[i];
        let rel = usize::try_from(offset - s.base).ok()?;
        if rel.checked_add(len)? > s.len {
            return None;
        }
        let start = s.start + rel;
        self.storages[s.storage].get(start..start + len)
    }
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor bytes are borrowed from the mapping, never copied.
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    index: HashMap<String, usize>,
    data: TensorData,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Opens and memory-maps a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::parse(Storage::map(path.as_ref())?)
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self> {
        let mut r = Reader {
            buf: &storage,
            pos: 0,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::BadHeader(format!(
                "magic is {magic:02x?}, expected \"GGUF\""
            )));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::BadHeader(
                    "GGUF v1 is not supported (v2 and v3 are)".into(),
                ))
            }
            v if v.swap_bytes() <= 3 => {
                return Err(Error::BadHeader(
                    "big-endian GGUF files are not supported".into(),
                ))
            }
            v => return Err(Error::BadHeader(format!("unknown GGUF version {v}"))),
        }
        let n_tensors = r.count("tensor count", 8 + 4 + 8 + 4 + 8)?;
        let n_kv = r.count("metadata count", 8 + 4)?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.value_type(&key)?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::Corrupt(format!("duplicate metadata key `{key}`")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::Corrupt(format!(
                        "general.alignment must be a power of two up to 1 MiB, found {v:?}"
                    )))
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i} name"))?;
            let n_dims = r.u32(&format!("tensor `{name}` rank"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(
                    &name,
                    format!("rank {n_dims} is not in 1..={MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("tensor `{name}` shape"))?);
            }
            let ty_id = r.u32(&format!("tensor `{name}` type"))?;
            let offset = r.u64(&format!("tensor `{name}` offset"))?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| Error::UnsupportedType {
                name: name.clone(),
                ty: format!("id {ty_id}"),
            })?;
            infos.push((name, dims, ty, offset));
        }

        // A file without tensors may end right after its metadata, before the padding; tensors
        // that would lie past the end are caught by their own bounds check below.
        let data_offset = align_up(r.pos as u64, alignment)
            .map_or(storage.len(), |o| o.min(storage.len() as u64) as usize);
        let data_len = (storage.len() - data_offset) as u64;

        let mut tensors = Vec::with_capacity(infos.len());
        let mut index = HashMap::with_capacity(infos.len());
        for (name, dims, ty, offset) in infos {
            if dims.contains(&0) {
                return Err(bad(&name, format!("shape {dims:?} has a zero dimension")));
            }
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(&name, format!("shape {dims:?} overflows")))?;
            if dims[0] % ty.block_len() as u64 != 0 {
                return Err(bad(
                    &name,
                    format!(
                        "row length {} is not a multiple of {ty}'s block of {}",
                        dims[0],
                        ty.block_len()
                    ),
                ));
            }
            let n_bytes = ty
                .bytes_for(n)
                .ok_or_else(|| bad(&name, format!("shape {dims:?} overflows")))?;
            if offset % alignment != 0 {
                return Err(bad(
                    &name,
                    format!("offset {offset} is not aligned to {alignment}"),
                ));
            }
            match offset.checked_add(n_bytes) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(Error::Truncated {
                        what: format!("tensor `{name}` data"),
                        offset: data_offset.saturating_add(offset as usize),
                        need: n_bytes as usize,
                        len: storage.len(),
                    })
                }
            }
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad(&name, "appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                n_bytes: n_bytes as usize,
            });
        }

        let segment = Segment {
            base: 0,
            storage: 0,
            start: data_offset,
            len: data_len as usize,
        };
        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            index,
            data: TensorData {
                storages: vec![storage],
                segments: vec![segment],
            },
        })
    }

    /// A GGUF view of tensors held elsewhere (a Hugging Face checkpoint): each tensor's
    /// `offset..offset + n_bytes` must lie inside one of `segments`, sorted by `base`.
    pub(crate) fn from_parts(
        metadata: BTreeMap<String, Value>,
        tensors: Vec<TensorInfo>,
        storages: Vec<Storage>,
        segments: Vec<Segment>,
    ) -> Result<Self> {
        let data = TensorData { storages, segments };
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if data.get(t.offset, t.n_bytes).is_none() {
                return Err(bad(&t.name, "its bytes lie outside the tensor data".into()));
            }
            if index.insert(t.name.clone(), i).is_some() {
                return Err(bad(&t.name, "appears twice".into()));
            }
        }
        Ok(Self {
            version: 3,
            metadata,
            tensors,
            alignment: DEFAULT_ALIGNMENT,
            index,
            data,
        })
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor of this file (bounds were checked at parse time).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        self.data
            .get(t.offset, t.n_bytes)
            .expect("a tensor of this file lies inside its data (checked at parse time)")
    }

    /// Total bytes of tensor data.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes as u64).sum()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey(key.into()))
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> Error {
        Error::WrongType {
            key: key.into(),
            expected,
            found: v.type_name(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "unsigned integer", v))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get_u64(key)?;
        usize::try_from(v).map_err(|_| Error::Corrupt(format!("`{key}` = {v} is too large")))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }

    /// An optional key: `Ok(None)` when absent, an error when present with the wrong type.
    pub fn opt<'a, T>(
        &'a self,
        key: &str,
        get: impl Fn(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.metadata.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }
}

fn bad(name: &str, reason: String) -> Error {
    Error::BadTensor {
        name: name.into(),
        reason,
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                what: what.into(),
                offset: self.pos,
                need: n,
                len: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Counts and lengths are 64-bit from v2 on (v1 is rejected).
    fn len(&mut self, what: &str) -> Result<u64> {
        self.u64(what)
    }

    /// A declared count of items each at least `min_item` bytes, bounded by what is left.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.len(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(Error::Corrupt(format!(
                "{what} {n} at offset {at} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.len(what)?;
        if n > self.remaining() as u64 {
            return Err(Error::Truncated {
                what: what.into(),
                offset: at,
                need: n.min(usize::MAX as u64) as usize,
                len: self.buf.len(),
            });
        }
        let bytes = self.take(n as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Corrupt(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let id = self.u32(&format!("type of `{key}`"))?;
        ValueType::from_id(id)
            .ok_or_else(|| Error::Corrupt(format!("metadata `{key}` has unknown value type {id}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        let w = key;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.take(1, w)?[0]),
            ValueType::I8 => Value::I8(self.take(1, w)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(w)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(w)?)),
            ValueType::U32 => Value::U32(self.u32(w)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(w)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(w)?)),
            ValueType::U64 => Value::U64(self.u64(w)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(w)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(w)?)),
            ValueType::Bool => match self.take(1, w)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::Corrupt(format!("metadata `{key}`: bool byte {b}"))),
            },
            ValueType::String => Value::String(self.string(&format!("metadata `{key}`"))?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::Corrupt(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let ety = self.value_type(key)?;
                let n = self.count(&format!("length of array `{key}`"), ety.min_size())?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

#[cfg(test)]
mod tests;
