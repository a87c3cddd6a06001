//! `applctl bench` against the real daemon: a short run reports throughput and ordered
//! percentiles; an unreachable target, refused requests, invalid ones and a daemon that dies
//! mid-run are counted and shown by code, never a crash.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{applctl, Daemon, Opts};

/// Runs `applctl bench ARGS --json` and returns its exit code and parsed report.
fn bench(args: &[&str]) -> (i32, Value) {
    let out = Command::new(applctl())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("APPL_ADDR")
        .env_remove("APPL_SOCKET")
        .env_remove("APPL_TENANT")
        .output()
        .expect("run applctl bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "applctl bench printed no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn unix(d: &Daemon) -> String {
    format!("unix://{}", d.socket.display())
}

fn num(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

fn error_count(v: &Value, code: &str) -> u64 {
    v["errors"][code]["count"].as_u64().unwrap_or(0)
}

fn check_percentiles(v: &Value, what: &str) {
    let (p50, p90, p99) = (
        num(v, &format!("{what}.p50")),
        num(v, &format!("{what}.p90")),
        num(v, &format!("{what}.p99")),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99,
        "{what}: p50 {p50}, p90 {p90}, p99 {p99}"
    );
}

#[test]
fn a_short_run_reports_throughput_and_ordered_percentiles_over_both_transports() {
    let d = Daemon::start();
    // TCP is mTLS: the bench presents an inference identity's certificate.
    let certs = d.state_dir().join("bench-certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let ca = certs.join("ca.crt");
    std::fs::write(&ca, &d.ca.as_ref().expect("tls").pem).expect("write ca");
    let (cert, key) = d.client_cert("e2e-inference").write(&certs, "inference");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let tls: Vec<String> = vec![
        "--ca".into(),
        path(&ca),
        "--cert".into(),
        path(&cert),
        "--key".into(),
        path(&key),
    ];
    for (target, creds) in [(unix(&d), vec![]), (format!("grpcs://{}", d.tcp), tls)] {
        let mut args = vec![
            "--target",
            &target,
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--prompt-tokens",
            "40",
            "--max-tokens",
            "8",
        ];
        args.extend(creds.iter().map(String::as_str));
        let (code, r) = bench(&args);
        assert_eq!(code, 0, "{target}: {r:#}");
        assert_eq!(
            (num(&r, "sent"), num(&r, "ok"), num(&r, "failed")),
            (4.0, 4.0, 0.0)
        );
        assert_eq!(r["model"], "gemma-3-270m");
        assert!(num(&r, "aggregate_tok_s") > 0.0, "{r:#}");
        assert_eq!(
            num(&r, "completion_tokens"),
            32.0,
            "greedy runs to max_tokens: {r:#}"
        );
        check_percentiles(&r, "ttft_ms");
        check_percentiles(&r, "inter_token_ms");
        check_percentiles(&r, "per_stream_decode_tok_s");
        // The prompt length is measured with the daemon's tokenizer: close to what was asked.
        let prompt = num(&r, "prompt_tokens_mean");
        assert!(
            (32.0..=48.0).contains(&prompt),
            "prompt {prompt} tokens, asked 40"
        );
        // Distinct prompts: nothing served from another request's cache.
        assert_eq!(num(&r, "cached_prompt_tokens_mean"), 0.0, "{r:#}");
        assert!(r["errors"].as_object().is_some_and(|e| e.is_empty()));
    }
}

#[test]
fn a_shared_prefix_is_reused_only_when_asked_for() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        ..Opts::default()
    });
    // One stream: each request finds the previous one's prefix cached in its slot.
    let (code, r) = bench(&[
        "--target",
        &unix(&d),
        "--requests",
        "3",
        "--prompt-tokens",
        "8",
        "--shared-prefix-tokens",
        "64",
        "--max-tokens",
        "2",
    ]);
    assert_eq!(code, 0, "{r:#}");
    let cached = num(&r, "cached_prompt_tokens_mean");
    // The second and third requests reuse the ~64-token prefix; the first finds nothing.
    assert!(
        cached >= 2.0 * 50.0 / 3.0,
        "cached {cached} on average: {r:#}"
    );
}

#[test]
fn an_unreachable_target_is_counted_not_a_crash() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    for target in [
        format!("grpc://127.0.0.1:{port}"),
        format!("openai://127.0.0.1:{port}"),
        "unix:///nonexistent/appld.sock".to_owned(),
    ] {
        let (code, r) = bench(&["--target", &target, "-c", "2", "-n", "3"]);
        assert_eq!(code, 1, "{target}: {r:#}");
        assert_eq!((num(&r, "ok"), num(&r, "failed")), (0.0, 3.0), "{target}");
        assert_eq!(error_count(&r, "UNREACHABLE"), 3, "{target}: {r:#}");
        assert_eq!(num(&r, "aggregate_tok_s"), 0.0);
    }
}

