//! What a benchmark run measured: per-request samples in, a summary out (aggregate and
//! per-stream throughput, TTFT and inter-token percentiles, errors by code), as a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// A request that streamed to its end.
#[derive(Debug, Clone, Default)]
pub struct Completed {
    /// From sending the request to the first token.
    pub ttft: Duration,
    /// When chunks carrying tokens arrived (from sending the request) and how many tokens each
    /// carried.
    pub arrivals: Vec<(Duration, u32)>,
    /// From sending the request to its final message.
    pub total: Duration,
    /// As counted by the server.
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the server served from cache, when it says.
    pub cached_prompt_tokens: Option<u32>,
}

/// A request that did not complete: refused, failed on the server, or never reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A stable code: the gRPC code name (`RESOURCE_EXHAUSTED`), `HTTP_503`, `UNREACHABLE`,
    /// `FINISH_ERROR` (the server ended the stream with an error), `INCOMPLETE` (the stream
    /// ended without a final message).
    pub code: String,
    /// What the server or the transport said, for the operator.
    pub message: String,
}

pub type Sample = Result<Completed, Failure>;

/// p50, p90, p99 and the mean of one measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Quantiles {
    /// Nearest-rank percentiles of `values` (sorted here); all zero when empty.
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Self {
            n: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCount {
    pub count: u64,
    /// The first message seen with this code.
    pub example: String,
}

/// The decode speed that a calibration predicts, shown beside the measurement.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    /// Where the calibration came from.
    pub source: String,
    /// Decode tokens per second of one stream when `concurrency` streams decode together.
    pub per_stream_tok_s: f64,
    /// `concurrency` times that.
    pub aggregate_tok_s: f64,
    /// Measured per-stream decode (mean) over the prediction.
    pub measured_over_predicted: f64,
}

/// How the run was set up, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub target: String,
    pub model: String,
    pub concurrency: u32,
    pub max_tokens: u32,
    /// The prompt length asked for (None with a prompt file).
    pub prompt_tokens_asked: Option<u32>,
    pub shared_prefix_tokens: u32,
    pub priority: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub setup: Setup,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// From the first request sent to the last one answered.
    pub wall_s: f64,
    pub completion_tokens: u64,
    /// Completion tokens of all completed requests over the wall time.
    pub aggregate_tok_s: f64,
    /// Each completed stream's decode rate: tokens after the first over the time from the first
    /// to the last.
    pub per_stream_decode_tok_s: Quantiles,
    pub ttft_ms: Quantiles,
    pub inter_token_ms: Quantiles,
    pub prompt_tokens_mean: f64,
    pub cached_prompt_tokens_mean: Option<f64>,
    pub errors: BTreeMap<String, ErrorCount>,
    pub prediction: Option<Prediction>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The decode rate of one stream, or None when it has fewer than two token arrivals.
fn decode_rate(c: &Completed) -> Option<f64> {
    let (first, rest) = c.arrivals.split_first()?;
    let last = rest.last()?;
    let span = (last.0 - first.0).as_secs_f64();
    let tokens: u32 = rest.iter().map(|a| a.1).sum();
    (span > 0.0 && tokens > 0).then(|| f64::from(tokens) / span)
}

/// Gaps between token arrivals of one stream, one value per token (a chunk of k tokens counts
/// its gap k times, divided by k).
fn inter_token(c: &Completed, out: &mut Vec<f64>) {
    for w in c.arrivals.windows(2) {
        let (prev, next) = (w[0].0, w[1].0);
        let k = w[1].1.max(1);
        let each = ms(next - prev) / f64::from(k);
        out.extend(std::iter::repeat_n(each, k as usize));
    }
}

pub fn summarize(setup: Setup, samples: &[Sample], wall: Duration) -> Summary {
    let mut errors: BTreeMap<String, ErrorCount> = BTreeMap::new();
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut decode = Vec::new();
    let mut completion = 0u64;
    let mut prompt = 0u64;
    let mut cached = (0u64, 0u64);
    let mut ok = 0u64;
    for s in samples {
        match s {
            Ok(c) => {
                ok += 1;
                completion += u64::from(c.completion_tokens);
                prompt += u64::from(c.prompt_tokens);
                if let Some(n) = c.cached_prompt_tokens {
                    cached.0 += u64::from(n);
                    cached.1 += 1;
                }
                if !c.arrivals.is_empty() {
                    ttft.push(ms(c.ttft));
                }
                inter_token(c, &mut itl);
                decode.extend(decode_rate(c));
            }
            Err(f) => {
                errors
                    .entry(f.code.clone())
                    .and_modify(|e| e.count += 1)
                    .or_insert_with(|| ErrorCount {
                        count: 1,
                        example: f.message.clone(),
                    });
            }
        }
    }
    let wall_s = wall.as_secs_f64();
    Summary {
        setup,
        sent: samples.len() as u64,
        ok,
        failed: samples.len() as u64 - ok,
        wall_s,
        completion_tokens: completion,
        aggregate_tok_s: if wall_s > 0.0 {
            completion as f64 / wall_s
        } else {
            0.0
        },
        per_stream_decode_tok_s: Quantiles::of(decode),
        ttft_ms: Quantiles::of(ttft),
        inter_token_ms: Quantiles::of(itl),
        prompt_tokens_mean: if ok > 0 {
            prompt as f64 / ok as f64
        } else {
            0.0
        },
        cached_prompt_tokens_mean: (cached.1 > 0).then(|| cached.0 as f64 / cached.1 as f64),
        errors,
        prediction: None,
    }
}

