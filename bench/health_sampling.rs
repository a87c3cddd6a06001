//! What live hardware health sampling costs, against a decode step.
//!
//! The sampler runs on its own thread (`health-sampler`), never on an engine thread, and shares
//! no lock with one; its only cost to decoding is the CPU time it takes from a core that an
//! engine thread might want. This measures:
//!
//! 1. the time of one sample, as appld takes it on this machine (AMD sysfs scan + host
//!    `/proc` reads; no NVIDIA driver here), and with a recorded file of 8 GPUs in its place;
//! 2. a decode step of the demo model in the real daemon (single stream, so one step per
//!    token; one llama.cpp thread), with the default interval (5 s) and with an aggressive
//!    100 ms one;
//! 3. the share: sample time / interval (the sampler's share of one core, which is what a
//!    decode step can lose to it on average), and sample time / step time (the most one step
//!    can be delayed if the sample lands on the engine's core during that step).
//!
//! Built with the workspace (`cargo build --workspace --all-targets`; dev profile, llama.cpp
//! optimised) and run directly: `target/debug/deps/health_sampling-<hash>`. Settings:
//! `HEALTH_BENCH_SAMPLES` (default 2000), `HEALTH_BENCH_TOKENS` (default 128),
//! `APPL_TEST_MODEL`.

use std::path::Path;
use std::time::{Duration, Instant};

use appl_firmware_profiles::health::recorded::{RecordedHealth, RecordedSample};
use appl_firmware_profiles::health::{self, GpuHealth, HealthSource};
use appl_firmware_profiles::inventory::{GpuVendor, Inventory};
use appld::health::Sampler;

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Mean, median and 99th percentile of `n` timed calls, in microseconds.
fn time_it(n: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / n as f64;
    (mean, v[n / 2], v[(n * 99 / 100).min(n - 1)])
}

/// Milliseconds per decode step of one greedy stream of `tokens` tokens.
async fn step_ms(d: &harness::Daemon, tokens: u32) -> f64 {
    let mut c = d.inference().await;
    // Warm up (first request pays page faults of the weights).
    c.generate(harness::greedy("Hello", 8))
        .await
        .expect("warm up");
    let r = c
        .generate(harness::greedy(
            "Write a long story about a lighthouse keeper and the sea.",
            tokens,
        ))
        .await
        .expect("generate")
        .into_inner();
    let u = r.usage.expect("usage");
    u.decode_ms / f64::from(u.completion_tokens.saturating_sub(1).max(1))
}

fn main() {
    let n: usize = env_or("HEALTH_BENCH_SAMPLES", 2000);
    let tokens: u32 = env_or("HEALTH_BENCH_TOKENS", 128);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/inventories/cpu-only.json");
    let inv = Inventory::from_path(&fixture).expect("fixture");

    let mut live = Sampler::new(health::system_sources(), inv.clone());
    let (live_mean, live_p50, live_p99) = time_it(n, || {
        std::hint::black_box(live.sample());
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let recorded = dir.path().join("health.json");
    let gpus = (0..8)
        .map(|i| {
            let mut g = GpuHealth::new(i, GpuVendor::Nvidia, "NVIDIA H100 80GB HBM3");
            g.memory_total_bytes = 80 << 30;
            g.ecc_uncorrected = Some(0);
            g
        })
        .collect();
    std::fs::write(&recorded, RecordedSample { gpus }.to_json()).expect("write");
    let sources: Vec<Box<dyn HealthSource>> = vec![Box::new(RecordedHealth::new(&recorded))];
    let mut rec = Sampler::new(sources, inv);
    let (rec_mean, rec_p50, rec_p99) = time_it(n, || {
        std::hint::black_box(rec.sample());
    });
    println!("one health sample ({n} samples), microseconds:");
    println!("  this machine (AMD sysfs scan + /proc): mean {live_mean:.1}, p50 {live_p50:.1}, p99 {live_p99:.1}");
    println!("  recorded file, 8 GPUs + /proc:          mean {rec_mean:.1}, p50 {rec_p50:.1}, p99 {rec_p99:.1}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for interval_ms in [5000u64, 100] {
        let d = harness::Daemon::start_with(harness::Opts {
            slots: 1,
            ctx_per_slot: 1024,
            max_tokens_cap: 1024,
            threads: 1,
            extra_config: format!("[health]\ninterval_ms = {interval_ms}\n"),
            ..harness::Opts::default()
        });
        let step = rt.block_on(async {
            let mut best = f64::MAX;
            for _ in 0..3 {
                best = best.min(step_ms(&d, tokens).await);
            }
            best
        });
        let interval = Duration::from_millis(interval_ms).as_secs_f64() * 1e6;
        println!(
            "interval {interval_ms} ms: decode step {step:.2} ms (best of 3, {tokens} tokens); \
             sampler share of a core {:.5}%; worst single-step delay {:.3}%",
            live_mean / interval * 100.0,
            live_p99 / (step * 1e3) * 100.0,
        );
    }
}
