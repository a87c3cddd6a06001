//! Prometheus metrics over plain HTTP on `server.metrics_listen` (and, if the operator wants,
//! on the OpenAI-compatible listener): `GET /metrics` answers the text exposition format,
//! anything else 404. The same HTTP stack as the APIs (axum routes on our hyper loop). Reads
//! only counters; never request text.

use std::fmt;
use std::sync::Arc;

use appl_engine::HistogramSnapshot;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
const TEXT: &str = prometheus_text::CONTENT_TYPE;

async fn scrape(State((state, audit)): State<(Arc<AppState>, Arc<Auditor>)>) -> impl IntoResponse {
    ([(CONTENT_TYPE, TEXT)], render(&state, &audit))
}

/// A series' labels, as name and value.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Writes metric families through prometheus-client's Prometheus text encoder (version
/// 0.0.4): the library escapes label values and help text, names counters `<name>_total` and
/// lays out histogram buckets.
pub(crate) struct Families<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
}

impl Families<'_, '_> {
    /// A gauge family.
    pub fn gauge<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, V)],
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
        Ok(())
    }

    /// A counter family; `name` ends in `_total`, as it is exposed.
    pub fn counter<V: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, V)],
    ) -> fmt::Result {
        // The encoder appends `_total` itself.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let mut m = self
            .enc
            .encode_descriptor(base, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, V, f64>(v, None)?;
        }
        Ok(())
    }

    /// A histogram family from the engine's cumulative snapshots.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, &HistogramSnapshot)],
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            // The encoder takes per-bucket counts and accumulates them.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .zip(&h.cumulative)
                .map(|(b, c)| {
                    let n = c.saturating_sub(below);
                    below = *c;
                    (*b, n)
                })
                .collect();
            m.encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Everything the daemon exposes, encoded at each scrape from the live state.
#[derive(Debug)]
struct Snapshot {
    state: Arc<AppState>,
    audit: Arc<Auditor>,
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let mut f = Families { enc: &mut enc };
        engine_families(&mut f, &self.state)?;
        certificate_families(&mut f, &self.state)?;
        crate::health::metrics::render(&mut f, &self.state, &self.audit.status())
    }
}

/// The exposition text for the whole daemon.
pub fn render(state: &Arc<AppState>, audit: &Arc<Auditor>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        state: Arc::clone(state),
        audit: Arc::clone(audit),
    }));
    let mut out = String::with_capacity(16384);
    // Writing into a String cannot fail; a collector's own error would leave the text short.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(target: "api", error = %e, "encoding the metrics failed");
    }
    out
}

/// When each TLS certificate the daemon serves with or trusts stops being valid (the same
/// certificates `applctl status` warns about within 30 days).
fn certificate_families(f: &mut Families<'_, '_>, state: &AppState) -> fmt::Result {
    let transport = state.transport.get();
    let rows: Vec<(Labels, f64)> = transport
        .certificates
        .iter()
        .map(|c| {
            let at = c
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            (
                vec![("role", c.role.to_owned()), ("subject", c.subject.clone())],
                at,
            )
        })
        .collect();
    f.gauge(
        "appl_tls_certificate_expiry_timestamp_seconds",
        "When a TLS certificate appld serves with (role server) or trusts (role client_ca) expires, Unix seconds.",
        &rows,
    )
}