#[test]
fn refused_and_invalid_requests_are_counted_by_code() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        max_tokens_cap: 64,
        extra_config: "[[tenants]]\nname = \"ward\"\nmax_concurrent = 1\n".into(),
        ..Opts::default()
    });
    // Three streams of a tenant allowed one request at a time: while one generates, the others
    // are refused with RESOURCE_EXHAUSTED; every request is accounted for.
    let (code, r) = bench(&[
        "--target",
        &unix(&d),
        "--tenant",
        "ward",
        "-c",
        "3",
        "-n",
        "6",
        "--max-tokens",
        "48",
    ]);
    assert_eq!(code, 1, "{r:#}");
    let refused = error_count(&r, "RESOURCE_EXHAUSTED");
    assert!(refused >= 1, "{r:#}");
    assert!(num(&r, "ok") >= 1.0, "{r:#}");
    assert_eq!(num(&r, "ok") + refused as f64, 6.0, "{r:#}");
    assert!(
        r["errors"]["RESOURCE_EXHAUSTED"]["example"]
            .as_str()
            .is_some_and(|m| m.contains("max_concurrent")),
        "{r:#}"
    );
    // Over the max_tokens cap: INVALID_ARGUMENT, counted.
    let (code, r) = bench(&["--target", &unix(&d), "-n", "2", "--max-tokens", "65"]);
    assert_eq!(code, 1);
    assert_eq!(error_count(&r, "INVALID_ARGUMENT"), 2, "{r:#}");
}

#[test]
fn a_daemon_that_dies_mid_run_is_counted_as_broken_streams_then_unreachable() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        ..Opts::default()
    });
    let target = unix(&d);
    let child = Command::new(applctl())
        .args(["bench", "--target", &target, "-c", "2", "--duration", "20s"])
        .args(["--max-tokens", "400", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start applctl bench");
    // Kill the daemon once both streams are generating.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let s = rt.block_on(d.engine_status());
        if s.busy_slots == 2 && s.tokens_generated > 2 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the bench never filled both slots"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    let out = child.wait_with_output().expect("bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no report after the daemon died ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    let errors = r["errors"].as_object().expect("errors");
    let broken: u64 = errors
        .iter()
        .filter(|(code, _)| *code != "UNREACHABLE")
        .map(|(_, e)| e["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(broken, 2, "both streams in flight broke: {r:#}");
    assert!(error_count(&r, "UNREACHABLE") >= 1, "later requests: {r:#}");
    assert_eq!(
        num(&r, "failed"),
        broken as f64 + error_count(&r, "UNREACHABLE") as f64
    );
}

/// `applctl check --measure` times real decode steps and predicts decode speed; `applctl bench`
/// shows the prediction beside what it measures. The bounds here are generous (a factor of 2)
/// because tests share the machine with each other; the ±25% figure on a quiet machine is a
/// recorded benchmark (bench/RESULTS.md, "Speed predictions").
#[test]
fn the_measured_prediction_is_shown_beside_the_measurement_and_roughly_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cal = dir.path().join("calibration.json");
    let model = crate::harness::model_path();
    let out = Command::new(applctl())
        .args([
            "check",
            "--measure",
            "--json",
            "--slots",
            "4",
            "--ctx",
            "512",
        ])
        .args(["--threads", "1", "--appld", crate::harness::APPLD])
        .arg("--model")
        .arg(&model)
        .arg("--save-calibration")
        .arg(&cal)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .expect("run applctl check --measure");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let points = report["measured"]["calibration"]["points"]
        .as_array()
        .expect("points");
    let batches: Vec<u64> = points.iter().filter_map(|p| p["batch"].as_u64()).collect();
    assert_eq!(batches, [1, 2, 4], "{report:#}");
    assert!(points.iter().all(|p| num(p, "step_ms") > 0.0));
    assert!(cal.exists(), "the calibration was saved");

    let d = Daemon::start();
    for streams in ["1", "4"] {
        let (code, r) = bench(&[
            "--target",
            &unix(&d),
            "-c",
            streams,
            "-n",
            streams,
            "--prompt-tokens",
            "32",
            "--max-tokens",
            "48",
            "--calibration",
            cal.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(code, 0, "{r:#}");
        let ratio = num(&r, "prediction.measured_over_predicted");
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{streams} streams: measured {:.1} tok/s per stream against {:.1} predicted: {r:#}",
            num(&r, "per_stream_decode_tok_s.mean"),
            num(&r, "prediction.per_stream_tok_s")
        );
    }
}
