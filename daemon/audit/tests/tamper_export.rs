//! Tampering with an export is detected, and the first bad record is named.

mod common;

use std::path::{Path, PathBuf};

use appl_audit::{
    export_to_files, keys, manifest_path_for, verify_export_files, ExportFilter, Format, Ident,
    StoreReader, VerifyReport,
};

const FORMATS: [Format; 4] = [Format::Jsonl, Format::Csv, Format::Cef, Format::Syslog];

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    out: PathBuf,
}

async fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = common::write_log(&store, n, common::cfg()).await;
    log.close().await.unwrap();
    drop(log);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Fixture {
        _dir: dir,
        store,
        out,
    }
}

fn export(fx: &Fixture, f: Format, filter: &ExportFilter) -> PathBuf {
    let reader = StoreReader::open(&fx.store).unwrap();
    let data = fx.out.join(format!("export.{}", f.extension()));
    let mut calls = Vec::new();
    let m = export_to_files(&reader, filter, f, &data, &mut |p| calls.push(p)).unwrap();
    let last = calls.last().expect("progress is reported at least once");
    assert_eq!(last.exported, m.count);
    assert_eq!(last.scanned, m.checkpoint.size);
    data
}

fn verify(fx: &Fixture, data: &Path) -> VerifyReport {
    let vk = keys::read_public_key(&fx.store.join(keys::PUBLIC_KEY_FILE)).unwrap();
    verify_export_files(data, &manifest_path_for(data), &vk).unwrap()
}

/// 1-based line of each byte, and the seq on each line (None for a CSV header).
fn line_index(bytes: &[u8]) -> Vec<u64> {
    let mut line = 1;
    bytes
        .iter()
        .map(|b| {
            let l = line;
            if *b == b'\n' {
                line += 1;
            }
            l
        })
        .collect()
}

#[tokio::test]
async fn untouched_exports_verify() {
    let fx = fixture(23).await;
    for f in FORMATS {
        for filter in [
            ExportFilter::default(),
            ExportFilter {
                actor: Some(Ident::new("uid:1000").unwrap()),
                ..Default::default()
            },
            ExportFilter {
                action: Some("admin.*".into()),
                ..Default::default()
            },
        ] {
            let data = export(&fx, f, &filter);
            let rep = verify(&fx, &data);
            assert!(rep.ok, "{f} {filter:?}: {rep}");
            let expect = if filter == ExportFilter::default() {
                23
            } else {
                rep.records
            };
            assert_eq!(rep.records, expect);
            assert!(rep.records > 0);
            assert_eq!(rep.checkpoint_size, Some(23));
        }
    }
}

#[tokio::test]
async fn every_flipped_byte_is_caught_on_its_line() {
    let fx = fixture(3).await;
    for f in FORMATS {
        let data = export(&fx, f, &ExportFilter::default());
        let orig = std::fs::read(&data).unwrap();
        let lines = line_index(&orig);
        let vk = keys::read_public_key(&fx.store.join(keys::PUBLIC_KEY_FILE)).unwrap();
        let m = appl_audit::read_manifest(&manifest_path_for(&data)).unwrap();
        // Every byte with one mask; every fourth byte with two more (a case flip, a high bit).
        for mask in [0x01u8, 0x20, 0x80] {
            for i in (0..orig.len()).filter(|i| mask == 0x01 || i % 4 == 0) {
                let mut b = orig.clone();
                b[i] ^= mask;
                let rep = appl_audit::verify_export(&mut &b[..], &m, &vk).unwrap();
                assert!(
                    !rep.ok,
                    "{f}: flipping byte {i} with {mask:#x} went unnoticed"
                );
                let p = rep.problem.expect("a failed report names a problem");
                assert_eq!(p.line, Some(lines[i]), "{f}: byte {i} mask {mask:#x}: {p}");
            }
        }
        std::fs::write(&data, &orig).unwrap();
        assert!(verify(&fx, &data).ok);
    }
}