fn engine_families(f: &mut Families<'_, '_>, state: &AppState) -> fmt::Result {
    let models = state.models.snapshot();
    let snaps: Vec<_> = models
        .values()
        .map(|m| {
            let e = &m.engine;
            (e.spec().id.clone(), e.spec().slots(), e.stats())
        })
        .collect();
    let model = |id: &str| -> Labels { vec![("model", id.to_owned())] };
    let with = |id: &str, k: &'static str, v: &str| -> Labels {
        vec![("model", id.to_owned()), (k, v.to_owned())]
    };
    type Field = fn(&appl_engine::StatsSnapshot) -> u64;
    let per_model = |field: Field| -> Vec<(Labels, u64)> {
        snaps
            .iter()
            .map(|(id, _, s)| (model(id), field(s)))
            .collect()
    };
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
    for (name, help, field) in gauges {
        f.gauge(name, help, &per_model(field))?;
    }
    let slots: Vec<(Labels, u32)> = snaps.iter().map(|(id, n, _)| (model(id), *n)).collect();
    f.gauge("appl_slots", "Sequence slots of the engine.", &slots)?;
    let depth: Vec<(Labels, u64)> = snaps
        .iter()
        .flat_map(|(id, _, s)| {
            [
                (
                    with(id, "class", "interactive"),
                    u64::from(s.queued_interactive),
                ),
                (with(id, "class", "batch"), u64::from(s.queued_batch)),
            ]
        })
        .collect();
    f.gauge(
        "appl_queue_depth",
        "Requests waiting in the engine's queue, by class.",
        &depth,
    )?;
    let counters: [(&str, &str, Field); 8] = [
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
            "appl_engine_steps_interrupted_total",
            "Batch-only engine steps cut short for an interactive arrival.",
            |s| s.steps_interrupted,
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
    for (name, help, field) in counters {
        f.counter(name, help, &per_model(field))?;
    }
    let rejected: Vec<(Labels, u64)> = snaps
        .iter()
        .map(|(id, _, s)| (with(id, "reason", "queue_full"), s.rejected_queue_full))
        .collect();
    f.counter(
        "appl_rejections_total",
        "Requests refused with RESOURCE_EXHAUSTED, by reason.",
        &rejected,
    )?;
    let tenants = state.tenants();
    let (conc, rate) = tenants.rejections();
    f.counter(
        "appl_tenant_rejections_total",
        "Requests refused with RESOURCE_EXHAUSTED by a tenant limit, by limit.",
        &[
            (vec![("reason", "tenant_max_concurrent".to_owned())], conc),
            (
                vec![("reason", "tenant_tokens_per_minute".to_owned())],
                rate,
            ),
        ],
    )?;
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
    for (name, help, field) in hists {
        let rows: Vec<(Labels, &HistogramSnapshot)> = snaps
            .iter()
            .map(|(id, _, s)| (model(id), field(s)))
            .collect();
        f.histogram(name, help, &rows)?;
    }
    let in_flight: Vec<(Labels, u32)> = tenants
        .policies()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = appl_engine::TenantId(i as u32);
            (vec![("tenant", p.name.clone())], tenants.in_flight(id))
        })
        .collect();
    f.gauge(
        "appl_tenant_in_flight",
        "Requests of a tenant queued or running.",
        &in_flight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Families written through the library: counters keep their `_total` name, label values
    /// are escaped, and histogram buckets stay cumulative.
    #[derive(Debug)]
    struct Sample;

    impl Collector for Sample {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            let mut f = Families { enc: &mut enc };
            f.gauge(
                "appl_gpu_info",
                "A GPU.",
                &[(vec![("name", "A \"big\"\nGPU".to_owned())], 1.0)],
            )?;
            f.counter(
                "appl_x_total",
                "X.",
                &[(vec![("model", "m".to_owned())], 7u64)],
            )?;
            let h = HistogramSnapshot {
                bounds: vec![0.1, 1.0],
                cumulative: vec![2, 5],
                count: 6,
                sum: 4.5,
            };
            f.histogram(
                "appl_h_seconds",
                "H.",
                &[(vec![("model", "m".to_owned())], &h)],
            )
        }
    }

    #[test]
    fn families_keep_names_escape_labels_and_accumulate_buckets() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sample));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).expect("encode");
        for line in [
            r#"appl_gpu_info{name="A \"big\"\nGPU"} 1.0"#,
            "# TYPE appl_x_total counter",
            r#"appl_x_total{model="m"} 7"#,
            r#"appl_h_seconds_bucket{model="m",le="0.1"} 2"#,
            r#"appl_h_seconds_bucket{model="m",le="1"} 5"#,
            r#"appl_h_seconds_bucket{model="m",le="+Inf"} 6"#,
            r#"appl_h_seconds_count{model="m"} 6"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in:\n{out}");
        }
    }
}
