//! Exports (jsonl, csv, cef, syslog) with a manifest, and their offline verification.
//!
//! Every exported line carries the whole record and its Merkle leaf hash. The manifest carries
//! the signed checkpoint the export is anchored to, and the hashes of the subtrees that hold the
//! records left out (by the filter or by pruning), so that a verifier with only the public key
//! can recompute the signed root from the exported lines. Each line must also be exactly what
//! this crate would render for the record it parses to, so every changed byte is caught and
//! attributed to its line.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::checkpoint::Checkpoint;
use crate::error::AuditError;
use crate::keys::fingerprint;
use crate::merkle::{Frontier, Gap, RootBuilder, SubsetProver};
use crate::record::{Ident, Record, Timestamp};
use crate::store::StoreReader;
use crate::verify::VerifyReport;

mod lines;
mod verify;

pub use lines::{csv_header, parse_line, render_line};
pub use verify::{verify_export, verify_export_files};

/// An export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line: the record's fields plus `leaf`.
    Jsonl,
    /// RFC 4180 CSV with a header row; columns are the record fields plus `leaf`.
    Csv,
    /// ArcSight Common Event Format, one event per line.
    Cef,
    /// RFC 5424 syslog messages (facility authpriv), the record in structured data.
    Syslog,
}

impl Format {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Cef => "cef",
            Format::Syslog => "log",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Cef => "cef",
            Format::Syslog => "syslog",
        })
    }
}

impl FromStr for Format {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "cef" => Ok(Format::Cef),
            "syslog" => Ok(Format::Syslog),
            _ => Err(AuditError::Export(format!(
                "unknown format {s:?} (jsonl, csv, cef, syslog)"
            ))),
        }
    }
}

/// Which records to export. All conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilter {
    /// Records at or after this instant.
    pub from: Option<Timestamp>,
    /// Records strictly before this instant.
    pub to: Option<Timestamp>,
    /// Only this actor.
    pub actor: Option<Ident>,
    /// Only this action (`inference.generate`), or a family (`admin.*`, `inference.*`).
    pub action: Option<String>,
}

impl ExportFilter {
    /// Validates the action pattern.
    pub fn validate(&self) -> Result<(), AuditError> {
        if let Some(a) = &self.action {
            let ok = match a.strip_suffix(".*") {
                Some(fam) => !fam.is_empty() && fam.chars().all(|c| c.is_ascii_lowercase()),
                None => a.parse::<crate::record::Action>().is_ok(),
            };
            if !ok {
                return Err(AuditError::InvalidField {
                    field: "action",
                    why: format!("{a:?} is neither an action nor a family like admin.*"),
                });
            }
        }
        Ok(())
    }

