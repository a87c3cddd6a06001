//! A small, defensive GGUF metadata reader.
//!
//! Reads the header, the key/value metadata and the tensor table of a GGUF file (versions 2
//! and 3), never the tensor data. Every length read from the file is checked against the bytes
//! that remain before anything is allocated, so a truncated file, a wrong magic number or an
//! absurd count is a [`GgufError`], never a panic or a giant allocation.
//!
//! Large arrays (the 262k-entry tokenizer vocabulary, for instance) are skipped, not kept: only
//! their element type and length are recorded.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::Path;

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
const MAX_KEPT_ARRAY: u64 = 16 * 1024;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// GGUF's default data alignment (`GGUF_DEFAULT_ALIGNMENT` in ggml's `gguf.h`).
const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file: {0}")]
    Io(#[from] io::Error),
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error(
        "GGUF file is truncated: needed {needed} more bytes at offset {offset}, file has {len}"
    )]
    Truncated { offset: u64, needed: u64, len: u64 },
    #[error("GGUF header declares {count} {what}, more than the limit {limit}")]
    AbsurdCount {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("GGUF {what} at offset {offset} has unknown type id {id}")]
    UnknownType {
        what: &'static str,
        id: u32,
        offset: u64,
    },
    #[error("GGUF string at offset {offset} is not UTF-8")]
    BadUtf8 { offset: u64 },
    #[error("GGUF tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("GGUF metadata key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("GGUF metadata lacks required key {0:?}")]
    MissingKey(String),
}

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

/// ggml tensor element types, with their block geometry (`ggml/src/ggml-common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// `(name, elements per block, bytes per block)`, from the `block_*` static asserts in
    /// ggml's `ggml-common.h`. `None` for ids ggml has removed or never had.
    pub fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            42 => ("Q2_0", 64, 18),
            _ => return None,
        })
    }

    /// The type's ggml name, or `"type<N>"` for an unknown id.
    pub fn name(self) -> String {
        match self.traits() {
            Some((n, _, _)) => n.to_string(),
            None => format!("type{}", self.0),
        }
    }

    /// Bytes for `n_elements` elements, or `None` when the count is not a whole number of
    /// blocks, the type is unknown, or the result overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let (_, block, size) = self.traits()?;
        if n_elements % block != 0 {
            return None;
        }
        (n_elements / block).checked_mul(size)
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

/// Everything the sizing rules need from a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    /// `general.architecture`, e.g. `llama`, `gemma3`.
    pub architecture: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`), when present.
    pub file_type: Option<u32>,
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.context_length`: the training context.
    pub n_ctx_train: u64,
    /// `{arch}.embedding_length`.
    pub n_embd: u64,
    /// `{arch}.feed_forward_length` (the first value, when it is a per-layer array).
    pub n_ff: u64,
    /// `{arch}.attention.head_count` (first value when per-layer).
    pub n_head: u32,
    /// KV heads per layer (`{arch}.attention.head_count_kv`, a scalar or per-layer array;
    /// defaults to `n_head`). Length is `n_layer`.
    pub n_head_kv: Vec<u32>,
    /// `{arch}.attention.key_length`, otherwise `n_embd / n_head`.
    pub head_dim_k: u32,
    /// `{arch}.attention.value_length`, otherwise `n_embd / n_head`.
    pub head_dim_v: u32,
    /// `{arch}.attention.sliding_window`, when the model uses sliding-window attention.
    pub sliding_window: Option<u32>,
    /// Per layer: whether the layer uses the sliding window (all `false` without SWA).
    pub swa_layers: Vec<bool>,
    /// Entries in `tokenizer.ggml.tokens` (or the output tensor's width).
    pub n_vocab: u64,
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data section from the start of the file.
    pub data_offset: u64,
    /// All metadata, with long arrays and strings elided.
    pub metadata: BTreeMap<String, MetaValue>,
}

