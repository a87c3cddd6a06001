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
use crate::merkle::{Frontier, Gap, Hash, RootBuilder, SubsetProver};
use crate::record::{parse_hash, Ident, Phase, Record, Timestamp, FIELDS};
use crate::store::StoreReader;
use crate::verify::VerifyReport;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1).
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

const CEF_VENDOR: &str = "CEF:0|appl|appld";
const SD_ID: &str = "appl@32473";

/// The CSV header line (without newline).
pub fn csv_header() -> String {
    let mut h = FIELDS.join(",");
    h.push_str(",leaf");
    h
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn camel(field: &str) -> String {
    let mut out = String::from("appl");
    for part in field.split('_') {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.push(f.to_ascii_uppercase());
            out.extend(c);
        }
    }
    out
}

fn cef_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

fn severity(r: &Record) -> (u8, u8) {
    // (CEF severity 0-10, syslog severity 0-7)
    if r.action == crate::record::Action::AuthDenied {
        (7, 4)
    } else if r.status.is_some_and(|s| s != 0) {
        (5, 5)
    } else {
        (3, 6)
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Admitted => "admitted",
        Phase::Completed => "completed",
        Phase::Event => "event",
    }
}

/// Renders one export line (with its trailing newline).
pub fn render_line(format: Format, r: &Record, leaf: &Hash) -> String {
    let leaf_hex = hex::encode(leaf);
    match format {
        Format::Jsonl => {
            let mut s = String::from_utf8(r.canonical_bytes()).expect("serde_json writes UTF-8");
            s.pop(); // the closing brace
            s.push_str(&format!(",\"leaf\":\"{leaf_hex}\"}}\n"));
            s
        }
        Format::Csv => {
            let mut cols: Vec<String> = r
                .flat()
                .into_iter()
                .map(|(_, v)| csv_field(v.as_deref().unwrap_or("")))
                .collect();
            cols.push(leaf_hex);
            let mut s = cols.join(",");
            s.push('\n');
            s
        }
        Format::Cef => {
            let action = r.action.name();
            let (sev, _) = severity(r);
            let mut s = format!(
                "{CEF_VENDOR}|{}|{action}|{action} {}|{sev}|rt={} suser={} act={action}",
                env!("CARGO_PKG_VERSION"),
                phase_name(r.phase),
                r.ts.unix_millis(),
                cef_escape(r.actor.as_str()),
            );
            for (k, v) in r.flat() {
                if let Some(v) = v {
                    s.push_str(&format!(" {}={}", camel(k), cef_escape(&v)));
                }
            }
            s.push_str(&format!(" applLeaf={leaf_hex}\n"));
            s
        }
        Format::Syslog => {
            let (_, sev) = severity(r);
            let pri = 10 * 8 + u32::from(sev); // facility 10: authpriv
            let mut s = format!("<{pri}>1 {} - appld - audit [{SD_ID}", r.ts);
            for (k, v) in r.flat() {
                if let Some(v) = v {
                    s.push_str(&format!(" {k}=\"{}\"", sd_escape(&v)));
                }
            }
            s.push_str(&format!(
                " leaf=\"{leaf_hex}\"] {} {}\n",
                r.action.name(),
                phase_name(r.phase)
            ));
            s
        }
    }
}

