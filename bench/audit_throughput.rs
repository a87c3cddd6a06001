//! Durable audit records per second: 64 concurrent writers (group commit) against 1 writer.
//!
//! Run with `cargo bench -p appl-audit --bench audit_throughput`. The store lives under Cargo's
//! target tmp dir (a real disk, not tmpfs, so the fsyncs are real); set `AUDIT_BENCH_DIR` to
//! measure another file system. `AUDIT_BENCH_SECS` sets the length of each phase (default 5).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_audit::{
    Action, AuditConfig, AuditLog, Digest, FaultPoint, Ident, NewRecord, Phase, Role,
};

fn record(i: u64) -> NewRecord {
    let mut n = NewRecord::new(
        Action::InferenceGenerate,
        if i % 2 == 0 {
            Phase::Admitted
        } else {
            Phase::Completed
        },
        Ident::new("CN=bench-client,O=Example-Clinic").expect("valid ident"),
        Role::Inference,
    );
    n.peer = Some(Ident::new("10.1.2.3:51234").expect("valid ident"));
    n.request_id = Some(Ident::new(format!("0190c5e2-7b1a-7cc3-9a4e-{i:012x}")).expect("valid"));
    n.model = Some(Ident::new("qwen2.5-0.5b-instruct-q4_k_m").expect("valid ident"));
    n.model_sha256 = Some(Digest([0x11; 32]));
    n.status = Some(0);
    n.prompt_tokens = Some(421);
    n.completion_tokens = Some(128);
    n.latency_us = Some(812_345);
    n.prompt_hmac = Some(Digest([0x22; 32]));
    n
}

/// Runs `writers` concurrent append loops for `secs`; returns (records, seconds, flushes).
async fn phase(dir: &Path, writers: u64, secs: f64) -> (u64, f64, u64) {
    // The fault hook is only used to count flushes (fsyncs); it never fails.
    let flushes = Arc::new(AtomicU64::new(0));
    let counter = flushes.clone();
    let cfg = AuditConfig {
        fault_hook: Some(Arc::new(move |p| {
            if p == FaultPoint::Flush {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })),
        ..AuditConfig::default()
    };
    let log = AuditLog::open(dir, cfg).expect("open audit log");
    let flushes_at_start = flushes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                log.append(record(w << 32 | n)).await.expect("append");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let used = flushes.load(Ordering::Relaxed) - flushes_at_start;
    log.close().await.expect("close");
    (total, elapsed, used)
}

fn main() {
    let secs: f64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let base = std::env::var_os("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned());
    std::fs::create_dir_all(&base).expect("bench dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bytes = {
        let d = tempfile::tempdir_in(&base).expect("tmp");
        let log = AuditLog::open(d.path(), AuditConfig::default()).expect("open");
        rt.block_on(log.append(record(1))).expect("append");
        let t = log.tail(1).expect("tail");
        rt.block_on(log.close()).expect("close");
        t[0].record.canonical_bytes().len() + 32
    };
    let results: Vec<(u64, u64, f64, u64)> = [1u64, 64]
        .iter()
        .map(|&w| {
            let d = tempfile::tempdir_in(&base).expect("tmp");
            let (n, s, f) = rt.block_on(phase(d.path(), w, secs));
            (w, n, s, f)
        })
        .collect();
    let rate = |r: &(u64, u64, f64, u64)| r.1 as f64 / r.2;
    println!(
        "audit log durable appends ({bytes}-byte stored records, {secs} s per phase, dir {})",
        base.display()
    );
    println!(
        "{:>8} {:>10} {:>8} {:>12} {:>10} {:>14}",
        "writers", "records", "secs", "records/s", "fsyncs", "records/fsync"
    );
    for r in &results {
        println!(
            "{:>8} {:>10} {:>8.2} {:>12.0} {:>10} {:>14.1}",
            r.0,
            r.1,
            r.2,
            rate(r),
            r.3,
            r.1 as f64 / r.3.max(1) as f64
        );
    }
    println!("ratio 64/1: {:.1}x", rate(&results[1]) / rate(&results[0]));
}