impl GgufInfo {
    /// Reads the header of a GGUF file on disk.
    pub fn from_path(path: &Path) -> Result<GgufInfo, GgufError> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        GgufInfo::from_reader(BufReader::new(file), len)
    }

    /// Reads GGUF metadata from an in-memory copy (a whole file or just its header).
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        GgufInfo::from_reader(bytes, bytes.len() as u64)
    }

    /// Reads GGUF metadata from `reader`, whose total length is `len` bytes. The length bounds
    /// every count in the header before anything is allocated.
    pub fn from_reader<R: Read>(reader: R, len: u64) -> Result<GgufInfo, GgufError> {
        let mut r = Reader {
            inner: reader,
            pos: 0,
            len,
        };
        let raw = r.read_raw()?;
        GgufInfo::interpret(raw)
    }

    /// Total bytes of all tensors: the weights.
    pub fn weights_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size_bytes).sum()
    }

    /// Total parameter count (elements of all tensors).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements).sum()
    }

    /// Average bits per weight over all tensors.
    pub fn bits_per_weight(&self) -> f64 {
        let p = self.parameter_count();
        if p == 0 {
            return 0.0;
        }
        self.weights_bytes() as f64 * 8.0 / p as f64
    }

    /// Bytes of the tensors that belong to layer `il` (`blk.{il}.*`).
    pub fn layer_bytes(&self, il: u32) -> u64 {
        self.tensors
            .iter()
            .filter(|t| t.layer() == Some(il))
            .map(|t| t.size_bytes)
            .sum()
    }

    /// Bytes of a tensor by exact name.
    pub fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.size_bytes)
    }

    /// Human name of the quantization (`general.file_type`), e.g. `Q4_K_M`.
    pub fn file_type_name(&self) -> String {
        match self.file_type {
            Some(ft) => file_type_name(ft),
            None => "unknown".to_string(),
        }
    }

    /// Whether the model has separate sliding-window and global KV caches.
    pub fn has_swa(&self) -> bool {
        self.sliding_window.is_some() && self.swa_layers.iter().any(|&s| s)
    }

    fn interpret(raw: RawGguf) -> Result<GgufInfo, GgufError> {
        let RawGguf {
            version,
            metadata,
            tensors,
            data_offset,
        } = raw;
        let architecture = metadata
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
            .to_string();
        let arch = architecture.as_str();
        let key = |suffix: &str| format!("{arch}.{suffix}");

        let n_layer_u64 = req_u64(&metadata, &key("block_count"))?;
        let n_layer = u32::try_from(n_layer_u64)
            .ok()
            .filter(|&n| n > 0 && u64::from(n) <= MAX_KEPT_ARRAY)
            .ok_or_else(|| GgufError::BadKey {
                key: key("block_count"),
                reason: format!("{n_layer_u64} layers is out of range"),
            })?;
        let n_embd = req_u64(&metadata, &key("embedding_length"))?;
        let n_ctx_train = opt_first_u64(&metadata, &key("context_length"))?.unwrap_or(0);
        let n_ff = opt_first_u64(&metadata, &key("feed_forward_length"))?.unwrap_or(0);
        let n_head = per_layer_u32(&metadata, &key("attention.head_count"), n_layer)?
            .ok_or_else(|| GgufError::MissingKey(key("attention.head_count")))?;
        let n_head0 = n_head.first().copied().unwrap_or(0);
        let n_head_kv = per_layer_u32(&metadata, &key("attention.head_count_kv"), n_layer)?
            .unwrap_or_else(|| n_head.clone());
        let default_dim = if n_head0 > 0 {
            u32::try_from(n_embd / u64::from(n_head0)).unwrap_or(0)
        } else {
            0
        };
        let head_dim_k = opt_first_u64(&metadata, &key("attention.key_length"))?
            .map_or(Ok(default_dim), |v| to_u32(&key("attention.key_length"), v))?;
        let head_dim_v = opt_first_u64(&metadata, &key("attention.value_length"))?
            .map_or(Ok(default_dim), |v| {
                to_u32(&key("attention.value_length"), v)
            })?;

        let sliding_window = opt_first_u64(&metadata, &key("attention.sliding_window"))?
            .map(|v| to_u32(&key("attention.sliding_window"), v))
            .transpose()?
            .filter(|&w| w > 0);
        let swa_layers = match sliding_window {
            None => vec![false; n_layer as usize],
            Some(_) => swa_pattern(&metadata, arch, n_layer)?,
        };

        let n_vocab = match metadata.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array { len, .. }) => *len,
            _ => tensors
                .iter()
                .find(|t| t.name == "token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .unwrap_or(0),
        };
        let file_type = metadata
            .get("general.file_type")
            .and_then(MetaValue::as_u64)
            .and_then(|v| u32::try_from(v).ok());
        let name = metadata
            .get("general.name")
            .and_then(MetaValue::as_str)
            .map(str::to_string);

        Ok(GgufInfo {
            version,
            architecture,
            name,
            file_type,
            n_layer,
            n_ctx_train,
            n_embd,
            n_ff,
            n_head: n_head0,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            sliding_window,
            swa_layers,
            n_vocab,
            tensors,
            data_offset,
            metadata,
        })
    }
}

