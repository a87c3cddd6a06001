//! The KV cache element type: its names, its ggml storage and the bytes a row of it takes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::gguf::GgmlType;

/// KV cache element type (llama.cpp `--cache-type-k/-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Iq4Nl,
    Q5_0,
    Q5_1,
}

impl KvType {
    /// The ggml type that stores it.
    pub fn ggml(self) -> GgmlType {
        GgmlType(match self {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Bf16 => 30,
            KvType::Q8_0 => 8,
            KvType::Q4_0 => 2,
            KvType::Q4_1 => 3,
            KvType::Iq4Nl => 20,
            KvType::Q5_0 => 6,
            KvType::Q5_1 => 7,
        })
    }

    /// Bytes for a row of `n` elements, rounding up to whole blocks.
    pub fn row_bytes(self, n: u64) -> u64 {
        // Every KvType maps to a ggml type with known traits.
        let (_, block, size) = self.ggml().traits().unwrap_or(("F16", 1, 2));
        n.div_ceil(block) * size
    }

    /// Average bytes per element (f16 2, q8_0 1.0625, q4_0 0.5625).
    pub fn bytes_per_element(self) -> f64 {
        let (_, block, size) = self.ggml().traits().unwrap_or(("F16", 1, 2));
        size as f64 / block as f64
    }

    pub const ALL: [KvType; 9] = [
        KvType::F32,
        KvType::F16,
        KvType::Bf16,
        KvType::Q8_0,
        KvType::Q4_0,
        KvType::Q4_1,
        KvType::Iq4Nl,
        KvType::Q5_0,
        KvType::Q5_1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Q4_1 => "q4_1",
            KvType::Iq4Nl => "iq4_nl",
            KvType::Q5_0 => "q5_0",
            KvType::Q5_1 => "q5_1",
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown KV cache type name.
#[derive(Debug, thiserror::Error)]
#[error("unknown KV cache type {0:?} (expected one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")]
pub struct UnknownKvType(pub String);

impl FromStr for KvType {
    type Err = UnknownKvType;
    fn from_str(s: &str) -> Result<KvType, UnknownKvType> {
        let lower = s.to_ascii_lowercase();
        KvType::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or(UnknownKvType(s.to_string()))
    }
}

impl From<KvType> for String {
    fn from(k: KvType) -> String {
        k.name().to_string()
    }
}

impl TryFrom<String> for KvType {
    type Error = UnknownKvType;
    fn try_from(s: String) -> Result<KvType, UnknownKvType> {
        s.parse()
    }
}