fn unescape(s: &str, set: &[char]) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') if set.contains(&'n') => out.push('\n'),
                Some('r') if set.contains(&'r') => out.push('\r'),
                Some(e) if set.contains(&e) => out.push(e),
                other => return Err(format!("bad escape \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn split_leaf(mut pairs: Vec<(String, String)>) -> Result<(Record, Hash), String> {
    let pos = pairs
        .iter()
        .position(|(k, _)| k == "leaf")
        .ok_or("no leaf hash")?;
    let (_, leaf) = pairs.remove(pos);
    let leaf = parse_hash(&leaf)?;
    let r = Record::from_flat(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    Ok((r, leaf))
}

/// Parses one line (without its newline) of an export.
pub fn parse_line(format: Format, line: &str) -> Result<(Record, Hash), String> {
    let (r, leaf) = match format {
        Format::Jsonl => {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|e| e.to_string())?;
            let leaf = match v.remove("leaf") {
                Some(serde_json::Value::String(s)) => parse_hash(&s)?,
                _ => return Err("no leaf hash".into()),
            };
            let r: Record =
                serde_json::from_value(serde_json::Value::Object(v)).map_err(|e| e.to_string())?;
            (r, leaf)
        }
        Format::Csv => {
            let mut cols = Vec::new();
            let mut cur = String::new();
            let mut chars = line.chars().peekable();
            let mut quoted = false;
            let mut at_start = true;
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (false, '"') if at_start => quoted = true,
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    (true, '"') => {
                        quoted = false;
                        if !matches!(chars.peek(), None | Some(',')) {
                            return Err("text after a closing quote".into());
                        }
                    }
                    (false, ',') => {
                        cols.push(std::mem::take(&mut cur));
                        at_start = true;
                        continue;
                    }
                    (_, c) => cur.push(c),
                }
                at_start = false;
            }
            if quoted {
                return Err("unterminated quote".into());
            }
            cols.push(cur);
            let names: Vec<&str> = FIELDS.iter().copied().chain(["leaf"]).collect();
            if cols.len() != names.len() {
                return Err(format!("{} columns, expected {}", cols.len(), names.len()));
            }
            let pairs = names
                .iter()
                .zip(cols)
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| ((*k).to_owned(), v))
                .collect();
            split_leaf(pairs)?
        }
        Format::Cef => {
            let mut parts = line.splitn(8, '|');
            let mut header = Vec::new();
            for _ in 0..7 {
                header.push(parts.next().ok_or("short CEF header")?);
            }
            let ext = parts.next().ok_or("no CEF extension")?;
            let mut pairs = Vec::new();
            for tok in ext.split(' ') {
                let (k, v) = tok.split_once('=').ok_or("extension without '='")?;
                if let Some(field) = k.strip_prefix("appl") {
                    let name = if field == "Leaf" {
                        "leaf".to_owned()
                    } else {
                        FIELDS
                            .iter()
                            .find(|f| camel(f) == k)
                            .ok_or_else(|| format!("unknown key {k}"))?
                            .to_string()
                    };
                    pairs.push((name, unescape(v, &['\\', '=', 'n', 'r'])?));
                }
            }
            split_leaf(pairs)?
        }
        Format::Syslog => {
            let open = format!("[{SD_ID} ");
            let start = line.find(&open).ok_or("no appl structured data")? + open.len();
            let mut rest = &line[start..];
            let mut pairs = Vec::new();
            loop {
                let eq = rest.find("=\"").ok_or("malformed SD-PARAM")?;
                let name = rest[..eq].to_owned();
                let body = &rest[eq + 2..];
                let mut end = None;
                let mut esc = false;
                for (i, c) in body.char_indices() {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated SD-PARAM value")?;
                pairs.push((name, unescape(&body[..end], &['\\', '"', ']'])?));
                rest = &body[end + 1..];
                if let Some(r) = rest.strip_prefix(' ') {
                    rest = r;
                } else if rest.starts_with(']') {
                    break;
                } else {
                    return Err("malformed structured data".into());
                }
            }
            split_leaf(pairs)?
        }
    };
    Ok((r, leaf))
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
    Ok(Manifest {
        manifest_version: 1,
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
    })
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

/// Verifies an export file against its manifest with only the public key `vk`.
pub fn verify_export_files(
    data: &Path,
    manifest: &Path,
    vk: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    let m = read_manifest(manifest)?;
    let f = File::open(data).map_err(|e| AuditError::io(data, e))?;
    verify_export(&mut BufReader::new(f), &m, vk)
}

