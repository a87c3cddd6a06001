//! `applctl plan --from-audit`: the framework's numbers from the traffic the audit log
//! recorded. It reads only what records hold (times, token counts, status codes; never text):
//! tokens and requests per day, peak concurrency, queue refusals, what the same traffic would
//! have cost on an API, this box's utilisation against its capacity, and the growth at which it
//! needs a second box.
//!
//! Records come through the running daemon (`Audit.Export`, itself audited) or from a stopped
//! daemon's store (`--store`), streamed line by line into `traffic.rs`, which computes the
//! figures.
//!
//! - Capacity: measured (`--capacity`), else the sizing rules' decode estimate for the model
//!   with every slot busy ([`estimated_capacity`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use appl_audit::{ExportFilter, Format, StoreReader};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::plan::{cost_plan, CostInput};
use appl_firmware_profiles::probe;
use appl_firmware_profiles::sizing::{self, GpuLayers, ModelSettings};
use appl_proto::v1 as pb;
use futures::StreamExt;

use crate::client::{status_error, ConnArgs};
use crate::plan::PlanArgs;
use crate::traffic::{parse_since, Capacity, Pricing, Traffic, TrafficReport};

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
    /// A calibration saved by `applctl check --measure` (decode steps timed on this box): the
    /// capacity is its predicted aggregate with every slot busy.
    #[arg(
        long,
        value_name = "FILE",
        requires = "from_audit",
        conflicts_with = "capacity"
    )]
    pub calibration: Option<PathBuf>,
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

/// A measured capacity, when there is one: `--capacity`, or the aggregate a calibration
/// (`applctl check --measure`) predicts with every slot busy. Either comes ahead of the sizing
/// estimate.
fn measured_capacity(a: &FromAuditArgs) -> anyhow::Result<Option<Capacity>> {
    if let Some(t) = a.capacity {
        return Ok(Some(Capacity {
            tokens_per_second: t,
            source: "measured (--capacity)".to_owned(),
        }));
    }
    let Some(path) = &a.calibration else {
        return Ok(None);
    };
    let cal = crate::measure::load(path)?;
    let p = cal
        .predict(cal.slots)
        .with_context(|| format!("{} gives no prediction", path.display()))?;
    Ok(Some(Capacity {
        tokens_per_second: p.aggregate_tok_s,
        source: format!(
            "calibrated ({}: {} slots, {} threads)",
            path.display(),
            cal.slots,
            cal.threads
        ),
    }))
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
    let capacity = match measured_capacity(a)? {
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
        let tokens_per_request = (report.prompt_tokens + report.completion_tokens)
            .checked_div(report.requests)
            .unwrap_or(0);
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
    use appl_firmware_profiles::calibration::{Calibration, CalibrationPoint};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: FromAuditArgs,
    }

    fn args(extra: &[&str]) -> FromAuditArgs {
        let mut argv = vec!["applctl", "--from-audit"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).a
    }

    #[test]
    fn the_capacity_comes_from_the_flag_or_the_calibration_ahead_of_the_estimate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cal.json");
        // 25 ms for one stream, 80 ms for 8: 100 tok/s with the 8 slots busy.
        let cal = Calibration {
            model: "m.gguf".into(),
            model_bytes: 1,
            threads: 2,
            slots: 8,
            ctx_per_slot: 2048,
            context: 48,
            cpu: "cpu".into(),
            load_avg_1m: None,
            points: [(1, 25.0), (8, 80.0)]
                .map(|(batch, step_ms)| CalibrationPoint { batch, step_ms })
                .to_vec(),
        };
        std::fs::write(&path, serde_json::to_string(&cal).unwrap()).unwrap();

        let c = measured_capacity(&args(&["--calibration", path.to_str().unwrap()]))
            .unwrap()
            .expect("a calibrated capacity");
        assert!((c.tokens_per_second - 100.0).abs() < 1e-9, "{c:?}");
        assert!(c.source.starts_with("calibrated ("), "{}", c.source);

        let c = measured_capacity(&args(&["--capacity", "42"]))
            .unwrap()
            .expect("the flag");
        assert_eq!(c.tokens_per_second, 42.0);
        assert!(measured_capacity(&args(&[])).unwrap().is_none());

        std::fs::write(&path, "not json").unwrap();
        let e = measured_capacity(&args(&["--calibration", path.to_str().unwrap()]))
            .expect_err("a file that is not a calibration");
        assert!(format!("{e:#}").contains("is not a calibration"), "{e:#}");
    }
}
