//! The interpretation of a GGUF header: [`GgufInfo`], the architecture facts the sizing rules
//! need (layers, heads, head sizes, vocabulary, per-layer arrays, the sliding-window pattern)
//! and the names of llama.cpp's file types.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use super::file;
use super::keys::{opt_first_u64, per_layer_u32, req_u64, to_u32};
use super::reader::{self, RawGguf, MAX_KEPT_ARRAY};
use super::{GgufError, MetaValue, TensorInfo};

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
    /// Reads the header of a GGUF file on disk: the one read a caller needs. It refuses what
    /// llama.cpp would (a missing file, a folder or device, a file shorter than the GGUF
    /// header, a wrong magic number, a version other than 2 or 3) and everything else the
    /// reader checks. Every error names the file, and the variant says whether the file is
    /// missing or unreadable ([`GgufError::NotFound`], [`GgufError::Unreadable`]) or not a
    /// usable GGUF model (the others).
    pub fn from_path(path: &Path) -> Result<GgufInfo, GgufError> {
        let (file, len) = file::open(path)?;
        GgufInfo::from_reader(BufReader::new(file), len).map_err(|e| file::in_file(path, e))
    }

    /// Reads GGUF metadata from an in-memory copy (a whole file or just its header).
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        GgufInfo::from_reader(bytes, bytes.len() as u64)
    }

    /// Reads GGUF metadata from `reader`, whose total length is `len` bytes. The length bounds
    /// every count in the header before anything is allocated.
    pub fn from_reader<R: Read>(reader: R, len: u64) -> Result<GgufInfo, GgufError> {
        GgufInfo::interpret(reader::read(reader, len)?)
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

    /// Where the tensor data ends: the data section's offset plus the furthest tensor's end.
    /// A whole file is at least this long.
    pub fn data_end(&self) -> u64 {
        self.data_offset.saturating_add(
            self.tensors
                .iter()
                .map(|t| t.offset.saturating_add(t.size_bytes))
                .max()
                .unwrap_or(0),
        )
    }

    /// Refuses a file of `len` bytes that is shorter than its tensor data: a copy or download
    /// cut off after the header ([`GgufError::Truncated`]). The header reader alone cannot tell,
    /// as it reads only the header.
    pub fn check_complete(&self, len: u64) -> Result<(), GgufError> {
        let end = self.data_end();
        if len < end {
            return Err(GgufError::Truncated {
                offset: len,
                needed: end - len,
                len,
            });
        }
        Ok(())
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