/// llama.cpp's `LLAMA_FTYPE_*` names (`include/llama.h`).
pub fn file_type_name(ft: u32) -> String {
    let s = match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        other => return format!("ftype{other}"),
    };
    s.to_string()
}

/// Which layers use the sliding window. An explicit `{arch}.attention.sliding_window_pattern`
/// (bool array, or a period) wins; otherwise the architecture's default period from llama.cpp's
/// `load_swa_pattern` calls (`src/models/*.cpp`): gemma2 2, gemma3 6, cohere2 4. With period
/// `p`, layer `il` is SWA when `il % p < p - 1`, so every p-th layer is global.
fn swa_pattern(
    metadata: &BTreeMap<String, MetaValue>,
    arch: &str,
    n_layer: u32,
) -> Result<Vec<bool>, GgufError> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    let period = match metadata.get(&key) {
        Some(MetaValue::Array {
            values: Some(vals), ..
        }) => {
            let bools: Vec<bool> = vals
                .iter()
                .map(|v| match v {
                    MetaValue::Bool(b) => Some(*b),
                    other => other.as_u64().map(|u| u != 0),
                })
                .collect::<Option<_>>()
                .ok_or_else(|| GgufError::BadKey {
                    key: key.clone(),
                    reason: "array elements are not booleans".into(),
                })?;
            if bools.len() != n_layer as usize {
                return Err(GgufError::BadKey {
                    key,
                    reason: format!("has {} entries for {n_layer} layers", bools.len()),
                });
            }
            return Ok(bools);
        }
        Some(v) => v.as_u64().ok_or_else(|| GgufError::BadKey {
            key: key.clone(),
            reason: "neither a period nor a bool array".into(),
        })?,
        None => match arch {
            "gemma2" => 2,
            "gemma3" | "gemma-embedding" => 6,
            "gemma3n" => 5,
            "cohere2" | "exaone4" => 4,
            // Unknown SWA architecture: treat every layer as SWA except none global would be
            // wrong both ways; assume all layers SWA only when told. Be conservative: none.
            _ => 0,
        },
    };
    Ok((0..u64::from(n_layer))
        .map(|il| period != 0 && il % period < period - 1)
        .collect())
}

fn req_u64(metadata: &BTreeMap<String, MetaValue>, key: &str) -> Result<u64, GgufError> {
    opt_first_u64(metadata, key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
}

/// An integer key, or the first element when it is a per-layer array.
fn opt_first_u64(
    metadata: &BTreeMap<String, MetaValue>,
    key: &str,
) -> Result<Option<u64>, GgufError> {
    let bad = |reason: &str| GgufError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    match metadata.get(key) {
        None => Ok(None),
        Some(MetaValue::Array {
            values: Some(vals), ..
        }) => vals
            .first()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| bad("not an unsigned integer array"))
            })
            .transpose(),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad("not an unsigned integer")),
    }
}

/// A scalar or per-layer integer key expanded to one value per layer.
fn per_layer_u32(
    metadata: &BTreeMap<String, MetaValue>,
    key: &str,
    n_layer: u32,
) -> Result<Option<Vec<u32>>, GgufError> {
    let bad = |reason: String| GgufError::BadKey {
        key: key.to_string(),
        reason,
    };
    match metadata.get(key) {
        None => Ok(None),
        Some(MetaValue::Array {
            values: Some(vals), ..
        }) => {
            if vals.len() != n_layer as usize {
                return Err(bad(format!(
                    "has {} entries for {n_layer} layers",
                    vals.len()
                )));
            }
            vals.iter()
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| bad("not an unsigned integer array".into()))
                        .and_then(|u| to_u32(key, u))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(v) => {
            let u = v
                .as_u64()
                .ok_or_else(|| bad("not an unsigned integer".into()))?;
            Ok(Some(vec![to_u32(key, u)?; n_layer as usize]))
        }
    }
}

fn to_u32(key: &str, v: u64) -> Result<u32, GgufError> {
    u32::try_from(v).map_err(|_| GgufError::BadKey {
        key: key.to_string(),
        reason: format!("{v} does not fit in 32 bits"),
    })
}

struct RawGguf {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
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
