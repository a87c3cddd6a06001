//! Stopping: SIGTERM ends the daemon cleanly every time, with a stream in flight and the CPU
//! kept busy by other processes: exit code 0 within the drain timeout plus a margin, a final
//! message on the stream, and an audit log that verifies with every admitted request completed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appl_audit::Phase;
use appl_proto::v1 as pb;
use futures::StreamExt;

use crate::audit::read_verified;
use crate::harness::{greedy, Daemon, Opts};

/// Processes that keep every core busy until dropped.
struct Busy(Vec<Child>);

impl Busy {
    fn start() -> Busy {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Busy(
            (0..n)
                .map(|_| {
                    Command::new("yes")
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("start a busy process (yes)")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Rounds of the stop test: `APPL_STOP_ROUNDS`, 50 by default (what CI runs).
fn rounds() -> usize {
    std::env::var("APPL_STOP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stream_in_flight_exits_0_every_time_on_a_busy_cpu() {
    const DRAIN: Duration = Duration::from_secs(1);
    // Stopping the engine waits for one step, then the stream's last message, the audit
    // checkpoint and process exit, all on a loaded CPU.
    const MARGIN: Duration = Duration::from_secs(5);
    let _busy = Busy::start();
    let audit = tempfile::tempdir().expect("tempdir");
    let mut admitted_total = 0;
    for round in 0..rounds() {
        let mut d = Daemon::start_with(Opts {
            slots: 1,
            ctx_per_slot: 2048,
            max_tokens_cap: 2000,
            drain_timeout_secs: DRAIN.as_secs(),
            audit_dir: Some(audit.path().to_owned()),
            ..Opts::default()
        });
        let mut c = d.inference().await;
        let mut s = c
            .generate_stream(greedy("Write a very long story about a dragon.", 2000))
            .await
            .expect("stream")
            .into_inner();
        s.next().await.expect("a chunk").expect("ok");
        let asked = Instant::now();
        let code = tokio::task::block_in_place(|| d.terminate());
        let took = asked.elapsed();
        assert_eq!(
            code,
            Some(0),
            "round {round}: appld did not exit 0 on SIGTERM; log:\n{}",
            d.log_text()
        );
        assert!(
            took < DRAIN + MARGIN,
            "round {round}: stopped {took:?} after SIGTERM (drain timeout {DRAIN:?})"
        );
        // The stream ended with a final message saying why, not a cut connection.
        let mut last = None;
        while let Some(item) = s.next().await {
            last = Some(item);
        }
        let last = last
            .unwrap_or_else(|| panic!("round {round}: nothing came on the stream after SIGTERM"))
            .unwrap_or_else(|e| panic!("round {round}: the stream ended with an error: {e}"));
        assert_eq!(
            last.finish_reason,
            pb::FinishReason::Cancelled as i32,
            "round {round}: the last message says the request was cancelled"
        );
        // Every admitted request of every round has its completed record.
        let store = read_verified(audit.path());
        let count = |phase| {
            store
                .records
                .iter()
                .filter(|r| r.record.phase == phase && r.record.request_id.is_some())
                .count()
        };
        admitted_total += 1;
        assert_eq!(count(Phase::Admitted), admitted_total, "round {round}");
        assert_eq!(count(Phase::Completed), admitted_total, "round {round}");
    }
}
