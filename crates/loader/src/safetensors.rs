//! safetensors files: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the data. The file is memory-mapped; a tensor is a range of
//! the mapping, never a copy.
//!
//! Every range, shape and size is checked against the file before use, so a truncated or corrupt
//! file is an [`Error`] naming the file and the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::gguf::Storage;
use crate::{Error, GgmlType, Result};

/// A header larger than this is not a real checkpoint's (llama.cpp and safetensors cap it at
/// 100 MB as well).
const MAX_HEADER: u64 = 100 << 20;

/// One tensor of a safetensors file. `shape` is row-major (the last dimension is contiguous), the
/// reverse of ggml's order.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    pub name: String,
    /// The dtype as the file spells it (`BF16`, `F16`, `F32`, `I64`...).
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range inside the whole file (header included).
    pub start: usize,
    pub len: usize,
}

impl StTensor {
    /// The GGML type holding this dtype bit for bit, or an error naming the tensor and dtype.
    pub fn ggml_type(&self) -> Result<GgmlType> {
        ggml_type(&self.dtype).ok_or_else(|| Error::UnsupportedType {
            name: self.name.clone(),
            ty: format!(
                "{} (safetensors weights must be BF16, F16 or F32)",
                self.dtype
            ),
        })
    }

    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The GGML type of a safetensors dtype whose bytes GGUF stores as they are.
fn ggml_type(dtype: &str) -> Option<GgmlType> {
    Some(match dtype {
        "F32" => GgmlType::F32,
        "F16" => GgmlType::F16,
        "BF16" => GgmlType::BF16,
        _ => return None,
    })
}

/// Bytes per element of every dtype the format defines (so that any well-formed file parses;
/// unsupported dtypes are refused when a tensor of that dtype is used).
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A memory-mapped safetensors file.
pub struct SafeTensors {
    pub(crate) storage: Storage,
    pub tensors: Vec<StTensor>,
    /// The header's `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors")
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse(Storage::map(path)?, &path.display().to_string())
    }

    /// Parses a file held in memory; `what` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self> {
        Self::parse(Storage::Owned(bytes), what)
    }

    /// The bytes of `t` (checked at parse time).
    pub fn bytes(&self, t: &StTensor) -> &[u8] {
        &self.storage[t.start..t.start + t.len]
    }

    fn parse(storage: Storage, what: &str) -> Result<Self> {
        let corrupt = |m: String| Error::Corrupt(format!("safetensors file {what}: {m}"));
        let len = storage.len() as u64;
        let Some(head) = storage.get(..8) else {
            return Err(corrupt(format!("{len} bytes is too short for a header")));
        };
        let n = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        if n > MAX_HEADER || 8 + n > len {
            return Err(corrupt(format!(
                "header of {n} bytes does not fit in the file of {len} bytes"
            )));
        }
        let data_start = 8 + n;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&storage[8..data_start as usize])
                .map_err(|e| corrupt(format!("header is not a JSON object: {e}")))?;
        let data_len = len - data_start;
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(header.len());
        for (name, v) in header {
            if name == "__metadata__" {
                let m: BTreeMap<String, String> = serde_json::from_value(v)
                    .map_err(|e| corrupt(format!("`__metadata__` is not a map of strings: {e}")))?;
                metadata = m;
                continue;
            }
            let e: Entry =
                serde_json::from_value(v).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
            let bad = |reason: String| Error::BadTensor {
                name: name.clone(),
                reason: format!("{reason} (in {what})"),
            };
            let per =
                dtype_bytes(&e.dtype).ok_or_else(|| bad(format!("unknown dtype `{}`", e.dtype)))?;
            let [begin, end] = e.data_offsets;
            let need = e
                .shape
                .iter()
                .try_fold(per, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("shape {:?} overflows", e.shape)))?;
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "data range {begin}..{end} lies outside the {data_len} data bytes"
                )));
            }
            if end - begin != need {
                return Err(bad(format!(
                    "{} of shape {:?} takes {need} bytes, its range {begin}..{end} holds {}",
                    e.dtype,
                    e.shape,
                    end - begin
                )));
            }
            tensors.push(StTensor {
                name,
                dtype: e.dtype,
                shape: e.shape,
                start: (data_start + begin) as usize,
                len: need as usize,
            });
        }
        Ok(Self {
            storage,
            tensors,
            metadata,
        })
    }
}

/// Writes a safetensors file in memory (tests build checkpoints with it). `tensors` are
/// (name, dtype, row-major shape, bytes).
pub fn write(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, bytes) in tensors {
        let end = offset + bytes.len() as u64;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).expect("a JSON map");
    // The format pads the header with spaces to 8 bytes.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    for (.., bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_what_it_writes() {
        let bytes = write(&[
            ("a", "F32", vec![2, 3], f32_bytes(&[1., 2., 3., 4., 5., 6.])),
            ("b", "BF16", vec![2], vec![0x80, 0x3f, 0, 0x40]),
        ]);
        let st = SafeTensors::from_bytes(bytes, "t").unwrap();
        assert_eq!(st.tensors.len(), 2);
        let a = &st.tensors[0];
        assert_eq!((a.name.as_str(), a.shape.as_slice()), ("a", &[2u64, 3][..]));
        assert_eq!(a.ggml_type().unwrap(), GgmlType::F32);
        assert_eq!(st.bytes(a), f32_bytes(&[1., 2., 3., 4., 5., 6.]));
        let b = &st.tensors[1];
        assert_eq!(b.ggml_type().unwrap(), GgmlType::BF16);
        assert_eq!(st.bytes(b), [0x80, 0x3f, 0, 0x40]);
    }

    #[test]
    fn unsupported_dtype_is_named_when_used() {
        let st =
            SafeTensors::from_bytes(write(&[("ids", "I64", vec![1], vec![0; 8])]), "t").unwrap();
        let e = st.tensors[0].ggml_type().unwrap_err().to_string();
        assert!(e.contains("`ids`") && e.contains("I64"), "{e}");
    }

    #[test]
    fn corrupt_files_are_errors() {
        let good = write(&[("a", "F32", vec![2], f32_bytes(&[1., 2.]))]);
        for cut in [0, 7, 12, good.len() - 1] {
            let e = SafeTensors::from_bytes(good[..cut].to_vec(), "t").unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        // A range that does not match the shape.
        let bad = write(&[("a", "F32", vec![3], f32_bytes(&[1., 2.]))]);
        let e = SafeTensors::from_bytes(bad, "t").unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("12 bytes"), "{e}");
        // A header length past the end.
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(SafeTensors::from_bytes(huge, "t").is_err());
        let e = SafeTensors::from_bytes(write(&[("x", "Q9", vec![1], vec![0])]), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown dtype `Q9`"), "{e}");
    }
}
