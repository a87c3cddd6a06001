//! Why a GGUF file could not be read: the one error type of the GGUF reader.

use std::io;
use std::path::PathBuf;

/// Why a GGUF file could not be read.
///
/// [`GgufInfo::from_path`](super::GgufInfo::from_path) names the file in every error and sorts
/// them by variant, so a caller can decide on the variant alone:
///
/// - the file is missing or cannot be read: [`NotFound`](Self::NotFound),
///   [`Unreadable`](Self::Unreadable);
/// - the file is there but is not a usable GGUF model: [`NotAFile`](Self::NotAFile),
///   [`TooShort`](Self::TooShort), [`Invalid`](Self::Invalid) (which carries one of the
///   content errors below as its `source`).
///
/// [`GgufInfo::from_bytes`](super::GgufInfo::from_bytes) and
/// [`GgufInfo::from_reader`](super::GgufInfo::from_reader) have no file name and return the
/// content errors (`Io` to `MissingKey`) directly.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Nothing at that path.
    #[error("model file {} does not exist; check `path` in the config, or fetch the demo model with scripts/fetch-model.sh", path.display())]
    NotFound { path: PathBuf },
    /// The file exists but cannot be opened or read (permissions, a path through a non-folder,
    /// an I/O error part way through).
    #[error("model file {} cannot be read: {source}; check that the service user may read it and every folder above it", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    /// The path names a folder, a device, a FIFO or a socket.
    #[error("model file {} is {what}, not a regular file; `path` must name the .gguf file itself", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    /// Shorter than the fixed GGUF header (magic, version and two counts: 24 bytes).
    #[error("model file {} is {len} bytes, too short to be a GGUF model (the GGUF header alone takes 24); the download or copy is probably incomplete", path.display())]
    TooShort { path: PathBuf, len: u64 },
    /// The file was read but is not a usable GGUF model; `source` says what was found.
    #[error("model file {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: Box<GgufError>,
    },

    // The content errors, from any reader.
    #[error("cannot read GGUF file: {0}")]
    Io(#[from] io::Error),
    #[error(
        "not a GGUF file: it starts with {} instead of \"GGUF\"",
        magic_text(found)
    )]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {version}, but this build reads versions 2 and 3{hint}", version = .0, hint = version_hint(*.0))]
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

/// The first bytes as hex and as text, e.g. `74 68 69 73 ("this")`.
fn magic_text(found: &[u8; 4]) -> String {
    let hex: Vec<String> = found.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = found
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    format!("{} ({text:?})", hex.join(" "))
}

/// What to do about a GGUF version this build cannot read.
fn version_hint(version: u32) -> &'static str {
    if version < 2 {
        "; convert the model again with a current llama.cpp"
    } else {
        "; the model was written by a newer llama.cpp than this appl carries"
    }
}
