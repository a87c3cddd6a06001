//! Queue benchmark (not a timed test): the real `appld` binary and demo model.
//!
//! 1. Interactive time-to-first-token on an idle daemon, and while 8 batch streams hold every
//!    slot, with preemption on (the default) and off (what a FIFO server does).
//! 2. Aggregate throughput of 8 batch streams with the queue's features on (preemption, prefix
//!    reuse) and off, plus the cost of the admission bookkeeping itself per request.
//!
//! Build with `cargo build --workspace --all-targets`, then run
//! `target/debug/deps/queue_ttft-<hash>` (our code in the dev profile; llama.cpp is always
//! compiled optimised). Results: bench/RESULTS.md, "Queue".

#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use appl_engine::admission::{Claim, Priority, Queue, TenantId};
use appl_proto::v1 as pb;
use futures::StreamExt;
use harness::{greedy, Daemon, Opts};

const BATCH_PROMPTS: [&str; 8] = [
    "Write a long essay about the history of the Roman Empire.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, from wheat to loaf.",
    "Describe the water cycle at length, for a school textbook.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Explain how a hospital pharmacy manages its stock, in detail.",
    "Write a long report on city planning in the year 2050.",
    "Describe every step of planting and caring for an apple tree.",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Client-observed time to the first token of a short interactive stream, in ms.
async fn interactive_ttft(d: &Daemon) -> f64 {
    let mut c = d.inference().await;
    let mut req = greedy("Hello! In one sentence, what is a fever?", 8);
    req.priority = pb::Priority::Interactive as i32;
    let t0 = Instant::now();
    let mut s = c.generate_stream(req).await.expect("stream").into_inner();
    let mut first = None;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("chunk");
        if first.is_none() && !chunk.token_ids.is_empty() {
            first = Some(t0.elapsed());
        }
    }
    first.expect("a token").as_secs_f64() * 1e3
}

struct Load {
    tasks: Vec<tokio::task::JoinHandle<u32>>,
    started: Instant,
}

async fn start_batch_load(d: &Daemon, max_tokens: u32) -> Load {
    let channel = d.channel().await;
    let started = Instant::now();
    let tasks = BATCH_PROMPTS
        .iter()
        .map(|p| {
            let mut c = pb::inference_client::InferenceClient::new(channel.clone());
            let mut req = greedy(p, max_tokens);
            req.priority = pb::Priority::Batch as i32;
            tokio::spawn(async move {
                let mut s = c.generate_stream(req).await.expect("batch").into_inner();
                let mut n = 0;
                while let Some(chunk) = s.next().await {
                    n += chunk.expect("chunk").token_ids.len() as u32;
                }
                n
            })
        })
        .collect();
    // Every slot busy and generating.
    loop {
        let s = d.engine_status().await;
        if s.busy_slots == 8 && s.tokens_generated >= 8 * 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Load { tasks, started }
}

impl Load {
    /// Waits for every stream; returns (tokens, tokens per second).
    async fn finish(self) -> (u32, f64) {
        let mut total = 0;
        for t in self.tasks {
            total += t.await.expect("batch task");
        }
        (
            total,
            f64::from(total) / self.started.elapsed().as_secs_f64(),
        )
    }
}

fn daemon(extra: &str) -> Daemon {
    Daemon::start_with(Opts {
        slots: 8,
        ctx_per_slot: 512,
        threads: 1,
        extra_config: extra.to_owned(),
        ..Opts::default()
    })
}

async fn ttft_scenario(label: &str, extra: &str, batch_tokens: u32) {
    let d = daemon(extra);
    let _ = interactive_ttft(&d).await; // warm-up
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(interactive_ttft(&d).await);
    }
    let load = start_batch_load(&d, batch_tokens).await;
    let mut loaded = Vec::new();
    for _ in 0..5 {
        loaded.push(interactive_ttft(&d).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (tokens, tps) = load.finish().await;
    let s = d.engine_status().await;
    let max = loaded.iter().copied().fold(0.0, f64::max);
    let (i, l) = (median(idle), median(loaded.clone()));
    println!(
        "{label}: idle TTFT median {i:.0} ms; under 8 batch streams: first {:.0} ms, median {l:.0} ms, max {max:.0} ms; median = {:.2}x idle; preemptions {}; batch {tokens} tokens at {tps:.1} tok/s; all loaded TTFTs {:?}",
        loaded[0],
        l / i,
        s.preemptions,
        loaded.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
}

async fn throughput_scenario(label: &str, extra: &str) -> f64 {
    let d = daemon(extra);
    let _ = interactive_ttft(&d).await; // warm-up
    let load = start_batch_load(&d, 160).await;
    let (tokens, tps) = load.finish().await;
    println!("{label}: 8 batch streams, {tokens} tokens, {tps:.1} tok/s aggregate");
    tps
}

/// The admission bookkeeping alone: push and pop through the fair queue at the queue's
/// capacity, per request.
fn bookkeeping_ns() -> f64 {
    let now = Instant::now();
    let mut q = Queue::new(Duration::from_secs(10));
    let n = 200_000u32;
    let t0 = Instant::now();
    for i in 0..n {
        q.push(
            i,
            Claim {
                tenant: TenantId(i % 4),
                weight: 1 + i % 3,
                priority: if i % 5 == 0 {
                    Priority::Interactive
                } else {
                    Priority::Batch
                },
                cost: 300,
                enqueued: now,
            },
        );
        if q.len() >= 64 {
            std::hint::black_box(q.pop(now));
        }
    }
    t0.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        ttft_scenario("preemption on ", "", 192).await;
        ttft_scenario("preemption off", "[queue]\npreemption = false\n", 192).await;
        let on = throughput_scenario("queue features on ", "").await;
        let off = throughput_scenario(
            "queue features off",
            "[queue]\npreemption = false\nprefix_reuse_min_tokens = 0\n",
        )
        .await;
        println!("throughput on/off: {:.3}", on / off);
    });
    println!(
        "admission bookkeeping: {:.0} ns per request (push + pop, 64 queued, 4 tenants)",
        bookkeeping_ns()
    );
}
