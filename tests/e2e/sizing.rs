//! The sizing rules at model load: the predicted memory matches what llama.cpp allocates, and a
//! model that does not fit is refused with the numbers before it is loaded.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config_text, model_path, run_appld, Opts, APPLD};

/// Starts appld with llama.cpp's own log on, waits for "ready", and returns every log line.
fn startup_log(o: &Opts) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("appld.toml");
    std::fs::write(&cfg, config_text(dir.path(), o)).expect("write config");
    let mut child = Command::new(APPLD)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info,llama.cpp=info,ggml=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn appld");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let ready = v["message"] == "ready";
        lines.push(v);
        if ready || started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|v| v["message"] == "ready"),
        "appld did not become ready: {lines:#?}"
    );
    lines
}

/// The sum of every "<what> buffer size = X MiB" llama.cpp logged.
fn llama_buffer_mib(lines: &[serde_json::Value], what: &str) -> f64 {
    let needle = format!("{what} buffer size");
    lines
        .iter()
        .filter_map(|v| v["message"].as_str())
        .filter(|m| m.contains(&needle))
        .filter_map(|m| {
            let after = m.split('=').nth(1)?;
            after
                .trim()
                .trim_end_matches("MiB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .sum()
}

fn plan_mib(lines: &[serde_json::Value], field: &str) -> f64 {
    let plan = lines
        .iter()
        .find(|v| v["message"] == "memory plan")
        .expect("appld logs its memory plan");
    plan[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {plan}"))
}

#[test]
fn predicted_memory_is_within_ten_percent_of_what_llama_cpp_allocates() {
    for (ctx, slots) in [(2048, 1), (2048, 8), (8192, 1), (8192, 8)] {
        let lines = startup_log(&Opts {
            slots,
            ctx_per_slot: ctx,
            ..Opts::default()
        });
        let actual_weights = llama_buffer_mib(&lines, "model");
        let actual_kv = llama_buffer_mib(&lines, "KV");
        let actual_compute = llama_buffer_mib(&lines, "compute");
        let actual_output = llama_buffer_mib(&lines, "output");
        assert!(
            actual_weights > 0.0 && actual_kv > 0.0 && actual_compute > 0.0,
            "llama.cpp reported its buffers (ctx {ctx}, slots {slots})"
        );
        let actual = actual_weights + actual_kv + actual_compute + actual_output;
        let predicted = plan_mib(&lines, "total_mib");
        let err = (predicted - actual) / actual;
        eprintln!(
            "ctx {ctx} x {slots}: predicted {predicted:.1} MiB (weights {:.1}, kv {:.1}, compute {:.1}); \
             llama.cpp {actual:.1} MiB (weights {actual_weights:.1}, kv {actual_kv:.1}, compute {actual_compute:.1}, output {actual_output:.1}); error {:+.1}%",
            plan_mib(&lines, "weights_mib"),
            plan_mib(&lines, "kv_mib"),
            plan_mib(&lines, "compute_mib"),
            err * 100.0
        );
        assert!(
            err.abs() <= 0.10,
            "ctx {ctx} x {slots}: predicted {predicted:.1} MiB, llama.cpp allocated {actual:.1} MiB ({:+.1}%)",
            err * 100.0
        );
        // The KV cache is the part that scales with ctx x slots; it must be right on its own.
        let kv_err = (plan_mib(&lines, "kv_mib") - actual_kv) / actual_kv;
        assert!(
            kv_err.abs() <= 0.10,
            "ctx {ctx} x {slots}: KV off by {:+.1}%",
            kv_err * 100.0
        );
    }
}

#[test]
fn a_model_that_does_not_fit_is_refused_with_the_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // This machine as recorded, but with only 64 MiB of RAM available.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/inventories/cpu-only.json");
    let mut inv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).expect("read fixture"))
            .expect("fixture is JSON");
    inv["memory"]["available_bytes"] = serde_json::json!(64u64 << 20);
    let inv_path = dir.path().join("small.json");
    std::fs::write(&inv_path, inv.to_string()).expect("write inventory");

    let o = Opts {
        model_path: model_path(),
        ..Opts::default()
    };
    let cfg = dir.path().join("appld.toml");
    let text = format!(
        "{}\n[sizing]\ninventory = \"{}\"\n",
        config_text(dir.path(), &o),
        inv_path.display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let (code, stderr) = run_appld(&["--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("does not fit"), "{stderr}");
    assert!(stderr.contains("needs"), "{stderr}");
    assert!(stderr.contains("free"), "{stderr}");
    // Refused before llama.cpp loaded anything.
    assert!(!stderr.contains("model loaded"), "{stderr}");
}
