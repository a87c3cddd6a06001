//! Verification reports, and verification of a store.

use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::error::AuditError;
use crate::keys::fingerprint;
use crate::merkle::Frontier;
use crate::record::Timestamp;
use crate::store::StoreReader;

/// The first thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The record concerned, if one can be named.
    pub seq: Option<u64>,
    /// The line of an export file (1-based), if verifying an export.
    pub line: Option<u64>,
    /// Why it is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.seq {
            write!(f, "record seq {s}")?;
            if let Some(l) = self.line {
                write!(f, " (line {l})")?;
            }
            write!(f, ": ")?;
        } else if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True if nothing is wrong.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers seen.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Size of the newest signed checkpoint that was checked.
    pub checkpoint_size: Option<u64>,
    /// Its root, hex.
    pub checkpoint_root: Option<String>,
    /// Its time.
    pub checkpoint_time: Option<Timestamp>,
    /// Fingerprint of the key checked against.
    pub key: String,
    /// The first problem found, if any.
    pub problem: Option<Problem>,
    /// Remarks that are not failures (records not yet covered by a checkpoint...).
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub(crate) fn new(vk: &VerifyingKey) -> Self {
        VerifyReport {
            ok: false,
            records: 0,
            first_seq: None,
            last_seq: None,
            checkpoint_size: None,
            checkpoint_root: None,
            checkpoint_time: None,
            key: fingerprint(vk),
            problem: None,
            notes: Vec::new(),
        }
    }

    pub(crate) fn fail(mut self, seq: Option<u64>, line: Option<u64>, reason: String) -> Self {
        self.ok = false;
        self.problem = Some(Problem { seq, line, reason });
        self
    }

    pub(crate) fn saw(&mut self, seq: u64) {
        self.records += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
    }

    pub(crate) fn anchor(&mut self, cp: &Checkpoint) {
        self.checkpoint_size = Some(cp.size);
        self.checkpoint_root = Some(hex::encode(cp.root));
        self.checkpoint_time = Some(cp.time);
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "OK: {} records", self.records)?,
            Some(p) => write!(f, "FAILED: {p}")?,
        }
        if let (true, Some(a), Some(b)) = (self.ok, self.first_seq, self.last_seq) {
            write!(f, " (seq {a}..={b})")?;
        }
        if let (Some(s), Some(r)) = (self.checkpoint_size, &self.checkpoint_root) {
            write!(f, "; checkpoint size {s} root {r}")?;
            if let Some(t) = self.checkpoint_time {
                write!(f, " at {t}")?;
            }
        }
        write!(f, "; key {}", self.key)?;
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

