//! The running-the-appliance part of `applctl status`: the models (serving, loading with
//! progress, draining, out of service after a GPU fault), each GPU's health with its faults
//! and warnings, host memory and appld's resident set, and the build.

use appl_firmware_profiles::units::human;
use appl_proto::v1 as pb;

/// Adds `models`, `gpus`, `host`, `build`, `activity` and the sample's time and errors to the
/// JSON status.
pub fn extend_json(v: &mut serde_json::Value, s: &pb::StatusResponse) {
    let models: Vec<_> = s
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "state": m.state, "phase": m.phase, "progress": m.progress,
                "bytes_loaded": m.bytes_loaded, "bytes_total": m.bytes_total,
                "bytes_hashed": m.bytes_hashed, "sha256": m.sha256, "gpus": m.gpus,
                "fault": m.fault, "in_flight": m.in_flight,
            })
        })
        .collect();
    let gpus: Vec<_> = s
        .gpus
        .iter()
        .map(|g| {
            serde_json::json!({
                "index": g.index, "uuid": g.uuid, "name": g.name, "vendor": g.vendor,
                "memory_used_bytes": g.memory_used_bytes,
                "memory_total_bytes": g.memory_total_bytes,
                "utilization_pct": g.utilization_pct, "temperature_c": g.temperature_c,
                "power_w": g.power_w, "power_limit_w": g.power_limit_w,
                "throttle": g.throttle, "ecc_corrected": g.ecc_corrected,
                "ecc_uncorrected": g.ecc_uncorrected, "faults": g.faults,
                "warnings": g.warnings, "models": g.models,
            })
        })
        .collect();
    let host = s.host.as_ref().map(|h| {
        serde_json::json!({
            "memory_total_bytes": h.memory_total_bytes,
            "memory_available_bytes": h.memory_available_bytes,
            "process_rss_bytes": h.process_rss_bytes,
        })
    });
    let build = s.build.as_ref().map(|b| {
        serde_json::json!({
            "version": b.version, "features": b.features, "cpu_variant": b.cpu_variant,
        })
    });
    if let Some(o) = v.as_object_mut() {
        o.insert("models".into(), models.into());
        o.insert("gpus".into(), gpus.into());
        o.insert("host".into(), host.into());
        o.insert("build".into(), build.into());
        o.insert("activity".into(), s.activity.clone().into());
        o.insert("health_sampled_at".into(), s.health_sampled_at.into());
        o.insert("health_errors".into(), s.health_errors.clone().into());
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}{unit}"))
}

/// The models, GPUs and host, as text.
pub fn print_text(s: &pb::StatusResponse) {
    if !s.activity.is_empty() {
        println!("in progress: {}", s.activity);
    }
    println!();
    println!(
        "{:<24} {:<10} {:>9} {:>9}  {:<16} SHA256",
        "MODEL", "STATE", "PROGRESS", "IN_FLIGHT", "GPUS"
    );
    for m in &s.models {
        let progress = if m.bytes_total > 0 {
            format!("{:.0}%", m.progress * 100.0)
        } else {
            "-".to_owned()
        };
        let gpus = if m.gpus.is_empty() {
            "host".to_owned()
        } else {
            m.gpus
                .iter()
                .map(|g| format!("GPU{g}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let state = if m.phase.is_empty() {
            m.state.clone()
        } else {
            format!("{}/{}", m.state, m.phase)
        };
        println!(
            "{:<24} {:<10} {:>9} {:>9}  {:<16} {}",
            m.id,
            state,
            progress,
            m.in_flight,
            gpus,
            m.sha256.get(..16).unwrap_or("-")
        );
        if !m.fault.is_empty() {
            println!("  out of service: {}", m.fault);
        }
    }
    if let Some(h) = &s.host {
        println!();
        println!(
            "host memory: {} available of {}; appld resident {}",
            human(h.memory_available_bytes),
            human(h.memory_total_bytes),
            human(h.process_rss_bytes)
        );
    }
    if !s.gpus.is_empty() {
        println!(
            "{:<5} {:<28} {:>19} {:>5} {:>6} {:>13} {:>11}  MODELS",
            "GPU", "NAME", "MEMORY", "UTIL", "TEMP", "POWER", "ECC(C/U)"
        );
        for g in &s.gpus {
            let ecc = match (g.ecc_corrected, g.ecc_uncorrected) {
                (None, None) => "-".to_owned(),
                (c, u) => format!(
                    "{}/{}",
                    c.map_or("-".into(), |v| v.to_string()),
                    u.map_or("-".into(), |v| v.to_string())
                ),
            };
            println!(
                "{:<5} {:<28} {:>19} {:>5} {:>6} {:>13} {:>11}  {}",
                g.index,
                g.name,
                format!(
                    "{} / {}",
                    human(g.memory_used_bytes),
                    human(g.memory_total_bytes)
                ),
                opt(g.utilization_pct, "%"),
                opt(g.temperature_c, "C"),
                format!("{} / {}", opt(g.power_w, "W"), opt(g.power_limit_w, "W")),
                ecc,
                g.models.join(",")
            );
            for f in &g.faults {
                println!("  FAULT: {f}");
            }
            for w in &g.warnings {
                println!("  warning: {w}");
            }
        }
    }
    for e in &s.health_errors {
        println!("health sample: {e}");
    }
}