/// The report as an operator reads it.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let st = &s.setup;
    let prompt = match st.prompt_tokens_asked {
        Some(n) if st.shared_prefix_tokens > 0 => format!(
            "~{} tokens (shared prefix ~{} + distinct ~{n})",
            st.shared_prefix_tokens + n,
            st.shared_prefix_tokens
        ),
        Some(n) => format!("~{n} tokens, distinct"),
        None => "from file".to_owned(),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "target       {}  model {}", st.target, st.model);
    let _ = writeln!(
        out,
        "load         {} streams, prompt {prompt}, max_tokens {}, priority {}",
        st.concurrency, st.max_tokens, st.priority
    );
    let cached = s
        .cached_prompt_tokens_mean
        .map_or(String::new(), |c| format!(", {c:.0} of them cached"));
    let _ = writeln!(
        out,
        "requests     {} sent, {} ok, {} failed; prompt {:.0} tokens on average{cached}",
        s.sent, s.ok, s.failed, s.prompt_tokens_mean
    );
    let _ = writeln!(
        out,
        "throughput   {:.1} tok/s aggregate ({} tokens in {:.2} s)",
        s.aggregate_tok_s, s.completion_tokens, s.wall_s
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<26} {:>9} {:>9} {:>9} {:>9}",
        "", "mean", "p50", "p90", "p99"
    );
    let row = |out: &mut String, name: &str, q: &Quantiles| {
        if q.n == 0 {
            let _ = writeln!(out, "{name:<26} {:>9}", "-");
        } else {
            let _ = writeln!(
                out,
                "{name:<26} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                q.mean, q.p50, q.p90, q.p99
            );
        }
    };
    row(
        &mut out,
        "per-stream decode tok/s",
        &s.per_stream_decode_tok_s,
    );
    row(&mut out, "time to first token ms", &s.ttft_ms);
    row(&mut out, "inter-token latency ms", &s.inter_token_ms);
    if let Some(p) = &s.prediction {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "predicted    {:.1} tok/s per stream, {:.1} tok/s aggregate decode at {} streams ({})",
            p.per_stream_tok_s, p.aggregate_tok_s, st.concurrency, p.source
        );
        let _ = writeln!(
            out,
            "measured     {:.1} tok/s per stream (mean): {:.2}x the prediction",
            s.per_stream_decode_tok_s.mean, p.measured_over_predicted
        );
    }
    if !s.errors.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<24} {:>7}  FIRST MESSAGE", "ERROR", "COUNT");
        for (code, e) in &s.errors {
            let _ = writeln!(out, "{code:<24} {:>7}  {}", e.count, e.example);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            target: "unix:///x".into(),
            model: "m".into(),
            concurrency: 2,
            max_tokens: 4,
            prompt_tokens_asked: Some(16),
            shared_prefix_tokens: 0,
            priority: "default".into(),
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn quantiles_are_nearest_rank_and_ordered() {
        let q = Quantiles::of((1..=100).map(f64::from).collect());
        assert_eq!((q.p50, q.p90, q.p99, q.n), (50.0, 90.0, 99.0, 100));
        assert_eq!(q.mean, 50.5);
        let one = Quantiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Quantiles::of(vec![]), Quantiles::default());
    }

    #[test]
    fn a_summary_counts_tokens_rates_latencies_and_errors_by_code() {
        let ok = Completed {
            ttft: secs(0.1),
            // First token at 100 ms, then 3 more: one chunk of 1 at 200 ms, one of 2 at 400 ms.
            arrivals: vec![(secs(0.1), 1), (secs(0.2), 1), (secs(0.4), 2)],
            total: secs(0.4),
            prompt_tokens: 17,
            completion_tokens: 4,
            cached_prompt_tokens: Some(0),
        };
        let refused = Failure {
            code: "RESOURCE_EXHAUSTED".into(),
            message: "queue full".into(),
        };
        let samples = vec![Ok(ok.clone()), Ok(ok), Err(refused.clone()), Err(refused)];
        let s = summarize(setup(), &samples, secs(2.0));
        assert_eq!((s.sent, s.ok, s.failed), (4, 2, 2));
        assert_eq!(s.completion_tokens, 8);
        assert_eq!(s.aggregate_tok_s, 4.0);
        // 3 tokens after the first, in 300 ms.
        assert!((s.per_stream_decode_tok_s.p50 - 10.0).abs() < 1e-9);
        assert!((s.ttft_ms.p50 - 100.0).abs() < 1e-9);
        // Gaps per token: 100 ms, then 100 ms twice (200 ms for a chunk of 2).
        assert_eq!(s.inter_token_ms.n, 6);
        assert!((s.inter_token_ms.p99 - 100.0).abs() < 1e-9);
        assert_eq!(s.errors["RESOURCE_EXHAUSTED"].count, 2);
        assert_eq!(s.prompt_tokens_mean, 17.0);
        let text = table(&s);
        assert!(text.contains("RESOURCE_EXHAUSTED"), "{text}");
        assert!(text.contains("4.0 tok/s aggregate"), "{text}");
    }

    #[test]
    fn a_run_where_nothing_completed_reports_zeros_not_a_panic() {
        let samples = vec![Err(Failure {
            code: "UNREACHABLE".into(),
            message: "connection refused".into(),
        })];
        let s = summarize(setup(), &samples, secs(0.0));
        assert_eq!((s.ok, s.failed, s.aggregate_tok_s), (0, 1, 0.0));
        assert!(table(&s).contains("UNREACHABLE"));
    }
}
