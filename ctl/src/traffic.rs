//! Traffic figures from audit records, one record at a time: what `applctl plan --from-audit`
//! reports. Only what records hold is read (times, token counts, status codes; never text).
//!
//! - Concurrency: an `admitted` record opens a request and its `completed` record closes it;
//!   records are in time order, so the most open at once is the peak. `daemon.start` closes
//!   whatever a crash left open.
//! - Refusals: completed with `RESOURCE_EXHAUSTED` (a full queue or a tenant limit). Refused
//!   and unavailable requests bill no tokens.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use appl_audit::Timestamp;
use appl_firmware_profiles::plan::{CostPlan, DAYS_PER_MONTH};
use serde::{Deserialize, Serialize};

/// `RESOURCE_EXHAUSTED` and `UNAVAILABLE`: refused before any work.
const REFUSED: u32 = 8;
const UNAVAILABLE: u32 = 14;

/// The fields of a record this needs (an export line carries more).
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub ts: String,
    pub action: String,
    pub phase: String,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub status: Option<u32>,
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub completion_tokens: Option<u32>,
}

/// Traffic figures built up one record at a time.
#[derive(Debug, Default)]
pub struct Traffic {
    first: Option<i64>,
    last: Option<i64>,
    open: HashSet<String>,
    peak: usize,
    requests: u64,
    refused: u64,
    failed: u64,
    prompt: u64,
    completion: u64,
    /// Tokens per UTC day (`YYYY-MM-DD`).
    days: BTreeMap<String, u64>,
    /// Generated tokens per UTC hour (`YYYY-MM-DDTHH`).
    hours: BTreeMap<String, u64>,
}

fn is_inference(action: &str) -> bool {
    matches!(action, "inference.generate" | "inference.chat")
}

impl Traffic {
    /// Takes the next record (records come in time order).
    pub fn add(&mut self, l: &Line) -> anyhow::Result<()> {
        if l.action == "daemon.start" {
            self.open.clear();
            return Ok(());
        }
        if !is_inference(&l.action) {
            return Ok(());
        }
        let ts = Timestamp::parse_rfc3339(&l.ts).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.first.get_or_insert(ts.unix_micros);
        self.last = Some(ts.unix_micros);
        let id = l.request_id.clone().unwrap_or_default();
        match l.phase.as_str() {
            "admitted" => {
                self.open.insert(id);
                self.peak = self.peak.max(self.open.len());
            }
            "completed" => {
                self.open.remove(&id);
                self.requests += 1;
                match l.status.unwrap_or(0) {
                    0 => {}
                    REFUSED => self.refused += 1,
                    _ => self.failed += 1,
                }
                if matches!(l.status, Some(REFUSED | UNAVAILABLE)) {
                    return Ok(());
                }
                let (p, c) = (
                    u64::from(l.prompt_tokens.unwrap_or(0)),
                    u64::from(l.completion_tokens.unwrap_or(0)),
                );
                self.prompt += p;
                self.completion += c;
                let text = ts.to_string();
                *self.days.entry(text[..10].to_owned()).or_default() += p + c;
                *self.hours.entry(text[..13].to_owned()).or_default() += c;
            }
            _ => {}
        }
        Ok(())
    }

    /// Parses and takes one export line (JSON Lines); blank lines are skipped.
    pub fn add_line(&mut self, line: &str) -> anyhow::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let l: Line = serde_json::from_str(line).context("an audit export line")?;
        self.add(&l)
    }
}

