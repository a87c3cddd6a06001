//! `applctl plan --from-audit`: the framework's numbers from the traffic the audit log
//! recorded. It reads only what records hold (times, token counts, status codes; never text):
//! tokens and requests per day, peak concurrency, queue refusals, what the same traffic would
//! have cost on an API, this box's utilisation against its capacity, and the growth at which it
//! needs a second box.
//!
//! Records come through the running daemon (`Audit.Export`, itself audited) or from a stopped
//! daemon's store (`--store`), streamed line by line.
//!
//! - Concurrency: an `admitted` record opens a request and its `completed` record closes it;
//!   records are in time order, so the most open at once is the peak. `daemon.start` closes
//!   whatever a crash left open.
//! - Refusals: completed with `RESOURCE_EXHAUSTED` (a full queue or a tenant limit). Refused
//!   and unavailable requests bill no tokens.
//! - Capacity: measured (`--capacity`), else the sizing rules' decode estimate for the model
//!   with every slot busy ([`estimated_capacity`]).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use appl_audit::{ExportFilter, Format, StoreReader, Timestamp};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::plan::{cost_plan, CostInput, CostPlan, DAYS_PER_MONTH};
use appl_firmware_profiles::probe;
use appl_firmware_profiles::sizing::{self, GpuLayers, ModelSettings};
use appl_proto::v1 as pb;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::{status_error, ConnArgs};
use crate::plan::PlanArgs;

/// `RESOURCE_EXHAUSTED` and `UNAVAILABLE`: refused before any work.
const REFUSED: u32 = 8;
const UNAVAILABLE: u32 = 14;

/// Planning from recorded traffic.
#[derive(Debug, clap::Args)]
pub struct FromAuditArgs {
    /// Plan from the traffic in the audit log (token counts and times only).
    #[arg(long)]
    pub from_audit: bool,
    /// Only traffic at or after this: an RFC 3339 time, or a span back from now (30d, 12h).
    #[arg(long, value_name = "TIME|SPAN", requires = "from_audit")]
    pub since: Option<String>,
    /// A stopped daemon's audit store; without it, the records come through the daemon.
    #[arg(long, requires = "from_audit")]
    pub store: Option<PathBuf>,
    /// API price of generated tokens, USD per 1M (default: --api-price, for every token).
    #[arg(long, value_name = "USD", requires = "from_audit")]
    pub api_price_output: Option<f64>,
    /// This box's measured capacity, generated tokens per second with every slot busy.
    #[arg(long, value_name = "TOK/S", requires = "from_audit")]
    pub capacity: Option<f64>,
    /// The GGUF model whose sizing estimate gives the capacity; default: the daemon's
    /// default model.
    #[arg(long, value_name = "FILE", requires = "from_audit")]
    pub capacity_model: Option<PathBuf>,
    /// Slots for the capacity estimate (default: the daemon's setting, else 4).
    #[arg(long, value_name = "N", requires = "from_audit")]
    pub capacity_slots: Option<u32>,
    /// Context per slot for the capacity estimate (default: the daemon's, else 2048).
    #[arg(long, value_name = "N", requires = "from_audit")]
    pub capacity_ctx: Option<u32>,
    /// Estimate the capacity on a recorded inventory instead of this machine.
    #[arg(long, value_name = "FILE", requires = "from_audit")]
    pub capacity_inventory: Option<PathBuf>,
    /// Utilisation at which the box counts as full.
    #[arg(long, default_value_t = 0.8, requires = "from_audit")]
    pub target_utilization: f64,
    /// Expected traffic growth, percent per month: says when a second box is needed.
    #[arg(long, value_name = "PCT", requires = "from_audit")]
    pub growth: Option<f64>,
}

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

