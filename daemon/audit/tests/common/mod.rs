//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use appl_audit::{Action, AuditConfig, AuditLog, Ident, NewRecord, Phase, Role};

pub fn cfg() -> AuditConfig {
    AuditConfig {
        retry_every: Duration::from_millis(20),
        ..AuditConfig::default()
    }
}

/// The i-th record of a varied, deterministic workload.
pub fn record(i: u64) -> NewRecord {
    let actors = ["CN=alice,O=Clinic", "uid:1000", "tenant-b"];
    let actions = [
        Action::InferenceGenerate,
        Action::InferenceChat,
        Action::admin("drain").unwrap(),
        Action::AuthDenied,
    ];
    let mut n = NewRecord::new(
        actions[(i % 4) as usize].clone(),
        if i % 2 == 0 {
            Phase::Admitted
        } else {
            Phase::Completed
        },
        Ident::new(actors[(i % 3) as usize]).unwrap(),
        Role::Inference,
    );
    n.peer = Some(Ident::new(format!("10.0.0.{}:{}", i % 7, 40000 + i)).unwrap());
    n.request_id = Some(Ident::new(format!("req-{}", i / 2)).unwrap());
    n.model = Some(Ident::new("tiny-q4_k_m").unwrap());
    n.model_sha256 = Some(appl_audit::Digest([0x5a; 32]));
    if i % 2 == 1 {
        n.status = Some(if i % 5 == 0 { 8 } else { 0 });
        n.prompt_tokens = Some(12 + i as u32);
        n.completion_tokens = Some(34);
        n.latency_us = Some(1000 * i);
    }
    n
}

/// Writes `n` records (one at a time) into a fresh log in `dir` and closes it.
pub async fn write_log(dir: &Path, n: u64, cfg: AuditConfig) -> AuditLog {
    let log = AuditLog::open(dir, cfg).unwrap();
    for i in 0..n {
        assert_eq!(log.append(record(i)).await.unwrap(), i);
    }
    log
}