/// What a box can generate.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub tokens_per_second: f64,
    /// Where the figure comes from.
    pub source: String,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub from: Option<String>,
    pub to: Option<String>,
    /// UTC calendar days from the first record to the last, inclusive.
    pub days: u64,
    /// Inference requests completed (any outcome).
    pub requests: u64,
    /// Refused with RESOURCE_EXHAUSTED (queue full or a tenant limit).
    pub queue_refusals: u64,
    /// Ended with another error.
    pub failed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub requests_per_day: f64,
    pub tokens_per_day: f64,
    pub busiest_day: Option<(String, u64)>,
    /// Most requests in flight (queued or generating) at once.
    pub peak_concurrency: u64,
    /// Generated tokens per second over the busiest clock hour, and over the whole span.
    pub peak_hour: Option<(String, f64)>,
    pub mean_completion_tokens_per_second: f64,
    /// What the same tokens would cost on an API, USD.
    pub api_cost_per_day: f64,
    pub api_cost_per_month: f64,
    pub capacity: Option<Capacity>,
    /// Generated tokens per second against the capacity: over the span, and in the peak hour.
    pub utilization_mean: Option<f64>,
    pub utilization_peak_hour: Option<f64>,
    /// How many times the peak-hour traffic fits before the box is at its target utilisation:
    /// past this growth a second box is needed.
    pub headroom: Option<f64>,
    /// Months until then at the given growth.
    pub months_to_second_box: Option<f64>,
    /// The framework's cost question for this traffic, when a GPU cost was given.
    pub cost: Option<CostPlan>,
}

/// Prices and what the box can do.
#[derive(Debug, Clone, Copy)]
pub struct Pricing {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub target_utilization: f64,
    pub growth_pct_per_month: Option<f64>,
}

impl Traffic {
    /// The figures, with the API bill at `pricing` and utilisation against `capacity`.
    pub fn report(self, pricing: &Pricing, capacity: Option<Capacity>) -> TrafficReport {
        let ts = |us: i64| Timestamp { unix_micros: us }.to_string();
        let days = match (self.first, self.last) {
            (Some(a), Some(b)) => {
                let day = |us: i64| us.div_euclid(86_400_000_000);
                u64::try_from(day(b) - day(a) + 1).unwrap_or(1)
            }
            _ => 0,
        };
        let per_day = |n: u64| {
            if days == 0 {
                0.0
            } else {
                n as f64 / days as f64
            }
        };
        let api_day = (per_day(self.prompt) * pricing.input_per_mtok
            + per_day(self.completion) * pricing.output_per_mtok)
            / 1e6;
        let peak_hour = self
            .hours
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(h, n)| (format!("{h}:00Z"), *n as f64 / 3600.0));
        let mean_tps = if days == 0 {
            0.0
        } else {
            self.completion as f64 / (days as f64 * 86_400.0)
        };
        let cap = capacity.as_ref().map(|c| c.tokens_per_second);
        let peak_tps = peak_hour.as_ref().map(|(_, t)| *t);
        let headroom = match (cap, peak_tps) {
            (Some(c), Some(p)) if p > 0.0 => Some(c * pricing.target_utilization / p),
            _ => None,
        };
        let months = match (headroom, pricing.growth_pct_per_month) {
            (Some(h), Some(g)) if g > 0.0 => Some(if h <= 1.0 {
                0.0
            } else {
                h.ln() / (1.0 + g / 100.0).ln()
            }),
            _ => None,
        };
        TrafficReport {
            from: self.first.map(ts),
            to: self.last.map(ts),
            days,
            requests: self.requests,
            queue_refusals: self.refused,
            failed: self.failed,
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            requests_per_day: per_day(self.requests),
            tokens_per_day: per_day(self.prompt + self.completion),
            busiest_day: self.days.into_iter().max_by_key(|(_, n)| *n),
            peak_concurrency: self.peak as u64,
            peak_hour,
            mean_completion_tokens_per_second: mean_tps,
            api_cost_per_day: api_day,
            api_cost_per_month: api_day * DAYS_PER_MONTH,
            utilization_mean: cap.filter(|c| *c > 0.0).map(|c| mean_tps / c),
            utilization_peak_hour: cap
                .zip(peak_tps)
                .filter(|(c, _)| *c > 0.0)
                .map(|(c, p)| p / c),
            capacity,
            headroom,
            months_to_second_box: months,
            cost: None,
        }
    }
}