    /// True if `r` is selected.
    pub fn matches(&self, r: &Record) -> bool {
        if self.from.is_some_and(|f| r.ts < f) || self.to.is_some_and(|t| r.ts >= t) {
            return false;
        }
        if self.actor.as_ref().is_some_and(|a| *a != r.actor) {
            return false;
        }
        if let Some(p) = &self.action {
            let name = r.action.name();
            let hit = match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *p,
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Describes an export file; written beside it as `<file>.manifest.json`.
///
/// The appliance signs the whole manifest ([`Manifest::signature`]): its filter, record count,
/// first and last sequence numbers, the data file's SHA-256 and the gap hashes. So a filtered
/// export proves, under the appliance's key, that it holds every record the filter selects up
/// to its checkpoint, not only that the records it holds are genuine: a record moved from the
/// data into a gap changes the count and the gaps, and breaks the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (2: signed).
    pub manifest_version: u32,
    /// Data format.
    pub format: Format,
    /// When the export was made.
    pub created: Timestamp,
    /// The filter that selected the records.
    pub filter: ExportFilter,
    /// Records in the file.
    pub count: u64,
    /// First exported sequence number.
    pub first_seq: Option<u64>,
    /// Last exported sequence number.
    pub last_seq: Option<u64>,
    /// First record still in the store (older ones were pruned).
    pub store_base: u64,
    /// SHA-256 of the data file, hex.
    pub data_sha256: String,
    /// The signed checkpoint the export is anchored to; its size is the tree size.
    pub checkpoint: Checkpoint,
    /// The signing public key, hex (informational: verify with a copy you trust).
    pub public_key: String,
    /// Its fingerprint.
    pub key_fingerprint: String,
    /// Subtree hashes standing in for the records not in the file.
    pub gaps: Vec<Gap>,
    /// Records newer than the checkpoint, which this export could not include.
    pub not_covered: u64,
    /// Ed25519 signature (hex) by the audit signing key over [`Manifest::signed_message`].
    #[serde(default)]
    pub signature: String,
}

/// The current manifest version.
pub const MANIFEST_VERSION: u32 = 2;

impl Manifest {
    /// The bytes that are signed: a fixed prefix, then the manifest as compact JSON with an
    /// empty `signature`.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.signature.clear();
        let mut out = b"appl-audit export manifest v2\n".to_vec();
        // A struct of strings, numbers and vectors: serialization cannot fail.
        out.extend(serde_json::to_vec(&m).expect("manifest serialization is infallible"));
        out
    }

    fn sign(&mut self, key: &ed25519_dalek::SigningKey) {
        use ed25519_dalek::Signer;
        self.signature = hex::encode(key.sign(&self.signed_message()).to_bytes());
    }

    /// Checks the manifest's signature under `vk`.
    pub fn verify_signature(&self, vk: &VerifyingKey) -> Result<(), String> {
        use ed25519_dalek::Verifier;
        if self.manifest_version < MANIFEST_VERSION || self.signature.is_empty() {
            return Err("the manifest is not signed; export again with this version".into());
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or("the manifest's signature is malformed")?;
        vk.verify(
            &self.signed_message(),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| {
            "the manifest's signature does not verify: its filter, count, gaps or data hash \
                 were altered, or another key signed it"
                .to_owned()
        })
    }
}

/// Progress of a running export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportProgress {
    /// Records scanned.
    pub scanned: u64,
    /// Records to scan in all.
    pub total: u64,
    /// Records written so far.
    pub exported: u64,
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Exports the records selected by `filter` that are covered by the store's newest signed
/// checkpoint, writing the data to `out` and returning the manifest. A live daemon should call
/// [`crate::AuditLog::checkpoint_now`] first so that the export reaches the present.
pub fn export(
    reader: &StoreReader,
    filter: &ExportFilter,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<Manifest, AuditError> {
    filter.validate()?;
    let state = reader.state()?;
    let cp = state.last_cp.clone().ok_or_else(|| {
        AuditError::Export("the log has no signed checkpoint yet; nothing can be exported".into())
    })?;
    let vk = reader.public_key()?;
    cp.verify_signature(&vk).map_err(AuditError::Corrupt)?;
    let base_frontier = if state.base == 0 {
        Frontier::new()
    } else {
        reader
            .checkpoints()?
            .into_iter()
            .find(|c| c.size == state.base)
            .ok_or_else(|| AuditError::Corrupt(format!("no checkpoint at base {}", state.base)))?
            .frontier()
            .map_err(AuditError::Corrupt)?
    };
    let mut w = HashingWriter {
        inner: BufWriter::new(out),
        hasher: Sha256::new(),
    };
    let io = |e| AuditError::io("export output", e);
    if format == Format::Csv {
        writeln!(w, "{}", csv_header()).map_err(io)?;
    }
    let mut prover = SubsetProver::starting_at(&base_frontier);
    let total = cp.size.saturating_sub(state.base);
    let mut p = ExportProgress {
        scanned: 0,
        total,
        exported: 0,
    };
    let (mut first, mut last) = (None, None);
    for item in reader.raw_from(state.base) {
        let (seq, decoded) = item?;
        if seq >= cp.size {
            break;
        }
        if seq != prover.size() {
            return Err(AuditError::Corrupt(format!(
                "record seq {} is missing; run verify",
                prover.size()
            )));
        }
        let sr = decoded.map_err(|e| AuditError::Corrupt(format!("seq {seq}: {e}; run verify")))?;
        if sr.record.leaf_hash() != sr.leaf || sr.record.seq != seq {
            return Err(AuditError::Corrupt(format!(
                "record seq {seq} fails its hash check; run verify"
            )));
        }
        let selected = filter.matches(&sr.record);
        prover.push(sr.leaf, selected);
        if selected {
            w.write_all(render_line(format, &sr.record, &sr.leaf).as_bytes())
                .map_err(io)?;
            first.get_or_insert(seq);
            last = Some(seq);
            p.exported += 1;
        }
        p.scanned += 1;
        if p.scanned % 4096 == 0 {
            progress(p);
        }
    }
    progress(p);
    if prover.size() != cp.size {
        return Err(AuditError::Corrupt(format!(
            "the checkpoint covers {} records, the store holds {}; run verify",
            cp.size,
            prover.size()
        )));
    }
    let (root, gaps) = prover.finish();
    if root != cp.root {
        return Err(AuditError::Corrupt(
            "the records do not match the signed checkpoint; run verify".into(),
        ));
    }
    w.flush().map_err(io)?;
    let data_sha256 = hex::encode(w.hasher.finalize());
    let key = crate::keys::load_signing_key(reader.dir())?;
    if key.verifying_key() != vk {
        return Err(AuditError::Key(
            "the signing key beside the store is not the store's key".into(),
        ));
    }
    let mut m = Manifest {
        manifest_version: MANIFEST_VERSION,
        format,
        created: Timestamp::from_system(std::time::SystemTime::now()),
        filter: filter.clone(),
        count: p.exported,
        first_seq: first,
        last_seq: last,
        store_base: state.base,
        data_sha256,
        not_covered: state.frontier.size() - cp.size,
        checkpoint: cp,
        public_key: hex::encode(vk.as_bytes()),
        key_fingerprint: fingerprint(&vk),
        gaps,
        signature: String::new(),
    };
    m.sign(&key);
    Ok(m)
}

/// `<data>.manifest.json`.
pub fn manifest_path_for(data: &Path) -> PathBuf {
    let mut s = data.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// [`export`] to `data` and its manifest beside it (both fsynced).
pub fn export_to_files(
    reader: &StoreReader,
    filter: &ExportFilter,
    format: Format,
    data: &Path,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<Manifest, AuditError> {
    let mut f = File::create(data).map_err(|e| AuditError::io(data, e))?;
    let m = export(reader, filter, format, &mut f, progress)?;
    f.sync_all().map_err(|e| AuditError::io(data, e))?;
    let mp = manifest_path_for(data);
    let json = serde_json::to_vec_pretty(&m).map_err(|e| AuditError::Export(e.to_string()))?;
    std::fs::write(&mp, json)
        .and_then(|()| File::open(&mp)?.sync_all())
        .map_err(|e| AuditError::io(&mp, e))?;
    Ok(m)
}

/// Reads a manifest file.
pub fn read_manifest(path: &Path) -> Result<Manifest, AuditError> {
    let b = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
    serde_json::from_slice(&b).map_err(|e| AuditError::Export(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, Digest, NewRecord, Phase, Role};

    fn rec(seq: u64) -> Record {
        let mut n = NewRecord::new(
            Action::InferenceChat,
            Phase::Completed,
            Ident::new("CN=a,O=b\\c").unwrap_or_else(|_| Ident::new("CN=a,O=b").unwrap()),
            Role::Inference,
        );
        n.peer = Some(Ident::new("[::1]:443").unwrap());
        n.status = Some(8);
        n.prompt_hmac = Some(Digest([0xab; 32]));
        n.latency_us = Some(1234);
        Record::from_new(
            n,
            seq,
            Timestamp {
                unix_micros: 1_700_000_000_000_001,
            },
        )
    }

    #[test]
    fn every_format_round_trips() {
        let r = rec(5);
        let leaf = r.leaf_hash();
        for f in [Format::Jsonl, Format::Csv, Format::Cef, Format::Syslog] {
            let line = render_line(f, &r, &leaf);
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{f}: {line}"
            );
            let (back, l) = parse_line(f, line.trim_end_matches('\n')).unwrap();
            assert_eq!((back, l), (r.clone(), leaf), "{f}");
        }
    }

    #[test]
    fn syslog_line_shape() {
        let r = rec(5);
        let line = render_line(Format::Syslog, &r, &r.leaf_hash());
        assert!(
            line.starts_with(
                "<85>1 2023-11-14T22:13:20.000001Z - appld - audit [appl@32473 v=\"1\" seq=\"5\""
            ),
            "{line}"
        );
        assert!(line.contains("peer=\"[::1\\]:443\""), "{line}");
        assert!(line.ends_with("] inference.chat completed\n"));
        let cef = render_line(Format::Cef, &r, &r.leaf_hash());
        assert!(cef.starts_with("CEF:0|appl|appld|"), "{cef}");
        assert!(
            cef.contains(
                "|inference.chat|inference.chat completed|5|rt=1700000000000 suser=CN\\=a,O\\=b "
            ),
            "{cef}"
        );
    }

    #[test]
    fn filters() {
        let r = rec(1);
        let mut f = ExportFilter::default();
        assert!(f.matches(&r));
        f.action = Some("inference.*".into());
        assert!(f.matches(&r));
        f.action = Some("admin.*".into());
        assert!(!f.matches(&r));
        f.action = None;
        f.to = Some(r.ts);
        assert!(!f.matches(&r));
        f.to = None;
        f.from = Some(r.ts);
        assert!(f.matches(&r));
        assert!(ExportFilter {
            action: Some("bogus".into()),
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
