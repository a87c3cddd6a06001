//! The alerting rules and the Grafana dashboard in packaging/monitoring/ name only metrics the
//! daemon exposes: every `appl_*` series their expressions use is in a scrape of a running
//! daemon (with a GPU to watch, so the GPU series are there too). `promtool check rules`
//! checks the rules' syntax in CI (scripts/test.sh).

use std::collections::BTreeSet;
use std::path::Path;

use crate::gpu_health::daemon_on_a_fake_gpu;
use crate::ops_common::wait_status;

fn monitoring(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/monitoring")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `appl_...` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("appl_") {
        let start = i + off;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// The `expr` strings anywhere in the dashboard's JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The rules' `expr:` lines (the rules file keeps each expression on one line).
fn rule_exprs(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// The series names a scrape exposes: every `# TYPE` name and every sample's name.
fn scraped(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.insert(name.to_owned());
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exposed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, _) = daemon_on_a_fake_gpu(dir.path());
    wait_status(&d, "a health sample", |s| s.gpus.len() == 1).await;
    let scrape = d.scrape();
    let have = scraped(&scrape);

    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring("appl-dashboard.json")).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let rules = rule_exprs(&monitoring("appl-alerts.yml"));
    assert!(exprs.len() >= 10, "the dashboard has its panels: {exprs:?}");
    assert!(rules.len() >= 5, "the rules have their alerts: {rules:?}");

    let mut named = BTreeSet::new();
    for e in exprs.iter().chain(&rules) {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{e:?} names no appl_ metric");
        named.extend(names);
    }
    let missing: Vec<_> = named.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or the rules but not exposed: {missing:?}\nscrape:\n{scrape}"
    );
    // What the people on call need is all there.
    for m in [
        "appl_tokens_generated_total",
        "appl_time_to_first_token_seconds_bucket",
        "appl_queue_depth",
        "appl_busy_slots",
        "appl_gpu_fault",
        "appl_gpu_temperature_celsius",
        "appl_audit_serving",
        "appl_model_serving",
    ] {
        assert!(
            named.contains(m),
            "{m} is not on the dashboard or in a rule"
        );
    }
    for alert in [
        "appl_audit_serving",
        "appl_model_serving",
        "appl_rejections_total",
        "appl_gpu_fault",
    ] {
        assert!(
            rules.iter().any(|r| r.contains(alert)),
            "no alert on {alert}"
        );
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        "sum(rate(appl_rejections_total{reason=\"queue_full\"}[5m])) / ignoring(x) appl_slots > 0",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["appl_rejections_total", "appl_slots"]
    );
    assert!(metric_names("rate(xappl_y[1m])").is_empty());
}