/// `--since`: an RFC 3339 time, or `N` followed by `d`, `h` or `m` back from now.
pub fn parse_since(s: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    if let Ok(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().with_context(|| {
        format!("--since {s:?}: use an RFC 3339 time or a span like 30d or 12h")
    })?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        _ => anyhow::bail!("--since {s:?}: a span ends in d, h or m"),
    };
    Ok(Timestamp::from_system(
        now.checked_sub(Duration::from_secs(secs))
            .unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, phase: &str, id: &str, status: u32, p: u32, c: u32) -> Line {
        Line {
            ts: ts.into(),
            action: "inference.generate".into(),
            phase: phase.into(),
            request_id: Some(id.into()),
            status: (phase == "completed").then_some(status),
            prompt_tokens: Some(p),
            completion_tokens: (phase == "completed").then_some(c),
        }
    }

    #[test]
    fn concurrency_refusals_and_tokens() {
        let mut t = Traffic::default();
        for l in [
            line("2026-01-01T10:00:00Z", "admitted", "a", 0, 10, 0),
            line("2026-01-01T10:00:01Z", "admitted", "b", 0, 20, 0),
            line("2026-01-01T10:00:02Z", "admitted", "c", 0, 5, 0),
            line("2026-01-01T10:00:02.5Z", "completed", "c", REFUSED, 5, 0),
            line("2026-01-01T10:00:03Z", "completed", "a", 0, 10, 100),
            line("2026-01-01T10:00:04Z", "completed", "b", 0, 20, 200),
            line("2026-01-02T09:00:00Z", "admitted", "d", 0, 30, 0),
            line("2026-01-02T09:00:05Z", "completed", "d", 0, 30, 250),
        ] {
            t.add(&l).expect("a record");
        }
        let pricing = Pricing {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            target_utilization: 0.5,
            growth_pct_per_month: Some(10.0),
        };
        let cap = Capacity {
            tokens_per_second: 1.0,
            source: "test".into(),
        };
        let r = t.report(&pricing, Some(cap));
        assert_eq!(r.days, 2);
        assert_eq!(r.requests, 4);
        assert_eq!(r.queue_refusals, 1);
        assert_eq!(r.peak_concurrency, 3);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (60, 550));
        assert!((r.tokens_per_day - 305.0).abs() < 1e-9);
        // (30 prompt x $1 + 275 generated x $2) per day / 1M.
        assert!((r.api_cost_per_day - 580e-6).abs() < 1e-12);
        let (hour, tps) = r.peak_hour.clone().expect("a peak hour");
        assert_eq!(hour, "2026-01-01T10:00Z");
        assert!((tps - 300.0 / 3600.0).abs() < 1e-12);
        // Capacity 1 tok/s at 50% target: 0.5 / (300/3600) = 6x headroom.
        assert!((r.headroom.expect("headroom") - 6.0).abs() < 1e-9);
        let months = r.months_to_second_box.expect("months");
        assert!((months - 6f64.ln() / 1.1f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn a_restart_closes_what_a_crash_left_open() {
        let mut t = Traffic::default();
        t.add(&line("2026-01-01T10:00:00Z", "admitted", "x", 0, 1, 0))
            .expect("record");
        t.add(&Line {
            ts: "2026-01-01T10:01:00Z".into(),
            action: "daemon.start".into(),
            phase: "event".into(),
            request_id: None,
            status: None,
            prompt_tokens: None,
            completion_tokens: None,
        })
        .expect("record");
        t.add(&line("2026-01-01T10:02:00Z", "admitted", "y", 0, 1, 0))
            .expect("record");
        assert_eq!(t.peak, 1);
    }

    #[test]
    fn since_takes_a_time_or_a_span() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86_400);
        assert_eq!(
            parse_since("2d", now).expect("span").unix_micros,
            8 * 86_400 * 1_000_000
        );
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", now)
                .expect("time")
                .unix_micros,
            86_400 * 1_000_000
        );
        assert!(parse_since("soon", now).is_err());
        assert!(parse_since("3w", now).is_err());
    }
}
