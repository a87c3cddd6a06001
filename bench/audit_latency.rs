//! The audit log's share of request latency, measured inside the real daemon.
//!
//! Starts the real `appld` with the demo model and its audit store on the real disk, drives it
//! with concurrent gRPC clients, and reads the daemon's `request audited` debug lines (target
//! `audit`): for every request, how long its path waited for the admitted record to be durable
//! (`admitted_us`), for the completed record (`completed_us`), and its latency up to that
//! point (`latency_us`). The audit share is (admitted + completed) / latency.
//!
//! It is built with the workspace (`cargo build --workspace --all-targets`, dev profile: our
//! Rust code, sled included, is unoptimised, which overstates the audit cost; llama.cpp is
//! always optimised) and run directly:
//!
//! ```sh
//! target/debug/deps/audit_latency-<hash>
//! ```
//!
//! Profiles: one client with `max_tokens` 4 (short requests: the worst case for the share), then
//! `AUDIT_BENCH_CLIENTS` concurrent clients (default 8, sharing fsyncs) with `max_tokens` 4 and
//! 32. Settings (environment): `AUDIT_BENCH_REQUESTS` per client and profile (default 4),
//! `AUDIT_BENCH_THREADS` llama.cpp threads (default 2),
//! `AUDIT_BENCH_DIR` where the audit store goes (default a temporary directory under
//! `target/`, on the real disk), `APPL_TEST_MODEL` the GGUF.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use appl_proto::v1 as pb;

// The e2e tests' harness starts the daemon; only part of it is used here.
#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Debug, Clone, Copy)]
struct Audited {
    admitted_us: u64,
    completed_us: u64,
    latency_us: u64,
}

/// The `request audited` lines the daemon has logged so far, parsed.
fn audited(d: &harness::Daemon) -> Vec<Audited> {
    d.logs
        .lock()
        .expect("log lock")
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["message"] == "request audited")
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            Audited {
                admitted_us: n("admitted_us"),
                completed_us: n("completed_us"),
                latency_us: n("latency_us"),
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let clients: usize = env_or("AUDIT_BENCH_CLIENTS", 8);
    let per_client: usize = env_or("AUDIT_BENCH_REQUESTS", 4);
    let threads: u32 = env_or("AUDIT_BENCH_THREADS", 2);
    let base = std::env::var("AUDIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let d = harness::Daemon::start_with(harness::Opts {
        slots: u32::try_from(clients).expect("clients fit u32"),
        threads,
        audit_dir: Some(dir.path().join("audit")),
        log_filter: "warn,appld=info,audit=debug".to_owned(),
        ..harness::Opts::default()
    });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}; load average: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("audit store: {}", dir.path().join("audit").display());
    println!(
        "| clients | max_tokens | requests | mean latency ms | mean audit wait ms (admitted + completed) | audit share (sum) | per-request share p50 / p99 / max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (clients, max_tokens, per_client) in [
        (1usize, 4u32, 4 * per_client),
        (clients, 4, per_client),
        (clients, 32, per_client),
    ] {
        let before = audited(&d).len();
        let started = Instant::now();
        rt.block_on(async {
            // Over TCP with mTLS, as a remote client would.
            let ch = d.tcp_channel().await;
            let mut tasks = Vec::new();
            for c in 0..clients {
                let mut client = pb::inference_client::InferenceClient::new(ch.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_client {
                        let r = pb::GenerateRequest {
                            prompt: format!("Write a short note about topic number {c}-{i}."),
                            sampling: Some(pb::SamplingParams {
                                temperature: Some(0.0),
                                ..Default::default()
                            }),
                            max_tokens: Some(max_tokens),
                            ..Default::default()
                        };
                        client.generate(r).await.expect("generate");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("client");
            }
        });
        let wall = started.elapsed();
        // The debug line is written just before the response goes out; give the reader thread
        // a moment to catch up.
        std::thread::sleep(Duration::from_millis(300));
        let got = audited(&d)[before..].to_vec();
        let n = got.len();
        let lat: u64 = got.iter().map(|a| a.latency_us).sum();
        let aud: u64 = got.iter().map(|a| a.admitted_us + a.completed_us).sum();
        let mut shares: Vec<f64> = got
            .iter()
            .map(|a| (a.admitted_us + a.completed_us) as f64 / a.latency_us.max(1) as f64)
            .collect();
        shares.sort_by(f64::total_cmp);
        println!(
            "| {clients} | {max_tokens} | {n} | {:.1} | {:.3} | **{:.3}%** | {:.3}% / {:.3}% / {:.3}% |",
            lat as f64 / n.max(1) as f64 / 1e3,
            aud as f64 / n.max(1) as f64 / 1e3,
            100.0 * aud as f64 / lat.max(1) as f64,
            100.0 * percentile(&shares, 0.5),
            100.0 * percentile(&shares, 0.99),
            100.0 * shares.last().copied().unwrap_or(f64::NAN),
        );
        eprintln!(
            "  ({max_tokens} tokens: {n} requests in {:.1} s)",
            wall.as_secs_f64()
        );
    }
}
