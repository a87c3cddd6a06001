//! After an unclean stop (SIGKILL while a request streams), the next start records an outcome
//! for every request the killed run admitted but never completed.

use appl_audit::{Action, Phase, StoreReader};
use futures::StreamExt;

use crate::harness::{greedy, Daemon, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_start_closes_out_requests_a_crash_left_unfinished() {
    let store = tempfile::tempdir().expect("tempdir");
    let audit_dir = store.path().join("audit");
    let opts = Opts {
        audit_dir: Some(audit_dir.clone()),
        ..Opts::default()
    };
    let d = Daemon::start_with(opts.clone());
    let mut stream = d
        .inference()
        .await
        .generate_stream(greedy("Tell me a very long story.", 400))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.next().await.expect("a chunk").expect("ok");
    let id = first.request_id.clone();
    tokio::task::block_in_place(|| d.kill9());
    drop(stream);

    let d = Daemon::start_with(opts);
    let mut audit = appl_proto::v1::audit_client::AuditClient::new(d.channel().await);
    let tail: Vec<serde_json::Value> = audit
        .tail(appl_proto::v1::TailRequest { n: 50 })
        .await
        .expect("tail")
        .into_inner()
        .records
        .iter()
        .map(|r| serde_json::from_str(r).expect("json"))
        .collect();
    let closed = tail
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["phase"] == "completed")
        .expect("the killed request has a completed record now");
    assert_eq!(closed["reason"], "unclean_stop");
    assert_eq!(closed["status"], tonic::Code::Aborted as u32);
    assert_eq!(closed["actor"], "uid:0");
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| tail.iter().position(pred);
    let closed_at = pos(&|r| r["request_id"] == id.as_str() && r["phase"] == "completed");
    let started_at = pos(&|r| r["action"] == "daemon.start" && r["reason"] == "after_unclean_stop");
    assert!(
        closed_at.is_some() && started_at.is_some() && closed_at < started_at,
        "closed out before the new start: {tail:?}"
    );
    drop(audit);
    let (d, code) = tokio::task::spawn_blocking(move || {
        let mut d = d;
        let code = d.terminate();
        (d, code)
    })
    .await
    .expect("stop");
    assert_eq!(code, Some(0), "{}", d.log_text());
    // Every admitted request in the whole store has exactly one completed record.
    let reader = StoreReader::open(&audit_dir).expect("the stopped store");
    let records: Vec<_> = reader.tail(10_000).expect("records");
    let admitted: Vec<_> = records
        .iter()
        .filter(|r| r.record.phase == Phase::Admitted)
        .filter_map(|r| r.record.request_id.clone())
        .collect();
    for rid in admitted {
        let n = records
            .iter()
            .filter(|r| {
                r.record.phase == Phase::Completed && r.record.request_id.as_ref() == Some(&rid)
            })
            .count();
        assert_eq!(n, 1, "{rid} has {n} completed records");
    }
    assert_eq!(
        records.last().map(|r| r.record.action.clone()),
        Some(Action::DaemonStop)
    );
}
