//! `appl-audit`: the HIPAA audit log of the appl inference appliance.
//!
//! It is used by `appld`, which writes the log, and by `applctl`, which exports and verifies it
//! offline. It is pure Rust and knows nothing of llama.cpp or of the wire protocol.
//!
//! # Records
//!
//! A [`Record`] holds a gap-free sequence number (`seq`, from 0, also its Merkle leaf index), a
//! UTC timestamp with microseconds (never earlier than the previous record's), who (actor
//! identity, [`Role`], peer address), what ([`Action`], [`Phase`] admitted / completed / event,
//! request id, model id and the GGUF's SHA-256) and the outcome (status code, stable reason
//! code, prompt and completion token counts, latency). It may carry an HMAC-SHA256 of the prompt
//! under a key that only the appliance holds ([`AuditLog::prompt_digest`]), for correlation.
//!
//! **No PHI.** A record has no free-text field: every string is an [`Ident`] (ASCII letters,
//! digits and `._-:@/=,+[]#`, no whitespace, at most 256 bytes) or an enum, so prompt or
//! completion text cannot be stored by mistake.
//!
//! The canonical encoding ([`Record::canonical_bytes`]) is compact JSON with the fields in
//! [`record::FIELDS`] order and absent options left out. Parsing insists on that exact form.
//!
//! # Durability contract
//!
//! [`AuditLog::append`] resolves with the record's `seq` only after the record is in sled and
//! a sled `flush()` (which syncs the log file) that started after it was written has returned.
//! Group commit runs in two stages: the writer thread takes every append that is queued,
//! assigns sequence numbers and writes them as one atomic sled batch together with the Merkle
//! metadata; the flush thread takes every batch written since its last flush, flushes once for
//! all of them and only then acknowledges them. The writer fills the next batch while the flush
//! runs. An error means the record may or may not be on disk, but it was not acknowledged and
//! the caller must refuse the request.
//!
//! # Integrity
//!
//! Records are the leaves of an RFC 9162 Merkle tree: `leaf = SHA-256(0x00 || canonical)`,
//! `node = SHA-256(0x01 || left || right)`. The writer keeps the tree's frontier (one hash per
//! set bit of the size), stored atomically with each batch, so the tree continues across
//! restarts. Every `checkpoint_every_records` records, every `checkpoint_every`, at open (to
//! cover what a crash left) and at close, it signs a [`Checkpoint`]: the message
//! `appl-audit checkpoint v1\nsize N\nroot HEX\ntime TS\n` with an Ed25519 key created on first
//! start (`audit-signing.key`, mode 0600; the public half in `audit-signing.pub`). A checkpoint
//! also carries the frontier at its size, checked against its signed root.
//!
//! [`verify_store`] checks every signature, every record's order and hash, and the root at every
//! checkpoint, and names the first bad record. An [`export`] carries each record with its leaf
//! hash and a manifest with the checkpoint and the hashes of the subtrees of the records that
//! were left out; [`verify_export`] recomputes the signed root from that with only the public
//! key, and names the first altered, missing or reordered record.
//!
//! # Retention
//!
//! Records older than the retention period (six years by default) are pruned, but only up to a
//! checkpoint, never past it: the prune point is always the size of a signed checkpoint, whose
//! frontier stands in for the removed records, so that both store and export verification still
//! work from that point on.
//!
//! # Fail-closed
//!
//! Any error while writing or flushing (I/O error, disk full, read-only file system) puts the log
//! in [`AuditHealth::Failed`] with the reason, published on a `tokio::sync::watch` channel
//! ([`AuditLog::health`]). While failed, appends fail at once with
//! [`AuditError::Unavailable`], which the daemon turns into `UNAVAILABLE` and `NOT_SERVING`.
//! Every `retry_every` the writer reopens the store, reloads its state from what is on disk and
//! proves that a write and a flush succeed; then it is `Healthy` again by itself. Acknowledged
//! records were flushed before they were acknowledged, so none is lost.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod error;
pub mod export;
pub mod keys;
mod log;
pub mod merkle;
pub mod record;
pub mod recovery;
pub mod store;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use error::AuditError;
pub use export::{
    export, export_to_files, manifest_path_for, read_manifest, verify_export, verify_export_files,
    ExportFilter, ExportProgress, Format, Manifest,
};
pub use log::{AuditConfig, AuditHealth, AuditLog, Clock, DEFAULT_RETENTION};
pub use record::{Action, Digest, Ident, NewRecord, Phase, Record, Role, Timestamp};
pub use recovery::{unfinished, Unclean};
pub use store::{FaultHook, FaultPoint, PruneReport, StoreReader, StoredRecord};
pub use verify::{verify_store, Problem, VerifyReport};

/// Verifies the store in `dir` (a stopped daemon's) against the public key `vk`.
pub fn verify_store_dir(
    dir: &std::path::Path,
    vk: &ed25519_dalek::VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    verify_store(&StoreReader::open(dir)?, vk)
}

pub use ed25519_dalek::VerifyingKey;
