//! The daemon's side of admission: the `[queue]` and `[[tenants]]` config, the tenant of a
//! request, and the event receiver that holds a request's tenant permit until its end.
//!
//! The rules themselves (priorities, fairness, quotas, preemption) are pure logic in
//! `appl_engine::admission`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_engine::admission::{Permit, Refusal, TenantPolicy, Tenants};
use appl_engine::{Event, Priority, QueuePolicy};
use serde::Deserialize;
use tokio::sync::mpsc;

/// The request metadata key that names the tenant, until mTLS identities replace it.
pub const TENANT_HEADER: &str = "x-appl-tenant";

/// `[queue]`: how engines order, pause and reuse work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Batch work that has waited this long (queued plus paused) goes before new interactive
    /// work and is not paused again.
    pub batch_max_wait_ms: u64,
    /// Pause batch sequences (KV swapped to host memory) for interactive requests when every
    /// slot is busy.
    pub preemption: bool,
    /// Reuse an idle slot's cached KV for a prompt that shares at least this many leading
    /// tokens with it; 0 disables.
    pub prefix_reuse_min_tokens: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let d = QueuePolicy::default();
        Self {
            batch_max_wait_ms: d.batch_max_wait.as_millis() as u64,
            preemption: d.preemption,
            prefix_reuse_min_tokens: d.prefix_reuse_min_tokens,
        }
    }
}

impl QueueConfig {
    pub fn policy(&self) -> QueuePolicy {
        QueuePolicy {
            batch_max_wait: Duration::from_millis(self.batch_max_wait_ms),
            preemption: self.preemption,
            prefix_reuse_min_tokens: self.prefix_reuse_min_tokens,
        }
    }
}

/// `interactive` or `batch` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    #[default]
    Interactive,
    Batch,
}

impl From<PriorityName> for Priority {
    fn from(p: PriorityName) -> Self {
        match p {
            PriorityName::Interactive => Priority::Interactive,
            PriorityName::Batch => Priority::Batch,
        }
    }
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Share of each engine relative to other tenants when they compete.
    #[serde(default = "one")]
    pub weight: u32,
    /// Requests queued or running at once; 0 means no limit.
    #[serde(default)]
    pub max_concurrent: u32,
    /// Prompt plus completion tokens per minute; 0 means no limit.
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// The class of requests that do not set `priority`.
    #[serde(default)]
    pub default_priority: PriorityName,
}

fn one() -> u32 {
    1
}

/// Checks the tenant table; returns the offending key and why.
pub fn validate_tenants(tenants: &[TenantConfig]) -> Result<(), (String, &'static str)> {
    let mut names = std::collections::HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        if t.name.is_empty() || t.name.len() > 128 || !t.name.chars().all(|c| c.is_ascii_graphic())
        {
            return Err((key("name"), "must be 1 to 128 printable ASCII characters"));
        }
        if !names.insert(&t.name) {
            return Err((key("name"), "repeats another tenant's name"));
        }
        if t.weight == 0 || t.weight > 1000 {
            return Err((key("weight"), "must be between 1 and 1000"));
        }
    }
    Ok(())
}

/// The live tenant table for a config.
pub fn tenants(config: &[TenantConfig]) -> Arc<Tenants> {
    let policies = config
        .iter()
        .map(|t| TenantPolicy {
            name: t.name.clone(),
            weight: t.weight,
            max_concurrent: t.max_concurrent,
            tokens_per_minute: t.tokens_per_minute,
            default_priority: t.default_priority.into(),
        })
        .collect();
    Tenants::new(policies, Instant::now())
}

/// The tenant a request names in its metadata; empty when it names none.
pub fn tenant_name<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().chars().take(128).collect())
        .unwrap_or_default()
}

/// A refusal as the client sees it: `RESOURCE_EXHAUSTED`, naming the limit, with a retry hint.
pub fn refusal_status(r: &Refusal) -> tonic::Status {
    let mut s = tonic::Status::resource_exhausted(r.to_string());
    let ms = u64::try_from(r.retry_after().as_millis()).unwrap_or(u64::MAX);
    s.metadata_mut()
        .insert("retry-after-ms", tonic::metadata::MetadataValue::from(ms));
    s.metadata_mut().insert(
        "x-appl-limit",
        tonic::metadata::MetadataValue::from_static(r.reason()),
    );
    s
}

/// The events of one request, holding its tenant permit: the permit is released when this is
/// dropped (the request ended, or its client went away), and the completion is charged to the
/// tenant's token budget when the final event passes.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    permit: Permit,
}

impl Events {
    pub fn new(rx: mpsc::UnboundedReceiver<Event>, permit: Permit) -> Self {
        Self { rx, permit }
    }

    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        if let Some(Event::Done { usage, .. }) = &ev {
            self.permit.charge(usage.completion_tokens);
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_table_is_validated_naming_the_key() {
        let t = |name: &str, weight| TenantConfig {
            name: name.into(),
            weight,
            max_concurrent: 0,
            tokens_per_minute: 0,
            default_priority: PriorityName::Batch,
        };
        assert!(validate_tenants(&[t("a", 1), t("b", 3)]).is_ok());
        assert_eq!(
            validate_tenants(&[t("", 1)]).unwrap_err().0,
            "tenants[0].name"
        );
        assert_eq!(
            validate_tenants(&[t("a", 1), t("a", 1)]).unwrap_err().0,
            "tenants[1].name"
        );
        assert_eq!(
            validate_tenants(&[t("a", 0)]).unwrap_err().0,
            "tenants[0].weight"
        );
        let table = tenants(&[t("night-jobs", 2)]);
        let id = table.resolve("night-jobs");
        assert_eq!(table.policy(id).default_priority, Priority::Batch);
        assert_eq!(table.policy(id).weight, 2);
    }

    #[test]
    fn the_tenant_comes_from_request_metadata() {
        let mut req = tonic::Request::new(());
        assert_eq!(tenant_name(&req), "");
        req.metadata_mut()
            .insert(TENANT_HEADER, "  clinic-a ".parse().expect("ascii"));
        assert_eq!(tenant_name(&req), "clinic-a");
    }
}
