//! `applctl plan --from-audit` on an audit store holding known records: every figure it
//! reports is checked against what the records say.

use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use appl_audit::{Action, AuditConfig, AuditLog, Ident, NewRecord, Phase, Role, Timestamp};

const APPLCTL: &str = env!("CARGO_BIN_EXE_applctl");

/// Appends records at set times.
struct Writer {
    log: AuditLog,
    now: Arc<AtomicI64>,
}

impl Writer {
    fn at(&self, t: &str) -> &Self {
        let ts = Timestamp::parse_rfc3339(t).expect("time");
        self.now.store(ts.unix_micros, Ordering::SeqCst);
        self
    }

    fn request(&self, phase: Phase, id: &str, status: u32, prompt: u32, completion: u32) {
        let mut r = NewRecord::new(
            Action::InferenceGenerate,
            phase,
            Ident::new("clinic-a").expect("ident"),
            Role::Inference,
        );
        r.request_id = Some(Ident::new(id).expect("ident"));
        r.model = Some(Ident::new("gemma-3-270m").expect("ident"));
        r.prompt_tokens = Some(prompt);
        if phase == Phase::Completed {
            r.status = Some(status);
            r.completion_tokens = Some(completion);
        }
        self.log.append_blocking(r).expect("append");
    }
}

fn store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Arc::new(AtomicI64::new(0));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_micros(now.load(Ordering::SeqCst).max(0) as u64)
        })
    };
    let cfg = AuditConfig {
        clock,
        ..AuditConfig::default()
    };
    let w = Writer {
        log: AuditLog::open(dir.path(), cfg).expect("open"),
        now,
    };
    use Phase::{Admitted, Completed};
    w.at("2026-03-01T09:59:00Z")
        .log
        .append_blocking(NewRecord::system(Action::DaemonStart))
        .expect("append");
    // Day 1: three requests at once, one refused (queue full), two served.
    w.at("2026-03-01T10:00:00Z")
        .request(Admitted, "r1", 0, 100, 0);
    w.at("2026-03-01T10:00:01Z")
        .request(Admitted, "r2", 0, 50, 0);
    w.at("2026-03-01T10:00:02Z")
        .request(Admitted, "r3", 0, 70, 0);
    w.at("2026-03-01T10:00:03Z")
        .request(Completed, "r3", 8, 70, 0);
    w.at("2026-03-01T10:00:10Z")
        .request(Completed, "r1", 0, 100, 400);
    w.at("2026-03-01T10:00:20Z")
        .request(Completed, "r2", 0, 50, 200);
    // Day 3: one more.
    w.at("2026-03-03T14:30:00Z")
        .request(Admitted, "r4", 0, 20, 0);
    w.at("2026-03-03T14:30:05Z")
        .request(Completed, "r4", 0, 20, 100);
    // Closing signs the checkpoint that covers every record.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(w.log.close()).expect("close");
    dir
}

fn plan(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(APPLCTL)
        .args(["plan", "--from-audit", "--store"])
        .arg(dir)
        .args(["--api-price", "10", "--api-price-output", "30", "--json"])
        .args(extra)
        .env_remove("APPL_SOCKET")
        .env_remove("APPL_ADDR")
        .output()
        .expect("run applctl");
    assert!(
        out.status.success(),
        "applctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn close(v: &serde_json::Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!(
        (got - want).abs() <= want.abs() * 1e-9 + 1e-12,
        "{got} != {want}"
    );
}

#[test]
fn the_figures_follow_from_the_records() {
    let dir = store();
    let r = plan(
        dir.path(),
        &[
            "--capacity",
            "1.0",
            "--target-utilization",
            "0.5",
            "--growth",
            "20",
            "--gpu-cost",
            "2500",
        ],
    );
    assert_eq!(r["days"], 3);
    assert_eq!(r["requests"], 4);
    assert_eq!(r["queue_refusals"], 1);
    assert_eq!(r["failed"], 0);
    // The refused request bills nothing.
    assert_eq!(r["prompt_tokens"], 170);
    assert_eq!(r["completion_tokens"], 700);
    close(&r["tokens_per_day"], 870.0 / 3.0);
    close(&r["requests_per_day"], 4.0 / 3.0);
    assert_eq!(r["peak_concurrency"], 3);
    assert_eq!(r["busiest_day"][0], "2026-03-01");
    assert_eq!(r["busiest_day"][1], 750);
    assert_eq!(r["peak_hour"][0], "2026-03-01T10:00Z");
    close(&r["peak_hour"][1], 600.0 / 3600.0);
    // (170 x $10 + 700 x $30) per 1M tokens, over 3 days.
    close(
        &r["api_cost_per_day"],
        (170.0 * 10.0 + 700.0 * 30.0) / 1e6 / 3.0,
    );
    close(
        &r["api_cost_per_month"],
        (170.0 * 10.0 + 700.0 * 30.0) / 1e6 / 3.0 * 30.0,
    );
    close(&r["capacity"]["tokens_per_second"], 1.0);
    close(&r["utilization_peak_hour"], 600.0 / 3600.0);
    close(&r["utilization_mean"], 700.0 / (3.0 * 86_400.0));
    // 1 tok/s at 50% is 3x the peak hour; at 20%/month that is ln 3 / ln 1.2 months away.
    close(&r["headroom"], 3.0);
    close(&r["months_to_second_box"], 3f64.ln() / 1.2f64.ln());
    assert_eq!(r["cost"]["input"]["requests_per_day"], 1);
    assert_eq!(r["cost"]["input"]["tokens_per_request"], 217);
}

#[test]
fn since_leaves_out_older_traffic_and_text_output_reads_well() {
    let dir = store();
    let r = plan(dir.path(), &["--since", "2026-03-02T00:00:00Z"]);
    assert_eq!(r["requests"], 1);
    assert_eq!(r["days"], 1);
    assert_eq!(r["peak_concurrency"], 1);
    assert_eq!(r["completion_tokens"], 100);
    assert!(r["capacity"].is_null());
    let out = Command::new(APPLCTL)
        .args(["plan", "--from-audit", "--store"])
        .arg(dir.path())
        .args(["--capacity", "2"])
        .output()
        .expect("run applctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "peak concurrency",
        "3 requests in flight",
        "1 refused",
        "second box",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}
