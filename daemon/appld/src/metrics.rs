//! Prometheus metrics over plain HTTP on `server.metrics_listen` (and, if the operator wants,
//! on the OpenAI-compatible listener): `GET /metrics` answers the text exposition format,
//! anything else 404. The same HTTP stack as the APIs (axum routes on our hyper loop). Reads
//! only counters; never request text.

use std::fmt::Write as _;
use std::sync::Arc;

use appl_engine::HistogramSnapshot;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::StatusCode;

use crate::audit::Auditor;
use crate::state::AppState;

/// The metrics routes: `GET /metrics` (and `GET /`) answer the exposition text; anything else
/// 404. Served by the daemon's own HTTP loop (`transport.rs`) on `server.metrics_listen`, and
/// on the OpenAI-compatible listener when `openai.metrics` is set.
pub fn router(state: Arc<AppState>, audit: Arc<Auditor>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(CONTENT_TYPE, TEXT)],
                "not found; scrape /metrics\n",
            )
        })
        .with_state((state, audit))
}

/// `GET /metrics` alone, to merge into the OpenAI-compatible API's routes
/// (`openai.metrics = true`).
pub fn router_on_api(state: Arc<AppState>, audit: Arc<Auditor>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state((state, audit))
}

/// The Prometheus text format's content type.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn scrape(State((state, audit)): State<(Arc<AppState>, Arc<Auditor>)>) -> impl IntoResponse {
    ([(CONTENT_TYPE, TEXT)], render(&state, &audit))
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (b, c) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Label values are ids from the config (validated ASCII), but escape anyway.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text for the whole daemon.
pub fn render(state: &AppState, audit: &Auditor) -> String {
    let mut out = String::with_capacity(16384);
    let models = state.models.snapshot();
    let snaps: Vec<_> = models
        .values()
        .map(|m| {
            let e = &m.engine;
            (
                format!("model=\"{}\"", esc(&e.spec().id)),
                e.spec().slots(),
                e.stats(),
            )
        })
        .collect();
    type Field = fn(&appl_engine::StatsSnapshot) -> u64;
    let gauges: [(&str, &str, Field); 3] = [
        ("appl_busy_slots", "Slots holding a request.", |s| {
            u64::from(s.busy_slots)
        }),
        (
            "appl_paused_sequences",
            "Batch sequences paused for interactive work.",
            |s| u64::from(s.paused),
        ),
        (
            "appl_queued_requests",
            "Requests accepted and waiting for a slot.",
            |s| u64::from(s.queued),
        ),
    ];
    for (name, help, f) in gauges {
        header(&mut out, name, "gauge", help);
        for (l, _, s) in &snaps {
            let _ = writeln!(out, "{name}{{{l}}} {}", f(s));
        }
    }
    header(
        &mut out,
        "appl_slots",
        "gauge",
        "Sequence slots of the engine.",
    );
    for (l, slots, _) in &snaps {
        let _ = writeln!(out, "appl_slots{{{l}}} {slots}");
    }
    header(
        &mut out,
        "appl_queue_depth",
        "gauge",
        "Requests waiting in the engine's queue, by class.",
    );
    for (l, _, s) in &snaps {
        let _ = writeln!(
            out,
            "appl_queue_depth{{{l},class=\"interactive\"}} {}",
            s.queued_interactive
        );
        let _ = writeln!(
            out,
            "appl_queue_depth{{{l},class=\"batch\"}} {}",
            s.queued_batch
        );
    }
    let counters: [(&str, &str, Field); 7] = [
        ("appl_tokens_generated_total", "Tokens generated.", |s| {
            s.tokens_generated
        }),
        (
            "appl_tokens_prefilled_total",
            "Prompt tokens prefilled.",
            |s| s.tokens_prefilled,
        ),
        (
            "appl_tokens_prefix_reused_total",
            "Prompt tokens served from a cached prefix instead of prefilled.",
            |s| s.tokens_prefix_reused,
        ),
        (
            "appl_preemptions_total",
            "Batch sequences paused for interactive work.",
            |s| s.preemptions,
        ),
        (
            "appl_engine_steps_total",
            "Engine steps (llama_decode calls).",
            |s| s.steps,
        ),
        (
            "appl_requests_completed_total",
            "Requests ended, for any reason.",
            |s| s.requests_completed,
        ),
        (
            "appl_queue_expired_total",
            "Requests whose deadline passed while they waited.",
            |s| s.expired_in_queue,
        ),
    ];
    for (name, help, f) in counters {
        header(&mut out, name, "counter", help);
        for (l, _, s) in &snaps {
            let _ = writeln!(out, "{name}{{{l}}} {}", f(s));
        }
    }
    header(
        &mut out,
        "appl_rejections_total",
        "counter",
        "Requests refused with RESOURCE_EXHAUSTED, by reason.",
    );
    for (l, _, s) in &snaps {
        let _ = writeln!(
            out,
            "appl_rejections_total{{{l},reason=\"queue_full\"}} {}",
            s.rejected_queue_full
        );
    }
    header(
        &mut out,
        "appl_tenant_rejections_total",
        "counter",
        "Requests refused with RESOURCE_EXHAUSTED by a tenant limit, by limit.",
    );
    let tenants = state.tenants();
    let (conc, rate) = tenants.rejections();
    let _ = writeln!(
        out,
        "appl_tenant_rejections_total{{reason=\"tenant_max_concurrent\"}} {conc}"
    );
    let _ = writeln!(
        out,
        "appl_tenant_rejections_total{{reason=\"tenant_tokens_per_minute\"}} {rate}"
    );
    type HistField = fn(&appl_engine::StatsSnapshot) -> &HistogramSnapshot;
    let hists: [(&str, &str, HistField); 3] = [
        (
            "appl_time_to_first_token_seconds",
            "From receipt to the first generated token.",
            |s| &s.ttft,
        ),
        (
            "appl_inter_token_seconds",
            "Between consecutive tokens of one request.",
            |s| &s.inter_token,
        ),
        (
            "appl_batch_sequences",
            "Sequences carried by one engine step.",
            |s| &s.batch_sequences,
        ),
    ];
    for (name, help, f) in hists {
        header(&mut out, name, "histogram", help);
        for (l, _, s) in &snaps {
            histogram(&mut out, name, l, f(s));
        }
    }
    header(
        &mut out,
        "appl_tenant_in_flight",
        "gauge",
        "Requests of a tenant queued or running.",
    );
    for (i, p) in tenants.policies().iter().enumerate() {
        let id = appl_engine::TenantId(i as u32);
        let _ = writeln!(
            out,
            "appl_tenant_in_flight{{tenant=\"{}\"}} {}",
            esc(&p.name),
            tenants.in_flight(id)
        );
    }
    crate::health::metrics::render(&mut out, state, &audit.status());
    out
}