/// Verifies export data against its manifest with only the public key `vk`: the checkpoint
/// signature, every line (canonical form, leaf hash, order, filter), that the lines and the
/// manifest's gap hashes cover every record of the checkpoint exactly once and hash to its
/// signed root, and finally the file's SHA-256 and count. Reports the first problem.
pub fn verify_export(
    data: &mut dyn BufRead,
    m: &Manifest,
    vk: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    let mut rep = VerifyReport::new(vk);
    if let Err(e) = m.checkpoint.verify_signature(vk) {
        return Ok(rep.fail(None, None, e));
    }
    rep.anchor(&m.checkpoint);
    let n = m.checkpoint.size;
    let mut rb = RootBuilder::new(n);
    let mut gaps = m.gaps.iter().peekable();
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut prev: Option<u64> = None;
    loop {
        buf.clear();
        let read = data
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditError::io("export data", e))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        hasher.update(&buf);
        let ln = Some(line_no);
        let Some(body) = buf.strip_suffix(b"\n") else {
            return Ok(rep.fail(None, ln, "last line is incomplete: file truncated?".into()));
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return Ok(rep.fail(None, ln, "not valid UTF-8: altered".into()));
        };
        if m.format == Format::Csv && line_no == 1 {
            if text != csv_header() {
                return Ok(rep.fail(None, ln, "CSV header altered".into()));
            }
            continue;
        }
        let (r, leaf) = match parse_line(m.format, text) {
            Ok(x) => x,
            Err(e) => return Ok(rep.fail(None, ln, format!("cannot be parsed ({e}): altered"))),
        };
        let seq = Some(r.seq);
        if render_line(m.format, &r, &leaf).as_bytes() != buf.as_slice() {
            return Ok(rep.fail(seq, ln, "line is not in canonical form: altered".into()));
        }
        if r.leaf_hash() != leaf {
            return Ok(rep.fail(
                seq,
                ln,
                "content does not match its leaf hash: altered".into(),
            ));
        }
        if let Some(p) = prev {
            if r.seq <= p {
                return Ok(rep.fail(
                    seq,
                    ln,
                    format!("out of order (follows seq {p}): records reordered or duplicated"),
                ));
            }
        }
        prev = Some(r.seq);
        if r.seq >= n {
            return Ok(rep.fail(seq, ln, format!("beyond the checkpoint (size {n})")));
        }
        if !m.filter.matches(&r) {
            return Ok(rep.fail(
                seq,
                ln,
                "does not match the export's filter: inserted?".into(),
            ));
        }
        while let Some(g) = gaps.next_if(|g| g.lo < r.seq) {
            if let Some(bad) = push_gap(&mut rb, g) {
                return Ok(rep.fail(Some(bad.0), None, bad.1));
            }
        }
        if rb.pos() != r.seq {
            return Ok(rep.fail(
                Some(rb.pos()),
                None,
                format!(
                    "missing from the export (line {line_no} is seq {}): deleted or reordered?",
                    r.seq
                ),
            ));
        }
        if let Err(e) = rb.push(r.seq, r.seq + 1, leaf) {
            return Ok(rep.fail(seq, ln, e));
        }
        rep.saw(r.seq);
    }
    for g in gaps {
        if let Some(bad) = push_gap(&mut rb, g) {
            return Ok(rep.fail(Some(bad.0), None, bad.1));
        }
    }
    if rb.pos() != n {
        return Ok(rep.fail(
            Some(rb.pos()),
            None,
            format!("missing: the export ends before the checkpoint's {n} records: truncated?"),
        ));
    }
    match rb.finish() {
        Ok(root) if root == m.checkpoint.root => {}
        Ok(_) => {
            return Ok(rep.fail(
                None,
                None,
                "the records and gap hashes do not hash to the signed root: \
                 a record and its leaf hash, or the manifest's gaps, were altered"
                    .into(),
            ))
        }
        Err(e) => return Ok(rep.fail(None, None, e)),
    }
    if rep.records != m.count {
        let why = format!(
            "{} records found, the manifest says {}",
            rep.records, m.count
        );
        return Ok(rep.fail(None, None, why));
    }
    let sha = hex::encode(hasher.finalize());
    if sha != m.data_sha256 {
        return Ok(rep.fail(
            None,
            None,
            "file SHA-256 does not match the manifest".into(),
        ));
    }
    if fingerprint(vk) != m.key_fingerprint {
        rep.notes
            .push("the manifest names another key fingerprint than the one given".into());
    }
    if m.store_base > 0 {
        rep.notes.push(format!(
            "records below {} had been pruned when exported",
            m.store_base
        ));
    }
    if m.not_covered > 0 {
        rep.notes.push(format!(
            "{} newer records were not yet covered by a checkpoint and are not in this export",
            m.not_covered
        ));
    }
    if m.filter.actor.is_some() || m.filter.action.is_some() {
        rep.notes.push(
            "the export is filtered by actor or action: the signed root proves the exported \
             records authentic, not that the filter selected all matching records"
                .into(),
        );
    }
    rep.ok = true;
    Ok(rep)
}

fn push_gap(rb: &mut RootBuilder, g: &Gap) -> Option<(u64, String)> {
    if g.lo > rb.pos() {
        return Some((rb.pos(), "missing from the export: deleted?".into()));
    }
    rb.push(g.lo, g.hi, g.hash)
        .err()
        .map(|e| (g.lo, format!("manifest gap is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, Digest, NewRecord, Role};

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
