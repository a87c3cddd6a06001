//! The Prometheus series of running the appliance: each GPU's health, host memory and the
//! daemon's resident set, the sampler itself, each model's state and operations, and the audit
//! log's state. Names and labels are stable (README "Metrics"); alerting rules and the dashboard
//! in `packaging/monitoring/` use them. A series whose reading the driver does not offer is left
//! out for that GPU rather than reported as 0.

use std::fmt;
use std::sync::atomic::Ordering;

use appl_firmware_profiles::health::Throttle;

use crate::audit::AuditStatus;
use crate::metrics::{Families, Labels};
use crate::state::AppState;

fn gauge(
    out: &mut Families<'_, '_>,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> fmt::Result {
    out.gauge(name, help, rows)
}

fn counter(
    out: &mut Families<'_, '_>,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> fmt::Result {
    out.counter(name, help, rows)
}

fn single(out: &mut Families<'_, '_>, name: &str, kind: &str, help: &str, v: f64) -> fmt::Result {
    let rows = [(Labels::new(), v)];
    if kind == "counter" {
        out.counter(name, help, &rows)
    } else {
        out.gauge(name, help, &rows)
    }
}

/// Appends the health, model and audit series to `out`.
pub(crate) fn render(
    out: &mut Families<'_, '_>,
    state: &AppState,
    audit: &AuditStatus,
) -> fmt::Result {
    let h = state.health.latest();
    let latched = state.health.latched_all();
    let gpu = |i: u32| -> Labels { vec![("gpu", i.to_string())] };
    let per_gpu = |f: &dyn Fn(&appl_firmware_profiles::health::GpuHealth) -> Option<f64>| {
        h.gpus
            .iter()
            .filter_map(|g| Some((gpu(g.index), f(g)?)))
            .collect::<Vec<_>>()
    };
    let info: Vec<(Labels, f64)> = h
        .gpus
        .iter()
        .map(|g| {
            let vendor = match g.vendor {
                appl_firmware_profiles::inventory::GpuVendor::Nvidia => "nvidia",
                appl_firmware_profiles::inventory::GpuVendor::Amd => "amd",
            };
            let labels = vec![
                ("gpu", g.index.to_string()),
                ("name", g.name.clone()),
                ("uuid", g.uuid.clone().unwrap_or_default()),
                ("vendor", vendor.to_owned()),
            ];
            (labels, 1.0)
        })
        .collect();
    gauge(
        out,
        "appl_gpu_info",
        "A GPU appld watches (always 1), with its name.",
        &info,
    )?;
    gauge(
        out,
        "appl_gpu_memory_used_bytes",
        "GPU memory in use (every process).",
        &per_gpu(&|g| Some(g.memory_used_bytes as f64)),
    )?;
    gauge(
        out,
        "appl_gpu_memory_total_bytes",
        "GPU memory in all.",
        &per_gpu(&|g| Some(g.memory_total_bytes as f64)),
    )?;
    gauge(
        out,
        "appl_gpu_utilization_ratio",
        "Share of the last sample period in which a kernel ran (0-1).",
        &per_gpu(&|g| g.utilization_pct.map(|p| p / 100.0)),
    )?;
    gauge(
        out,
        "appl_gpu_temperature_celsius",
        "GPU temperature.",
        &per_gpu(&|g| g.temperature_c),
    )?;
    gauge(
        out,
        "appl_gpu_power_watts",
        "GPU power draw.",
        &per_gpu(&|g| g.power_w),
    )?;
    gauge(
        out,
        "appl_gpu_power_limit_watts",
        "GPU enforced power limit.",
        &per_gpu(&|g| g.power_limit_w),
    )?;
    let throttled: Vec<(Labels, f64)> = h
        .gpus
        .iter()
        .flat_map(|g| {
            Throttle::ALL.iter().map(move |t| {
                (
                    vec![
                        ("gpu", g.index.to_string()),
                        ("reason", t.as_str().to_owned()),
                    ],
                    if g.throttle.contains(t) { 1.0 } else { 0.0 },
                )
            })
        })
        .collect();
    gauge(
        out,
        "appl_gpu_throttled",
        "1 while the GPU's clocks are held down for this reason (a warning, not a fault).",
        &throttled,
    )?;
    let ecc: Vec<(Labels, f64)> = h
        .gpus
        .iter()
        .flat_map(|g| {
            [
                ("corrected", g.ecc_corrected),
                ("uncorrected", g.ecc_uncorrected),
            ]
            .into_iter()
            .filter_map(move |(t, v)| {
                let labels = vec![("gpu", g.index.to_string()), ("type", t.to_owned())];
                Some((labels, v? as f64))
            })
        })
        .collect();
    counter(
        out,
        "appl_gpu_ecc_errors_total",
        "ECC errors since the GPU driver loaded, by type.",
        &ecc,
    )?;
    let xids: Vec<(Labels, f64)> = state
        .health
        .xid_counts()
        .iter()
        .map(|((g, x), n)| {
            let labels = vec![("gpu", g.to_string()), ("xid", x.to_string())];
            (labels, *n as f64)
        })
        .collect();
    counter(
        out,
        "appl_gpu_xid_events_total",
        "Critical XID events since appld started, by XID.",
        &xids,
    )?;
    let mut faulted: Vec<(Labels, f64)> = h
        .gpus
        .iter()
        .map(|g| {
            let f = latched.contains_key(&g.index);
            (gpu(g.index), if f { 1.0 } else { 0.0 })
        })
        .collect();
    for i in latched.keys() {
        if !h.gpus.iter().any(|g| g.index == *i) {
            faulted.push((gpu(*i), 1.0));
        }
    }
    gauge(
        out,
        "appl_gpu_fault",
        "1 once the GPU has had a fault (uncorrectable ECC, fatal XID) since appld started.",
        &faulted,
    )?;
    single(
        out,
        "appl_host_memory_total_bytes",
        "gauge",
        "Host memory in all.",
        h.host.memory_total_bytes as f64,
    )?;
    single(
        out,
        "appl_host_memory_available_bytes",
        "gauge",
        "Host memory available (MemAvailable).",
        h.host.memory_available_bytes as f64,
    )?;
    single(
        out,
        "appl_process_resident_bytes",
        "gauge",
        "appld's resident set.",
        h.host.process_rss_bytes.unwrap_or(0) as f64,
    )?;
    let hs = &state.health;
    single(
        out,
        "appl_health_samples_total",
        "counter",
        "Health samples taken.",
        hs.samples.load(Ordering::Relaxed) as f64,
    )?;
    single(
        out,
        "appl_health_sample_errors_total",
        "counter",
        "Health samples in which a source or reading failed.",
        hs.sample_errors.load(Ordering::Relaxed) as f64,
    )?;
    single(
        out,
        "appl_health_sample_duration_seconds",
        "gauge",
        "How long the last health sample took.",
        h.took.as_secs_f64(),
    )?;
    single(
        out,
        "appl_health_last_sample_timestamp_seconds",
        "gauge",
        "When the last health sample was taken (Unix time).",
        h.taken
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64()),
    )?;
    render_models(out, state)?;
    single(
        out,
        "appl_audit_serving",
        "gauge",
        "1 while the audit log writes; 0 while it has failed closed (inference is refused).",
        if audit.state == "serving" { 1.0 } else { 0.0 },
    )?;
    single(
        out,
        "appl_audit_records",
        "gauge",
        "Records in the audit log.",
        audit.records as f64,
    )
}

fn render_models(out: &mut Families<'_, '_>, state: &AppState) -> fmt::Result {
    let models = state.models.snapshot();
    let activity = state.models.activity();
    let model = |id: &str| -> Labels { vec![("model", id.to_owned())] };
    let mut serving: Vec<(Labels, f64)> = models
        .iter()
        .map(|(id, m)| (model(id), if m.fault().is_some() { 0.0 } else { 1.0 }))
        .collect();
    // A model being loaded, unloaded or replaced and not in service is not serving.
    for id in activity.keys() {
        if !models.contains_key(id) {
            serving.push((model(id), 0.0));
        }
    }
    gauge(
        out,
        "appl_model_serving",
        "1 while the model serves; 0 while it loads, drains or is out of service after a GPU fault.",
        &serving,
    )?;
    let in_flight: Vec<(Labels, f64)> = models
        .iter()
        .map(|(id, m)| (model(id), f64::from(m.in_flight())))
        .collect();
    gauge(
        out,
        "appl_model_in_flight",
        "Requests holding the model (queued or generating).",
        &in_flight,
    )?;
    let progress: Vec<(Labels, f64)> = activity
        .iter()
        .map(|(id, a)| {
            let mut labels = model(id);
            labels.push(("op", a.op.as_str().to_owned()));
            (labels, a.progress.fraction())
        })
        .collect();
    gauge(
        out,
        "appl_model_load_progress_ratio",
        "Share of the model's tensor data read, while it loads (0-1).",
        &progress,
    )?;
    let c = &state.models.counters;
    counter(
        out,
        "appl_model_loads_total",
        "Model loads (at start and at run time), by result.",
        &[
            (
                vec![("result", "ok".to_owned())],
                c.loads.load(Ordering::Relaxed) as f64,
            ),
            (
                vec![("result", "failed".to_owned())],
                c.failed_loads.load(Ordering::Relaxed) as f64,
            ),
        ],
    )?;
    counter(
        out,
        "appl_model_unloads_total",
        "Models unloaded or replaced at run time.",
        &[(Labels::new(), c.unloads.load(Ordering::Relaxed) as f64)],
    )
}
