//! The crate's error type.

use std::path::PathBuf;

/// Errors from the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log cannot write right now (fail-closed). Map to gRPC `UNAVAILABLE`.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// A field failed validation.
    #[error("invalid {field}: {why}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// The sled store reported an error.
    #[error("audit store: {0}")]
    Store(#[from] sled::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key file is missing, malformed or too widely readable.
    #[error("audit key: {0}")]
    Key(String),
    /// The store's own metadata is inconsistent; run `applctl audit verify`.
    #[error("audit store is inconsistent: {0}")]
    Corrupt(String),
    /// An export or manifest could not be written or parsed.
    #[error("audit export: {0}")]
    Export(String),
}

impl AuditError {
    /// A short stable reason string (for gRPC status details and metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            AuditError::Unavailable(_) => "audit_unavailable",
            AuditError::Closed => "audit_closed",
            AuditError::InvalidField { .. } => "audit_invalid_field",
            AuditError::Store(_) => "audit_store_error",
            AuditError::Io { .. } => "audit_io_error",
            AuditError::Key(_) => "audit_key_error",
            AuditError::Corrupt(_) => "audit_store_inconsistent",
            AuditError::Export(_) => "audit_export_error",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }
}
