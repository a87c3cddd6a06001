//! Tampering with the store is detected by `verify_store`, and the first bad record is named.

mod common;

use std::path::Path;

use appl_audit::store::{checkpoint_key, record_key, DB_DIR};
use appl_audit::{keys, verify_store_dir, VerifyReport};

fn vk(dir: &Path) -> appl_audit::VerifyingKey {
    keys::read_public_key(&dir.join(keys::PUBLIC_KEY_FILE)).unwrap()
}

fn verify(dir: &Path) -> VerifyReport {
    verify_store_dir(dir, &vk(dir)).unwrap()
}

/// Opens the raw sled database, as an intruder with file access would.
fn raw<T>(dir: &Path, f: impl FnOnce(&sled::Db) -> T) -> T {
    // sled drops its file lock from a background thread: retry briefly, as the library does.
    let mut tries = 0;
    let db = loop {
        match sled::open(dir.join(DB_DIR)) {
            Ok(db) => break db,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("retrying sled::open: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("sled::open: {e}"),
        }
    };
    let r = f(&db);
    db.flush().unwrap();
    r
}

async fn store(n: u64) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = common::cfg();
    cfg.checkpoint_every_records = 8;
    let log = common::write_log(d.path(), n, cfg).await;
    log.close().await.unwrap();
    drop(log);
    d
}

#[tokio::test]
async fn untouched_store_verifies() {
    let d = store(20).await;
    let rep = verify(d.path());
    assert!(rep.ok, "{rep}");
    assert_eq!(rep.records, 20);
    assert_eq!(rep.checkpoint_size, Some(20));
}

#[tokio::test]
async fn every_flipped_byte_of_a_record_names_it() {
    let d = store(12).await;
    let orig = raw(d.path(), |db| {
        db.get(record_key(5)).unwrap().unwrap().to_vec()
    });
    for i in 0..orig.len() {
        let mut b = orig.clone();
        b[i] ^= 0x01;
        raw(d.path(), |db| db.insert(record_key(5), b).unwrap());
        let rep = verify(d.path());
        let p = rep
            .problem
            .unwrap_or_else(|| panic!("byte {i} flip unnoticed"));
        assert_eq!(p.seq, Some(5), "byte {i}: {p}");
    }
    raw(d.path(), |db| db.insert(record_key(5), orig).unwrap());
    assert!(verify(d.path()).ok);
}

#[tokio::test]
async fn deleted_record_is_named() {
    let d = store(12).await;
    raw(d.path(), |db| db.remove(record_key(7)).unwrap());
    let p = verify(d.path()).problem.unwrap();
    assert_eq!(p.seq, Some(7), "{p}");
    assert!(p.reason.contains("missing"), "{p}");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let d = store(12).await;
    raw(d.path(), |db| {
        let a = db.get(record_key(3)).unwrap().unwrap();
        let b = db.get(record_key(4)).unwrap().unwrap();
        db.insert(record_key(3), b).unwrap();
        db.insert(record_key(4), a).unwrap();
    });
    let p = verify(d.path()).problem.unwrap();
    assert_eq!(p.seq, Some(3), "{p}");
    assert!(p.reason.contains("reordered"), "{p}");
}

#[tokio::test]
async fn truncated_tail_is_named() {
    let d = store(20).await;
    raw(d.path(), |db| {
        for s in 17..20 {
            db.remove(record_key(s)).unwrap();
        }
    });
    let p = verify(d.path()).problem.unwrap();
    assert_eq!(p.seq, Some(17), "{p}");
    assert!(p.reason.contains("truncated"), "{p}");
}

#[tokio::test]
async fn truncated_tail_with_its_checkpoints_is_caught_by_the_checkpoint_file() {
    let d = store(20).await;
    // The intruder removes the tail records and the checkpoint that covers them, and rewrites
    // the metadata so that the store is consistent at 16 records.
    raw(d.path(), |db| {
        let mut f = appl_audit::merkle::Frontier::new();
        let mut last_ts = String::new();
        for s in 0..16 {
            let v = db.get(record_key(s)).unwrap().unwrap();
            f.push(v[..32].try_into().unwrap());
            let r = appl_audit::Record::from_canonical(&v[32..]).unwrap();
            last_ts = r.ts.to_string();
        }
        let meta = serde_json::json!({
            "size": 16,
            "nodes": f.nodes().iter().map(hex::encode).collect::<Vec<_>>(),
            "last_ts": last_ts,
        });
        for s in 16..20 {
            db.remove(record_key(s)).unwrap();
        }
        db.remove(checkpoint_key(20)).unwrap();
        db.insert(b"m/frontier", serde_json::to_vec(&meta).unwrap())
            .unwrap();
    });
    let p = verify(d.path()).problem.unwrap();
    assert_eq!(p.seq, Some(16), "{p}");
    assert!(p.reason.contains("checkpoint file"), "{p}");
    // Without the file, the shortened store would pass: the file is what catches it.
    std::fs::remove_file(d.path().join(appl_audit::store::LATEST_CHECKPOINT_FILE)).unwrap();
    assert!(verify(d.path()).ok);
}
