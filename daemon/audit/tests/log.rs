//! The log's behaviour: group commit, durability before acknowledgement, chaining across
//! reopen, fail-closed with recovery, retention, tail, no PHI.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use appl_audit::{
    keys, verify_store, AuditConfig, AuditError, AuditHealth, AuditLog, FaultPoint, Ident,
    NewRecord, Phase, Role,
};

fn counting_hook(flushes: Arc<AtomicU64>) -> appl_audit::FaultHook {
    Arc::new(move |p| {
        if p == FaultPoint::Flush {
            flushes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_flushes_and_get_every_seq_once() {
    let d = tempfile::tempdir().unwrap();
    let flushes = Arc::new(AtomicU64::new(0));
    let mut cfg = common::cfg();
    cfg.fault_hook = Some(counting_hook(flushes.clone()));
    let log = AuditLog::open(d.path(), cfg).unwrap();
    let before = flushes.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40 {
                seqs.push(log.append(common::record(w * 1000 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.unwrap() {
            assert!(all.insert(s), "seq {s} handed out twice");
        }
    }
    assert_eq!(all.len(), 64 * 40);
    assert_eq!(
        all.iter().copied().collect::<Vec<_>>(),
        (0..64 * 40).collect::<Vec<_>>()
    );
    let used = flushes.load(Ordering::SeqCst) - before;
    assert!(
        used < 64 * 40 / 4,
        "{used} flushes for 2560 appends: no group commit"
    );
    log.close().await.unwrap();
    let rep = verify_store(&log_reader(d.path()), &log.public_key()).unwrap();
    assert!(rep.ok, "{rep}");
    assert_eq!(rep.records, 2560);
}

fn log_reader(dir: &std::path::Path) -> appl_audit::StoreReader {
    appl_audit::StoreReader::open(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_resolves_only_after_the_flush() {
    let d = tempfile::tempdir().unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    let g = gate.clone();
    let mut cfg = common::cfg();
    cfg.fault_hook = Some(Arc::new(move |p| {
        if p == FaultPoint::Flush {
            while g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }));
    let log = AuditLog::open(d.path(), cfg).unwrap();
    gate.store(true, Ordering::SeqCst);
    let l2 = log.clone();
    let h = tokio::spawn(async move { l2.append(common::record(0)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !h.is_finished(),
        "append resolved while its flush was still blocked"
    );
    gate.store(false, Ordering::SeqCst);
    assert_eq!(h.await.unwrap().unwrap(), 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn chain_continues_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let log = common::write_log(d.path(), 10, common::cfg()).await;
    let cp1 = log.close().await.unwrap().unwrap();
    drop(log);
    assert_eq!(cp1.size, 10);
    let log = AuditLog::open(d.path(), common::cfg()).unwrap();
    for i in 10..25 {
        assert_eq!(log.append(common::record(i)).await.unwrap(), i);
    }
    let cp2 = log.close().await.unwrap().unwrap();
    assert_eq!(cp2.size, 25);
    // The second root is the RFC 9162 root over all 25 records, old and new.
    let reader = log_reader(d.path());
    let mut f = appl_audit::merkle::Frontier::new();
    for r in reader.tail(100).unwrap() {
        assert_eq!(r.record.leaf_hash(), r.leaf);
        f.push(r.leaf);
    }
    assert_eq!(f.root(), cp2.root);
    let rep = verify_store(&reader, &reader.public_key().unwrap()).unwrap();
    assert!(rep.ok, "{rep}");
    assert_eq!(
        reader
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.size)
            .collect::<Vec<_>>(),
        vec![10, 25]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_and_recovers_without_losing_acknowledged_records() {
    for point in [FaultPoint::Write, FaultPoint::Flush] {
        let d = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let b = broken.clone();
        let mut cfg = common::cfg();
        cfg.fault_hook = Some(Arc::new(move |p| {
            if b.load(Ordering::SeqCst) && (p == point || p == FaultPoint::Open) {
                Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
            } else {
                Ok(())
            }
        }));
        let log = AuditLog::open(d.path(), cfg).unwrap();
        let mut health = log.health();
        let mut acked = Vec::new();
        for i in 0..5 {
            acked.push(log.append(common::record(i)).await.unwrap());
        }
        broken.store(true, Ordering::SeqCst);
        let e = log.append(common::record(5)).await.unwrap_err();
        assert!(matches!(e, AuditError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
        health.wait_for(|h| !h.is_serving()).await.unwrap();
        match &*health.borrow() {
            AuditHealth::Failed { reason, .. } => assert!(reason.contains("No space left")),
            other => panic!("{other:?}"),
        }
        // Stays closed while the fault lasts, and says so at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(
            log.append(common::record(6)).await,
            Err(AuditError::Unavailable(_))
        ));
        assert!(!log.health().borrow().is_serving());
        broken.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| h.is_serving()))
            .await
            .expect("recovers by itself")
            .unwrap();
        for i in 7..10 {
            acked.push(log.append(common::record(i)).await.unwrap());
        }
        let tail = log.tail(100).unwrap();
        let present: BTreeSet<u64> = tail.iter().map(|r| r.record.seq).collect();
        for s in &acked {
            assert!(present.contains(s), "{point:?}: acknowledged seq {s} lost");
        }
        log.close().await.unwrap();
        let reader = log_reader(d.path());
        let rep = verify_store(&reader, &reader.public_key().unwrap()).unwrap();
        assert!(rep.ok, "{point:?}: {rep}");
    }
}

#[tokio::test]
async fn retention_never_prunes_records_without_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let now = Arc::new(Mutex::new(SystemTime::now()));
    let n2 = now.clone();
    let mut cfg = common::cfg();
    cfg.checkpoint_every_records = 1_000_000;
    cfg.checkpoint_every = Duration::from_secs(3600);
    cfg.clock = Arc::new(move || *n2.lock().unwrap());
    let log = AuditLog::open(d.path(), cfg.clone()).unwrap();
    for i in 0..4 {
        log.append(common::record(i)).await.unwrap();
    }
    assert_eq!(log.checkpoint_now().await.unwrap().unwrap().size, 4);
    for i in 4..10 {
        log.append(common::record(i)).await.unwrap();
    }
    // Seven years later, all ten are past retention, but only 0..4 are checkpointed.
    *now.lock().unwrap() += Duration::from_secs(7 * 366 * 86400);
    let rep = log.prune_now().await.unwrap();
    assert_eq!((rep.removed, rep.base), (4, 4));
    let tail = log.tail(100).unwrap();
    assert_eq!(tail.first().unwrap().record.seq, 4);
    assert_eq!(tail.len(), 6);
    // Nothing more goes until a checkpoint covers it; then the covered old records go.
    assert_eq!(log.prune_now().await.unwrap().removed, 0);
    log.checkpoint_now().await.unwrap();
    log.append(common::record(10)).await.unwrap(); // young, stays
    let rep = log.prune_now().await.unwrap();
    assert_eq!((rep.removed, rep.base), (6, 10));
    assert_eq!(log.tail(100).unwrap().len(), 1);
    log.close().await.unwrap();
    drop(log);

    // The pruned store still verifies, from the checkpoint at the prune point, and so does an
    // export of it.
    let reader = log_reader(d.path());
    let vk = reader.public_key().unwrap();
    let rep = verify_store(&reader, &vk).unwrap();
    assert!(rep.ok, "{rep}");
    assert_eq!(rep.first_seq, Some(10));
    let mut out = Vec::new();
    let m = appl_audit::export(
        &reader,
        &Default::default(),
        appl_audit::Format::Jsonl,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((m.count, m.store_base, m.checkpoint.size), (1, 10, 11));
    let rep = appl_audit::verify_export(&mut &out[..], &m, &vk).unwrap();
    assert!(rep.ok, "{rep}");
}

#[tokio::test]
async fn records_cannot_carry_prompt_text() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), common::cfg()).unwrap();
    let marker = "PHI-MARKER-7f3a9c patient John Doe has condition";
    // No record field accepts text: the identifier type refuses it.
    assert!(Ident::new(marker).is_err());
    assert!(Ident::new("PHI-MARKER-7f3a9c\n").is_err());
    // What the daemon may store about a prompt is its keyed digest.
    let mut n = common::record(1);
    n.prompt_hmac = Some(log.prompt_hmac(marker.as_bytes()));
    let seq = log.append(n).await.unwrap();
    assert_ne!(
        log.prompt_digest(marker.as_bytes()),
        sha256(marker.as_bytes())
    );
    // Every string value in a full record is an identifier, a hex digest, an enum or a time.
    let rec = &log.tail(1).unwrap()[0].record;
    assert_eq!(rec.seq, seq);
    let v = serde_json::to_value(rec).unwrap();
    for (k, val) in v.as_object().unwrap() {
        if let Some(s) = val.as_str() {
            assert!(!s.contains(' '), "field {k} holds text: {s:?}");
        }
    }
    log.close().await.unwrap();
    drop(log);
    // And the marker appears nowhere under the store directory.
    for e in walk(d.path()) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(17).any(|w| w == b"PHI-MARKER-7f3a9c"),
            "{} contains the marker",
            e.display()
        );
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn closed_log_refuses_and_keys_are_private() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), AuditConfig::default()).unwrap();
    let n = NewRecord::new(
        appl_audit::Action::DaemonStart,
        Phase::Event,
        Ident::new("system").unwrap(),
        Role::System,
    );
    assert_eq!(log.append(n.clone()).await.unwrap(), 0);
    let cp = log.close().await.unwrap().unwrap();
    assert_eq!(cp.size, 1);
    assert!(matches!(log.append(n).await, Err(AuditError::Closed)));
    assert_eq!(*log.health().borrow(), AuditHealth::Closed);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join(keys::SIGNING_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A filtered export proves completeness under the appliance's key: dropping a selected record
/// and folding it into the manifest's gaps (with the count, last seq and data hash fixed up to
/// match) still rebuilds the signed root, but breaks the manifest's signature.
#[tokio::test]
async fn a_filtered_export_cannot_hide_a_selected_record() {
    use appl_audit::merkle::Gap;
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), common::cfg()).unwrap();
    for i in 0..12 {
        log.append(common::record(i)).await.unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let reader = log_reader(d.path());
    let vk = reader.public_key().unwrap();
    let filter = appl_audit::ExportFilter {
        actor: Some(Ident::new("uid:1000").unwrap()),
        ..Default::default()
    };
    let mut out = Vec::new();
    let m = appl_audit::export(
        &reader,
        &filter,
        appl_audit::Format::Jsonl,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.manifest_version, 2);
    let rep = appl_audit::verify_export(&mut &out[..], &m, &vk).unwrap();
    assert!(rep.ok, "{rep}");
    assert!(
        rep.notes
            .iter()
            .any(|n| n.contains("every record the filter selects")),
        "{rep}"
    );

    // Drop the last selected record; stand its leaf in as a gap of one.
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    let seq = last["seq"].as_u64().unwrap();
    let leaf: [u8; 32] = hex::decode(last["leaf"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let kept: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut forged = m.clone();
    forged.count -= 1;
    forged.last_seq = lines[lines.len() - 2]
        .split("\"seq\":")
        .nth(1)
        .and_then(|s| s.split(',').next().and_then(|n| n.parse().ok()));
    forged.data_sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(kept.as_bytes()))
    };
    let mut gaps = forged.gaps.clone();
    gaps.push(Gap {
        lo: seq,
        hi: seq + 1,
        hash: leaf,
    });
    gaps.sort_by_key(|g| g.lo);
    forged.gaps = gaps;
    let rep = appl_audit::verify_export(&mut kept.as_bytes(), &forged, &vk).unwrap();
    assert!(!rep.ok, "a hidden record must be caught");
    assert!(rep.to_string().contains("manifest's signature"), "{rep}");
    // Without the signature, the same forgery is refused as unsigned.
    forged.signature.clear();
    let rep = appl_audit::verify_export(&mut kept.as_bytes(), &forged, &vk).unwrap();
    assert!(!rep.ok && rep.to_string().contains("not signed"), "{rep}");
}
