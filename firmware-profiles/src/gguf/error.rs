//! Why a GGUF file could not be read: the one error type of the GGUF reader.

use std::io;

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