/// The sizing rules' decode estimate with every slot busy: what this box can generate.
pub fn estimated_capacity(
    model: &std::path::Path,
    slots: u32,
    ctx: u32,
    inventory: &Inventory,
) -> anyhow::Result<Capacity> {
    let info = GgufInfo::from_path(model)?;
    let dep = sizing::engine_deployment(&ModelSettings {
        slots,
        ctx_per_slot: ctx,
        batch_tokens: 512u32.max(slots),
    });
    let est = sizing::estimate(&info, &dep);
    let placement = sizing::fit(&est, inventory, GpuLayers::Auto)
        .map_err(|e| anyhow::anyhow!("{} does not fit: {}", model.display(), e.message))?;
    let speed = sizing::decode_speed(&est, &placement).ok_or_else(|| {
        anyhow::anyhow!("the sizing rules know no bandwidth for this machine's devices")
    })?;
    Ok(Capacity {
        tokens_per_second: speed.aggregate_tps_full,
        source: format!(
            "sizing estimate for {} ({slots} slots x {ctx} tokens, every slot decoding) on {}",
            model.display(),
            placement.summary()
        ),
    })
}

/// A measured capacity, when there is one. Today only `--capacity` gives it; the performance
/// issue's calibration (a measured tokens/s per model and box, kept by firmware-profiles) is
/// meant to plug in here, ahead of the sizing estimate.
fn measured_capacity(a: &FromAuditArgs) -> Option<Capacity> {
    a.capacity.map(|t| Capacity {
        tokens_per_second: t,
        source: "measured (--capacity)".to_owned(),
    })
}

/// Feeds an export stream's bytes to `Traffic`, line by line.
struct LineSink<'a> {
    traffic: &'a mut Traffic,
    partial: Vec<u8>,
    error: Option<anyhow::Error>,
}

