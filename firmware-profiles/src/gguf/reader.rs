//! The GGUF binary reader: a position-tracking reader that checks every length against the
//! bytes that remain, and reads the header, the key/value metadata and the tensor table into
//! plain values ([`MetaValue`], [`TensorInfo`]) without interpreting them.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::{GgmlType, GgufError};

/// `GGUF` in little-endian byte order.
const MAGIC: [u8; 4] = *b"GGUF";
/// No real model has more tensors than this; a larger count is a corrupt or hostile header.
const MAX_TENSORS: u64 = 1 << 20;
/// Same for metadata entries.
const MAX_KV: u64 = 1 << 20;
/// Longest key or tensor name accepted.
const MAX_NAME: u64 = 64 * 1024;
/// Longest string value kept in memory (longer ones are skipped).
const MAX_KEPT_STRING: u64 = 64 * 1024;
/// Arrays up to this many elements are kept (per-layer arrays); longer ones are skipped.
pub(super) const MAX_KEPT_ARRAY: u64 = 16 * 1024;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// GGUF's default data alignment (`GGUF_DEFAULT_ALIGNMENT` in ggml's `gguf.h`).
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value, as far as this reader keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A string longer than the reader keeps; only its length is recorded.
    LongStr {
        len: u64,
    },
    /// An array; `values` is `None` when it was longer than the reader keeps.
    Array {
        elem_type: u32,
        len: u64,
        values: Option<Vec<MetaValue>>,
    },
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(v) => Some(v),
            MetaValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is a (kept) string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    /// Size of the data in bytes, from the type's block geometry.
    pub size_bytes: u64,
}

impl TensorInfo {
    /// The block (layer) index for `blk.N.*` tensors.
    pub fn layer(&self) -> Option<u32> {
        let rest = self.name.strip_prefix("blk.")?;
        rest.split('.').next()?.parse().ok()
    }
}

/// A GGUF header as read, before interpretation.
pub(super) struct RawGguf {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data section from the start of the file.
    pub data_offset: u64,
}

/// Reads the header, metadata and tensor table from `reader`, whose total length is `len`
/// bytes. The length bounds every count in the header before anything is allocated.
pub(super) fn read<R: Read>(reader: R, len: u64) -> Result<RawGguf, GgufError> {
    Reader {
        inner: reader,
        pos: 0,
        len,
    }
    .read_raw()
}

/// A position-tracking reader that checks every read against the declared length.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

// GGUF value type ids (`enum gguf_type` in ggml's `gguf.h`).
const T_UINT8: u32 = 0;
const T_INT8: u32 = 1;
const T_UINT16: u32 = 2;
const T_INT16: u32 = 3;
const T_UINT32: u32 = 4;
const T_INT32: u32 = 5;
const T_FLOAT32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_UINT64: u32 = 10;
const T_INT64: u32 = 11;
const T_FLOAT64: u32 = 12;

