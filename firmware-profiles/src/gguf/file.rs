//! Opening a GGUF file on disk: the checks that tell a missing or unreadable file from one
//! that is not a GGUF model, with the file's name in every error.

use std::fs::File;
use std::path::Path;

use super::GgufError;

/// The fixed start of every GGUF file: magic (4), version (4), tensor count (8), metadata
/// count (8).
pub(super) const HEADER_LEN: u64 = 24;

/// Opens `path` for reading and returns it with its length, or the error that says why it
/// cannot be a GGUF model. Looks before opening, so a FIFO is refused rather than blocking.
pub(super) fn open(path: &Path) -> Result<(File, u64), GgufError> {
    let meta = std::fs::metadata(path).map_err(|e| cannot_open(path, e))?;
    if !meta.is_file() {
        return Err(GgufError::NotAFile {
            path: path.to_owned(),
            what: if meta.is_dir() {
                "a folder"
            } else {
                "a device, FIFO or socket"
            },
        });
    }
    let file = File::open(path).map_err(|e| cannot_open(path, e))?;
    let len = file.metadata().map_err(|e| cannot_open(path, e))?.len();
    if len < HEADER_LEN {
        return Err(GgufError::TooShort {
            path: path.to_owned(),
            len,
        });
    }
    Ok((file, len))
}

fn cannot_open(path: &Path, e: std::io::Error) -> GgufError {
    if e.kind() == std::io::ErrorKind::NotFound {
        GgufError::NotFound {
            path: path.to_owned(),
        }
    } else {
        GgufError::Unreadable {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// Names the file in an error from reading its content: an I/O failure part way through makes
/// the file unreadable, anything else makes it not a usable GGUF model.
pub(super) fn in_file(path: &Path, e: GgufError) -> GgufError {
    match e {
        GgufError::Io(source) => GgufError::Unreadable {
            path: path.to_owned(),
            source,
        },
        other => GgufError::Invalid {
            path: path.to_owned(),
            source: Box::new(other),
        },
    }
}