impl Write for LineSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line);
            if let Err(e) = self.traffic.add_line(&text) {
                self.error.get_or_insert(e);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The daemon's default model: path, slots and context per slot.
async fn daemon_model(conn: &ConnArgs) -> Option<(PathBuf, u32, u32)> {
    let channel = conn.connect().await.ok()?;
    let mut c = pb::inference_client::InferenceClient::new(channel);
    let models = c
        .list_models(pb::ListModelsRequest {})
        .await
        .ok()?
        .into_inner()
        .models;
    let m = models.iter().find(|m| m.is_default).or(models.first())?;
    Some((PathBuf::from(&m.path), m.slots, m.ctx_per_slot))
}

/// Runs `applctl plan --from-audit`.
pub async fn run(conn: &ConnArgs, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let a = &args.audit;
    let from = a
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let mut traffic = Traffic::default();
    match &a.store {
        Some(dir) => {
            let reader = StoreReader::open(dir)
                .with_context(|| format!("opening audit store {}", dir.display()))?;
            let filter = ExportFilter {
                from,
                ..ExportFilter::default()
            };
            let mut sink = LineSink {
                traffic: &mut traffic,
                partial: Vec::new(),
                error: None,
            };
            appl_audit::export(&reader, &filter, Format::Jsonl, &mut sink, &mut |_| {})
                .context("reading the audit store")?;
            if let Some(e) = sink.error {
                return Err(e);
            }
        }
        None => {
            let channel = conn.connect().await?;
            let mut c = pb::audit_client::AuditClient::new(channel);
            let mut stream = c
                .export(pb::ExportRequest {
                    from: from.map(|t| t.to_string()).unwrap_or_default(),
                    format: "jsonl".into(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)
                .context("Audit.Export")?
                .into_inner();
            let mut sink = LineSink {
                traffic: &mut traffic,
                partial: Vec::new(),
                error: None,
            };
            while let Some(chunk) = stream.next().await {
                sink.write_all(&chunk.map_err(status_error)?.data)?;
            }
            if let Some(e) = sink.error {
                return Err(e);
            }
        }
    }
    let capacity = match measured_capacity(a) {
        Some(c) => Some(c),
        None => {
            let from_daemon = if a.capacity_model.is_none() && a.store.is_none() {
                daemon_model(conn).await
            } else {
                None
            };
            let model = a
                .capacity_model
                .clone()
                .or(from_daemon.as_ref().map(|m| m.0.clone()));
            match model {
                None => None,
                Some(path) => {
                    let slots = a
                        .capacity_slots
                        .or(from_daemon.as_ref().map(|m| m.1))
                        .unwrap_or(4);
                    let ctx = a
                        .capacity_ctx
                        .or(from_daemon.as_ref().map(|m| m.2))
                        .unwrap_or(2048);
                    let inv = match &a.capacity_inventory {
                        Some(p) => Inventory::from_path(p)?,
                        None => probe::probe_system()?,
                    };
                    match estimated_capacity(&path, slots, ctx, &inv) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("applctl: no capacity estimate: {e:#}");
                            None
                        }
                    }
                }
            }
        }
    };
    let pricing = Pricing {
        input_per_mtok: args.api_price,
        output_per_mtok: a.api_price_output.unwrap_or(args.api_price),
        target_utilization: a.target_utilization,
        growth_pct_per_month: a.growth,
    };
    let mut report = traffic.report(&pricing, capacity);
    if let Some(gpu_cost) = args.gpu_cost {
        let tokens_per_request = if report.requests == 0 {
            0
        } else {
            (report.prompt_tokens + report.completion_tokens) / report.requests
        };
        report.cost = cost_plan(CostInput {
            requests_per_day: report.requests_per_day.round() as u64,
            tokens_per_request,
            api_price_per_mtok: args.api_price,
            gpu_cost_per_month: gpu_cost,
            ops_cost_per_month: args.ops_cost,
            compliance_requires_on_prem: args.compliance,
        })
        .ok();
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    crate::check::write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The report as text.
pub fn render(r: &TrafficReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<26}{v}");
    };
    row(
        "traffic",
        match (&r.from, &r.to) {
            (Some(a), Some(b)) => format!("{a} to {b} ({} day(s))", r.days),
            _ => "no inference requests recorded in this span".to_owned(),
        },
    );
    row(
        "requests",
        format!(
            "{} ({:.0}/day); {} refused (queue full or tenant limit), {} failed",
            r.requests, r.requests_per_day, r.queue_refusals, r.failed
        ),
    );
    row(
        "tokens",
        format!(
            "{} prompt + {} generated = {:.0}/day",
            r.prompt_tokens, r.completion_tokens, r.tokens_per_day
        ),
    );
    if let Some((d, n)) = &r.busiest_day {
        row("busiest day", format!("{d}: {n} tokens"));
    }
    row(
        "peak concurrency",
        format!("{} requests in flight", r.peak_concurrency),
    );
    if let Some((h, t)) = &r.peak_hour {
        row("peak hour", format!("{h}: {t:.2} generated tokens/s"));
    }
    row(
        "API bill for this traffic",
        format!(
            "${:.2}/day, ${:.0}/month",
            r.api_cost_per_day, r.api_cost_per_month
        ),
    );
    match &r.capacity {
        Some(c) => {
            row(
                "capacity",
                format!(
                    "{:.1} generated tokens/s ({})",
                    c.tokens_per_second, c.source
                ),
            );
            if let (Some(m), Some(p)) = (r.utilization_mean, r.utilization_peak_hour) {
                row(
                    "utilisation",
                    format!(
                        "{:.1}% on average, {:.1}% in the peak hour",
                        m * 100.0,
                        p * 100.0
                    ),
                );
            }
            if let Some(h) = r.headroom {
                let when = match r.months_to_second_box {
                    Some(m) => format!("; at the given growth, in {m:.1} months"),
                    None => String::new(),
                };
                row(
                    "second box",
                    if h <= 1.0 {
                        format!("needed now: the peak hour is past the target utilisation{when}")
                    } else {
                        format!(
                            "needed once traffic grows {h:.1}x (+{:.0}%){when}",
                            (h - 1.0) * 100.0
                        )
                    },
                );
            }
        }
        None => row(
            "capacity",
            "unknown: pass --capacity TOK/S (measured) or --capacity-model FILE".to_owned(),
        ),
    }
    if let Some(c) = &r.cost {
        out.push('\n');
        out.push_str(&c.render_table());
    }
    out
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