/// Fixed size of a scalar GGUF type, `None` for strings and arrays.
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        T_UINT8 | T_INT8 | T_BOOL => Some(1),
        T_UINT16 | T_INT16 => Some(2),
        T_UINT32 | T_INT32 | T_FLOAT32 => Some(4),
        T_UINT64 | T_INT64 | T_FLOAT64 => Some(8),
        _ => None,
    }
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn ensure(&self, needed: u64) -> Result<(), GgufError> {
        if needed > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos,
                needed,
                len: self.len,
            });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        self.ensure(N as u64)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e, N))?;
        self.pos += N as u64;
        Ok(buf)
    }

    /// Maps an early EOF (the stream was shorter than `len` claimed) to `Truncated`.
    fn io(&self, e: io::Error, needed: usize) -> GgufError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            GgufError::Truncated {
                offset: self.pos,
                needed: needed as u64,
                len: self.len,
            }
        } else {
            GgufError::Io(e)
        }
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.ensure(n)?;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(GgufError::Truncated {
                offset: self.pos + copied,
                needed: n - copied,
                len: self.len,
            });
        }
        self.pos += n;
        Ok(())
    }

    /// A string, kept if at most `keep_max` bytes long (and `max` bounds what is accepted).
    fn string(&mut self, keep_max: u64) -> Result<MetaValue, GgufError> {
        let n = self.u64()?;
        self.ensure(n)?;
        if n > keep_max {
            self.skip(n)?;
            return Ok(MetaValue::LongStr { len: n });
        }
        let start = self.pos;
        // `n` is at most `keep_max` (64 KiB) here, so the cast and allocation are small.
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.io(e, buf.len()))?;
        self.pos += n;
        String::from_utf8(buf)
            .map(MetaValue::Str)
            .map_err(|_| GgufError::BadUtf8 { offset: start })
    }

    fn name(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        match self.string(MAX_NAME)? {
            MetaValue::Str(s) => Ok(s),
            _ => Err(GgufError::AbsurdCount {
                what: "bytes in a name",
                count: self.pos - at - 8,
                limit: MAX_NAME,
            }),
        }
    }

    fn scalar(&mut self, t: u32) -> Result<MetaValue, GgufError> {
        Ok(match t {
            T_UINT8 => MetaValue::Uint(u64::from(self.bytes::<1>()?[0])),
            T_INT8 => MetaValue::Int(i64::from(i8::from_le_bytes(self.bytes()?))),
            T_UINT16 => MetaValue::Uint(u64::from(u16::from_le_bytes(self.bytes()?))),
            T_INT16 => MetaValue::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            T_UINT32 => MetaValue::Uint(u64::from(self.u32()?)),
            T_INT32 => MetaValue::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            T_FLOAT32 => MetaValue::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            T_BOOL => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            T_UINT64 => MetaValue::Uint(self.u64()?),
            T_INT64 => MetaValue::Int(i64::from_le_bytes(self.bytes()?)),
            T_FLOAT64 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            T_STRING => self.string(MAX_KEPT_STRING)?,
            other => {
                return Err(GgufError::UnknownType {
                    what: "value",
                    id: other,
                    offset: self.pos,
                })
            }
        })
    }

    fn value(&mut self, t: u32) -> Result<MetaValue, GgufError> {
        if t != T_ARRAY {
            return self.scalar(t);
        }
        let at = self.pos;
        let elem_type = self.u32()?;
        let len = self.u64()?;
        if elem_type == T_ARRAY {
            return Err(GgufError::UnknownType {
                what: "nested array element",
                id: elem_type,
                offset: at,
            });
        }
        // Each element takes at least its fixed size (strings at least their 8-byte length),
        // so a length the rest of the file cannot hold is rejected before any allocation.
        let min_elem = match scalar_size(elem_type) {
            Some(s) => s,
            None if elem_type == T_STRING => 8,
            None => {
                return Err(GgufError::UnknownType {
                    what: "array element",
                    id: elem_type,
                    offset: at,
                })
            }
        };
        let min_total = len.checked_mul(min_elem).ok_or(GgufError::AbsurdCount {
            what: "array elements",
            count: len,
            limit: self.remaining() / min_elem,
        })?;
        if min_total > self.remaining() {
            return Err(GgufError::AbsurdCount {
                what: "array elements",
                count: len,
                limit: self.remaining() / min_elem,
            });
        }
        if len > MAX_KEPT_ARRAY {
            match scalar_size(elem_type) {
                Some(_) => self.skip(min_total)?,
                None => {
                    for _ in 0..len {
                        let n = self.u64()?;
                        self.skip(n)?;
                    }
                }
            }
            return Ok(MetaValue::Array {
                elem_type,
                len,
                values: None,
            });
        }
        // `len` is at most MAX_KEPT_ARRAY here.
        let mut values = Vec::with_capacity(len as usize);
        for _ in 0..len {
            values.push(self.scalar(elem_type)?);
        }
        Ok(MetaValue::Array {
            elem_type,
            len,
            values: Some(values),
        })
    }

    fn read_raw(&mut self) -> Result<RawGguf, GgufError> {
        let magic: [u8; 4] = self.bytes()?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = self.u64()?;
        let n_kv = self.u64()?;
        // A tensor entry is at least 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 + 8 bytes; a
        // KV entry at least 8 + 4 + 1. Check the counts against both hard limits and the file.
        for (what, count, limit, min) in [
            ("tensors", n_tensors, MAX_TENSORS, 32u64),
            ("metadata entries", n_kv, MAX_KV, 13u64),
        ] {
            let fits_file = count.saturating_mul(min) <= self.remaining();
            if count > limit || !fits_file {
                return Err(GgufError::AbsurdCount {
                    what,
                    count,
                    limit: limit.min(self.remaining() / min),
                });
            }
        }

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = self.name()?;
            let t = self.u32()?;
            let v = self.value(t)?;
            metadata.insert(key, v);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| GgufError::BadKey {
                    key: "general.alignment".into(),
                    reason: "must be a power of two".into(),
                })?,
        };

        // `n_tensors` was checked against MAX_TENSORS and the file length above.
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = self.name()?;
            let n_dims = self.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64()?);
            }
            let type_at = self.pos;
            let ggml_type = GgmlType(self.u32()?);
            let offset = self.u64()?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::BadTensor {
                    name: name.clone(),
                    reason: format!("dimensions {dims:?} overflow"),
                })?;
            if ggml_type.traits().is_none() {
                return Err(GgufError::UnknownType {
                    what: "tensor",
                    id: ggml_type.0,
                    offset: type_at,
                });
            }
            let size_bytes =
                ggml_type
                    .bytes_for(n_elements)
                    .ok_or_else(|| GgufError::BadTensor {
                        name: name.clone(),
                        reason: format!(
                            "{n_elements} elements is not a whole number of {} blocks",
                            ggml_type.name()
                        ),
                    })?;
            if offset % alignment != 0 {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("data offset {offset} is not aligned to {alignment}"),
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_elements,
                size_bytes,
            });
        }
        let data_offset = self.pos.div_ceil(alignment) * alignment;
        Ok(RawGguf {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }
}
