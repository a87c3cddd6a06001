//! `applctl bench`: the load generator an operator runs on site to show that the box meets its
//! plan. It drives appld (`unix://`, `grpc://`) or any OpenAI-compatible server (`openai://`)
//! with N concurrent streams and reports aggregate and per-stream throughput, time to first
//! token and inter-token latency percentiles, and errors by code. A refused request, a server
//! error or an unreachable target is counted and shown, never a crash.
//!
//! Exit codes: 0 every request completed, 1 some failed (the report says which and why),
//! 2 usage error.

mod grpc;
mod openai;
mod progress;
mod prompts;
mod report;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use progress::{Counters, Goal};
use prompts::Source;
use report::{Sample, Setup};
pub use target::Target;

/// Service class of the benchmark's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorityArg {
    Interactive,
    Batch,
}

impl PriorityArg {
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityArg::Interactive => "interactive",
            PriorityArg::Batch => "batch",
        }
    }
}

/// Drive a server with concurrent streams and report throughput and latency.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// unix:///path or grpc://host:port (appld), openai://host:port (llama-server, vLLM);
    /// the global --socket / --addr when omitted.
    #[arg(long, value_name = "URL")]
    pub target: Option<Target>,
    /// Streams in flight at once.
    #[arg(long, short = 'c', default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Requests in all [default: 4 per stream].
    #[arg(long, short = 'n', conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Keep sending new requests for this long (such as 30s or 2m); those in flight finish.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Prompt length in tokens (random common words, distinct for every request).
    #[arg(long, default_value_t = 64, conflicts_with = "prompt_file")]
    pub prompt_tokens: u32,
    /// Prompts from a file, one per line, used in turn (instead of generated ones).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Start every prompt with the same text of about this many tokens (a shared system
    /// prompt): the prefix-cache workload. Off by default, so no prefix is reused by accident.
    #[arg(long, default_value_t = 0, conflicts_with = "prompt_file")]
    pub shared_prefix_tokens: u32,
    /// Which shared prefix: a new value is a prefix no server has cached yet.
    #[arg(long, default_value_t = 0)]
    pub prefix_seed: u64,
    /// Seed of the distinct prompt parts [default: from the clock, so runs differ].
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// 0 is greedy, as in every figure of bench/RESULTS.md.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Service class; the server's default when omitted.
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Model id; the server's default when omitted.
    #[arg(long, short, default_value = "")]
    pub model: String,
    /// The tenant (sent as `x-appl-tenant`).
    #[arg(long, env = "APPL_TENANT")]
    pub tenant: Option<String>,
    /// Requests sent one at a time before the measured run, not counted.
    #[arg(long, default_value_t = 0)]
    pub warmup: u32,
    /// A calibration from `applctl check --measure` whose decode-speed prediction is shown
    /// beside the measurement [default: the one kept for the served model, if any].
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `30`, `30s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 500ms or 2m");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// One request as the drivers send it.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f32,
    pub priority: Option<PriorityArg>,
    pub tenant: Option<String>,
}

/// What the streams share while the run goes.
struct Run {
    target: Target,
    /// The credentials (`--ca`, `--cert`, `--key`, `--api-key`) for gRPC targets.
    conn: crate::client::ConnArgs,
    source: Source,
    template: Request,
    goal: Goal,
    started: Instant,
    next: AtomicU64,
    counters: Arc<Counters>,
    samples: Mutex<Vec<Sample>>,
}

impl Run {
    /// The index of the next request to send, or None once the goal is reached.
    fn take(&self) -> Option<u64> {
        match self.goal {
            Goal::Requests(n) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                (i < n).then_some(i)
            }
            Goal::Duration(d) => {
                (self.started.elapsed() < d).then(|| self.next.fetch_add(1, Ordering::Relaxed))
            }
        }
    }

    fn record(&self, s: Sample) {
        match &s {
            Ok(c) => {
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tokens
                    .fetch_add(u64::from(c.completion_tokens), Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A poisoned lock means a stream panicked; its samples are still valid.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s);
    }
}

/// Pause after a failure before the same stream sends again, so that a refused or unreachable
/// target is counted without a busy loop.
const BACKOFF: Duration = Duration::from_millis(100);

async fn stream(run: Arc<Run>) {
    let mut client = match run.target.client(&run.conn) {
        Ok(c) => c,
        Err(_) => return,
    };
    while let Some(i) = run.take() {
        let mut req = run.template.clone();
        req.prompt = run.source.prompt(i);
        let s = client.generate(&req).await;
        let failed = s.is_err();
        run.record(s);
        if failed {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Builds the prompt source, measuring the target's tokens per word on generated text.
async fn source(a: &BenchArgs, client: &mut target::Client, seed: u64) -> anyhow::Result<Source> {
    if let Some(path) = &a.prompt_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --prompt-file {}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!lines.is_empty(), "{} has no prompts", path.display());
        return Ok(Source::Lines(lines));
    }
    let sample = prompts::calibration_text();
    let words = sample.split(' ').count();
    // Without a tokenizer at the target, assume one token per word plus BOS.
    let per_word = match client.count_tokens(&a.model, &sample).await {
        Some(n) if n > 1 => f64::from(n - 1) / words as f64,
        _ => 1.0,
    };
    Ok(Source::Generated {
        words: prompts::words_for(a.prompt_tokens, per_word),
        prefix_words: prompts::words_for(a.shared_prefix_tokens, per_word),
        seed,
        prefix_seed: a.prefix_seed,
    })
}

pub async fn run(conn: &crate::client::ConnArgs, a: BenchArgs) -> anyhow::Result<ExitCode> {
    let target = a.target.clone().unwrap_or_else(|| Target::from_conn(conn));
    let mut probe = target.client(conn)?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let source = source(&a, &mut probe, seed).await?;
    let model = probe.model(&a.model).await;
    let template = Request {
        model: a.model.clone(),
        prompt: String::new(),
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        priority: a.priority,
        tenant: a.tenant.clone(),
    };
    for k in 0..a.warmup {
        let mut req = template.clone();
        // Warm-up prompts share nothing with the measured ones.
        req.prompt = Source::Generated {
            words: 16,
            prefix_words: 0,
            seed: seed ^ 0xdead_beef,
            prefix_seed: 0,
        }
        .prompt(u64::from(k));
        let _ = probe.generate(&req).await;
    }
    drop(probe);

    let goal = match a.duration {
        Some(d) => Goal::Duration(d),
        None => Goal::Requests(a.requests.unwrap_or(4 * u64::from(a.concurrency))),
    };
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let run = Arc::new(Run {
        target: target.clone(),
        conn: conn.clone(),
        source,
        template,
        goal,
        started,
        next: AtomicU64::new(0),
        counters: Arc::clone(&counters),
        samples: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let drawer = tokio::spawn(progress::draw(goal, counters, started, stop_rx));
    let streams: Vec<_> = (0..a.concurrency)
        .map(|_| tokio::spawn(stream(Arc::clone(&run))))
        .collect();
    for s in streams {
        // A stream task only ends by returning; a panic in one is a bug worth reporting.
        s.await.context("a benchmark stream panicked")?;
    }
    let wall = started.elapsed();
    let model_file = model.as_ref().map(|m| m.1.clone());
    let _ = stop_tx.send(());
    let _ = drawer.await;

    let samples = std::mem::take(
        &mut *run
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let setup = Setup {
        target: target.to_string(),
        model: model.clone().map_or_else(
            || {
                if a.model.is_empty() {
                    "(default)".to_owned()
                } else {
                    a.model.clone()
                }
            },
            |m| m.0,
        ),
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
        prompt_tokens_asked: a.prompt_file.is_none().then_some(a.prompt_tokens),
        shared_prefix_tokens: a.shared_prefix_tokens,
        priority: a.priority.map_or("default", PriorityArg::as_str).to_owned(),
    };
    let mut summary = report::summarize(setup, &samples, wall);
    summary.prediction = prediction(&a, model_file.as_deref(), &summary)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::table(&summary));
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The calibration's prediction for this run, beside what was measured: from `--calibration`,
/// or from the calibration `applctl check --measure` kept for the served model's file.
fn prediction(
    a: &BenchArgs,
    model_file: Option<&str>,
    summary: &report::Summary,
) -> anyhow::Result<Option<report::Prediction>> {
    let (path, explicit) = match (
        &a.calibration,
        model_file.and_then(crate::measure::default_path),
    ) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) if p.exists() => (p, false),
        _ => return Ok(None),
    };
    let cal = match crate::measure::load(&path) {
        Ok(c) => c,
        Err(e) if explicit => return Err(e),
        Err(_) => return Ok(None),
    };
    let p = cal.predict(a.concurrency)?;
    let measured = summary.per_stream_decode_tok_s.mean;
    Ok(Some(report::Prediction {
        source: format!("{}, {} threads", path.display(), cal.threads),
        per_stream_tok_s: p.per_stream_tok_s,
        aggregate_tok_s: p.aggregate_tok_s,
        measured_over_predicted: if p.per_stream_tok_s > 0.0 {
            measured / p.per_stream_tok_s
        } else {
            0.0
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_common_units_or_say_how() {
        let cases = [
            ("30", Some(30.0)),
            ("30s", Some(30.0)),
            ("500ms", Some(0.5)),
            ("2m", Some(120.0)),
            ("1.5s", Some(1.5)),
            ("ten", None),
            ("5h", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs_f64()), want, "{s}");
        }
    }
}
