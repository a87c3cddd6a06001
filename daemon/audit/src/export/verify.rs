//! Offline verification of an export: every line parses to a record this crate would render
//! the same, and with the manifest's gap hashes the records rebuild the signed root.

use super::*;

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
    if let Err(e) = m.verify_signature(vk) {
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
    if m.filter != ExportFilter::default() {
        rep.notes.push(format!(
            "filtered export ({}): the appliance's signature on the manifest attests that these \
             {} records are every record the filter selects among the checkpoint's {}",
            serde_json::to_string(&m.filter).unwrap_or_default(),
            m.count,
            m.checkpoint.size
        ));
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