fn rewrite_lines(data: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(data).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    edit(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(data, out).unwrap();
}

#[tokio::test]
async fn deleted_reordered_and_truncated_records_are_named() {
    let fx = fixture(12).await;
    for f in FORMATS {
        let hdr = usize::from(f == Format::Csv);
        let data = export(&fx, f, &ExportFilter::default());
        let orig = std::fs::read(&data).unwrap();

        // Delete record 4.
        rewrite_lines(&data, |l| {
            l.remove(hdr + 4);
        });
        let p = verify(&fx, &data).problem.unwrap();
        assert_eq!(p.seq, Some(4), "{f}: {p}");
        assert!(p.reason.contains("missing"), "{f}: {p}");

        // Swap records 6 and 7.
        std::fs::write(&data, &orig).unwrap();
        rewrite_lines(&data, |l| l.swap(hdr + 6, hdr + 7));
        let p = verify(&fx, &data).problem.unwrap();
        assert_eq!(p.seq, Some(6), "{f}: {p}");
        assert!(p.reason.contains("reordered"), "{f}: {p}");

        // Drop the last two records.
        std::fs::write(&data, &orig).unwrap();
        rewrite_lines(&data, |l| l.truncate(l.len() - 2));
        let p = verify(&fx, &data).problem.unwrap();
        assert_eq!(p.seq, Some(10), "{f}: {p}");

        // Cut the file in the middle of the last line.
        std::fs::write(&data, &orig[..orig.len() - 10]).unwrap();
        let p = verify(&fx, &data).problem.unwrap();
        assert_eq!(p.line, Some(12 + hdr as u64), "{f}: {p}");

        // Drop a record from a filtered export.
        std::fs::write(&data, &orig).unwrap();
        let filter = ExportFilter {
            actor: Some(Ident::new("tenant-b").unwrap()),
            ..Default::default()
        };
        let data = export(&fx, f, &filter);
        assert!(verify(&fx, &data).ok);
        rewrite_lines(&data, |l| {
            l.remove(hdr + 1);
        });
        let p = verify(&fx, &data).problem.unwrap();
        assert_eq!(
            p.seq,
            Some(5),
            "{f}: records of tenant-b are 2, 5, 8, 11: {p}"
        );
    }
}

#[tokio::test]
async fn rewritten_record_with_its_hash_fails_the_signed_root() {
    let fx = fixture(8).await;
    let data = export(&fx, Format::Jsonl, &ExportFilter::default());
    // A careful forger changes a record and recomputes its leaf hash.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (mut r, _) = appl_audit::export::parse_line(Format::Jsonl, &lines[3]).unwrap();
    r.status = Some(0);
    r.completion_tokens = Some(1);
    let leaf = r.leaf_hash();
    lines[3] = appl_audit::export::render_line(Format::Jsonl, &r, &leaf)
        .trim_end()
        .to_owned();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let rep = verify(&fx, &data);
    assert!(!rep.ok);
    assert!(rep.problem.unwrap().reason.contains("signed root"));
}

#[tokio::test]
async fn wrong_key_and_altered_manifest_fail() {
    let fx = fixture(5).await;
    let data = export(&fx, Format::Jsonl, &ExportFilter::default());
    let other = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
    let rep = verify_export_files(&data, &manifest_path_for(&data), &other).unwrap();
    assert!(!rep.ok);
    assert!(rep.problem.unwrap().reason.contains("signed by key"));

    let filtered = export(
        &fx,
        Format::Csv,
        &ExportFilter {
            actor: Some(Ident::new("uid:1000").unwrap()),
            ..Default::default()
        },
    );
    let mp = manifest_path_for(&filtered);
    let mut m = appl_audit::read_manifest(&mp).unwrap();
    m.gaps[0].hash[0] ^= 1;
    std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
    let rep = verify(&fx, &filtered);
    assert!(!rep.ok, "{rep}");
}