/// Verifies a whole store against `vk`: every checkpoint's signature, every record's content,
/// order and hash, the Merkle root at every checkpoint, and that no checkpointed record is
/// missing. Stops at the first problem.
pub fn verify_store(reader: &StoreReader, vk: &VerifyingKey) -> Result<VerifyReport, AuditError> {
    let mut rep = VerifyReport::new(vk);
    let cps = reader.checkpoints()?;
    for cp in &cps {
        if let Err(e) = cp.verify_signature(vk) {
            return Ok(rep.fail(None, None, e));
        }
    }
    let base = match crate::store::read_base(reader.db()) {
        Ok(b) => b,
        Err(AuditError::Corrupt(why)) => return Ok(rep.fail(None, None, why)),
        Err(e) => return Err(e),
    };
    let meta = match crate::store::read_frontier(reader.db()) {
        Ok((f, _)) => f,
        Err(AuditError::Corrupt(why)) => return Ok(rep.fail(None, None, why)),
        Err(e) => return Err(e),
    };
    let mut frontier = if base == 0 {
        Frontier::new()
    } else {
        let Some(cp) = cps.iter().find(|c| c.size == base) else {
            return Ok(rep.fail(
                Some(base),
                None,
                format!("records below {base} were pruned but the checkpoint at {base} is missing"),
            ));
        };
        match cp.frontier() {
            Ok(f) => f,
            Err(e) => return Ok(rep.fail(None, None, e)),
        }
    };
    let mut next_cp = cps.iter().filter(|c| c.size > base).peekable();
    let mut last_ts: Option<Timestamp> = None;
    for item in reader.raw_from(base) {
        let (kseq, decoded) = item?;
        let expected = frontier.size();
        if kseq != expected {
            return Ok(rep.fail(
                Some(expected),
                None,
                format!("missing (the next stored record is seq {kseq}): deleted?"),
            ));
        }
        let sr = match decoded {
            Ok(sr) => sr,
            Err(e) => return Ok(rep.fail(Some(kseq), None, format!("unreadable: {e}"))),
        };
        if sr.record.seq != kseq {
            return Ok(rep.fail(
                Some(kseq),
                None,
                format!(
                    "slot {kseq} holds record seq {}: records reordered or moved",
                    sr.record.seq
                ),
            ));
        }
        if sr.record.leaf_hash() != sr.leaf {
            return Ok(rep.fail(
                Some(kseq),
                None,
                "content does not match its stored hash: record altered".into(),
            ));
        }
        if let Some(t) = last_ts {
            if sr.record.ts < t {
                return Ok(rep.fail(
                    Some(kseq),
                    None,
                    format!(
                        "timestamp {} is earlier than the previous record's {t}",
                        sr.record.ts
                    ),
                ));
            }
        }
        last_ts = Some(sr.record.ts);
        frontier.push(sr.leaf);
        rep.saw(kseq);
        if let Some(cp) = next_cp.peek() {
            if cp.size == frontier.size() {
                if cp.root != frontier.root() {
                    return Ok(rep.fail(
                        None,
                        None,
                        format!(
                            "records below {} do not match the signed checkpoint at that size: \
                             a record and its stored hash were both altered",
                            cp.size
                        ),
                    ));
                }
                rep.anchor(cp);
                next_cp.next();
            }
        }
    }
    if let Some(cp) = next_cp.next() {
        return Ok(rep.fail(
            Some(frontier.size()),
            None,
            format!(
                "missing: a signed checkpoint covers {} records but the store ends at seq {}: \
                 tail truncated?",
                cp.size,
                frontier.size()
            ),
        ));
    }
    if meta.size() != frontier.size() || meta.root() != frontier.root() {
        return Ok(rep.fail(
            Some(frontier.size().min(meta.size())),
            None,
            if meta.size() > frontier.size() {
                format!(
                    "missing: the store's metadata records {} entries, only {} were found: \
                     tail truncated?",
                    meta.size(),
                    frontier.size()
                )
            } else {
                format!(
                    "the store's metadata ({} entries) disagrees with its records ({})",
                    meta.size(),
                    frontier.size()
                )
            },
        ));
    }
    if let Some(ext) = reader.latest_checkpoint_file()? {
        if let Err(e) = ext.verify_signature(vk) {
            return Ok(rep.fail(None, None, format!("checkpoint file: {e}")));
        }
        match cps.iter().find(|c| c.size == ext.size) {
            Some(c) if c.root == ext.root => {}
            Some(_) => {
                return Ok(rep.fail(
                    None,
                    None,
                    format!(
                        "checkpoint file disagrees with the store at size {}",
                        ext.size
                    ),
                ))
            }
            None if ext.size > frontier.size() => {
                return Ok(rep.fail(
                    Some(frontier.size()),
                    None,
                    format!(
                        "missing: the checkpoint file covers {} records, the store has {}",
                        ext.size,
                        frontier.size()
                    ),
                ))
            }
            None => {
                return Ok(rep.fail(
                    None,
                    None,
                    format!(
                        "the checkpoint at size {} was removed from the store",
                        ext.size
                    ),
                ))
            }
        }
    }
    let covered = rep.checkpoint_size.unwrap_or(base);
    if frontier.size() > covered {
        rep.notes.push(format!(
            "records {covered}..{} are not yet covered by a signed checkpoint",
            frontier.size()
        ));
    }
    if base > 0 {
        rep.notes.push(format!(
            "records below {base} were pruned under the retention policy"
        ));
    }
    rep.ok = true;
    Ok(rep)
}
