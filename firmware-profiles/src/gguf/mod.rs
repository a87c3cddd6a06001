//! A small, defensive GGUF metadata reader.
//!
//! Reads the header, the key/value metadata and the tensor table of a GGUF file (versions 2
//! and 3), never the tensor data. Every length read from the file is checked against the bytes
//! that remain before anything is allocated, so a truncated file, a wrong magic number or an
//! absurd count is a [`GgufError`], never a panic or a giant allocation.
//!
//! Large arrays (the 262k-entry tokenizer vocabulary, for instance) are skipped, not kept: only
//! their element type and length are recorded.
//!
//! - `reader`: the binary format: header, key/value metadata, tensor table.
//! - `info`: what the metadata means ([`GgufInfo`]).
//! - `keys`: typed lookups in the metadata, used by `info`.
//! - `ggml`: tensor element types and their sizes ([`GgmlType`]).
//! - `file`: opening a file on disk, and naming it in every error.
//! - `error`: [`GgufError`].

mod error;
mod file;
mod ggml;
mod info;
mod keys;
mod reader;

pub use error::GgufError;
pub use ggml::GgmlType;
pub use info::{file_type_name, GgufInfo};
pub use reader::{MetaValue, TensorInfo};
