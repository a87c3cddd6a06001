//! Tenants: the `[[tenants]]` config, the live tenant table, and the permits that hold a
//! request's place in its tenant's limits.
//!
//! A request takes a [`Permit`] before it queues; the permit counts against the tenant's
//! concurrency limit until it is dropped, and charges the tenant's token bucket
//! (`tokens_per_minute`) for the prompt at once and for the completion as it is reported. A
//! [`Refusal`] names the limit. Pure logic, unit-tested without a model; the queue's own rules
//! (priorities, fairness, preemption) are `appl_engine::admission`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appl_engine::{Priority, TenantId};
use serde::Deserialize;

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
pub fn table(config: &[TenantConfig]) -> Arc<Tenants> {
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

/// A tenant's configured policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    pub name: String,
    /// Share of the engine relative to other tenants; at least 1.
    pub weight: u32,
    /// Requests queued or running at once; 0 means no limit.
    pub max_concurrent: u32,
    /// Prompt plus completion tokens per minute (a token bucket of that size, refilled
    /// continuously); 0 means no limit.
    pub tokens_per_minute: u64,
    pub default_priority: Priority,
}

impl TenantPolicy {
    /// A tenant with weight 1, no limits and interactive priority.
    pub fn unlimited(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            weight: 1,
            max_concurrent: 0,
            tokens_per_minute: 0,
            default_priority: Priority::Interactive,
        }
    }
}

/// The name of the tenant that requests without a (known) tenant belong to.
pub const DEFAULT_TENANT: &str = "default";

/// Why a request was refused before it could queue.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("tenant {tenant} already has {limit} requests in flight, its limit (tenants.max_concurrent); retry when one finishes")]
    TenantConcurrency { tenant: String, limit: u32 },
    #[error("tenant {tenant} has used its {limit} tokens per minute (tenants.tokens_per_minute); retry in {} ms", retry_after.as_millis())]
    TenantRate {
        tenant: String,
        limit: u64,
        retry_after: Duration,
    },
}

impl Refusal {
    /// A short, stable reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TenantConcurrency { .. } => "tenant_max_concurrent",
            Refusal::TenantRate { .. } => "tenant_tokens_per_minute",
        }
    }

    /// When a retry may succeed.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::TenantConcurrency { .. } => Duration::from_millis(1000),
            Refusal::TenantRate { retry_after, .. } => *retry_after,
        }
    }
}

/// A tenant's live usage: requests in flight and its token bucket.
#[derive(Debug)]
struct TenantUsage {
    in_flight: u32,
    /// Tokens left in the bucket; may go negative while a request runs past it.
    bucket: f64,
    refilled: Instant,
}

/// The tenant table and each tenant's live usage. Tenants not in the table share the
/// [`DEFAULT_TENANT`] entry, so unknown names cannot grow memory.
#[derive(Debug)]
pub struct Tenants {
    policies: Vec<TenantPolicy>,
    usage: Vec<Mutex<TenantUsage>>,
    default: TenantId,
    rejected_concurrency: AtomicU64,
    rejected_rate: AtomicU64,
}

impl Tenants {
    /// Builds the table; a `default` tenant without limits is added when the list has none.
    pub fn new(mut policies: Vec<TenantPolicy>, now: Instant) -> Arc<Self> {
        if !policies.iter().any(|p| p.name == DEFAULT_TENANT) {
            policies.push(TenantPolicy::unlimited(DEFAULT_TENANT));
        }
        for p in &mut policies {
            p.weight = p.weight.max(1);
        }
        let default = policies
            .iter()
            .position(|p| p.name == DEFAULT_TENANT)
            .map_or(TenantId(0), |i| TenantId(i as u32));
        let usage = policies
            .iter()
            .map(|p| {
                Mutex::new(TenantUsage {
                    in_flight: 0,
                    bucket: p.tokens_per_minute as f64,
                    refilled: now,
                })
            })
            .collect();
        Arc::new(Self {
            policies,
            usage,
            default,
            rejected_concurrency: AtomicU64::new(0),
            rejected_rate: AtomicU64::new(0),
        })
    }

    /// The tenant a request names; unknown or empty names are the default tenant.
    pub fn resolve(&self, name: &str) -> TenantId {
        self.policies
            .iter()
            .position(|p| p.name == name)
            .map_or(self.default, |i| TenantId(i as u32))
    }

    pub fn policy(&self, id: TenantId) -> &TenantPolicy {
        &self.policies[id.0 as usize]
    }

    pub fn policies(&self) -> &[TenantPolicy] {
        &self.policies
    }

    /// Requests refused for (concurrency, token rate) so far.
    pub fn rejections(&self) -> (u64, u64) {
        (
            self.rejected_concurrency.load(Ordering::Relaxed),
            self.rejected_rate.load(Ordering::Relaxed),
        )
    }

    /// Keeps the refusal counts of the table this one replaces on a reload (they are exported
    /// as Prometheus counters, which must not go back).
    pub fn carry_counters(&self, old: &Tenants) {
        let (c, r) = old.rejections();
        self.rejected_concurrency.fetch_add(c, Ordering::Relaxed);
        self.rejected_rate.fetch_add(r, Ordering::Relaxed);
    }

    /// Requests in flight for a tenant.
    pub fn in_flight(&self, id: TenantId) -> u32 {
        self.lock(id).in_flight
    }

    fn lock(&self, id: TenantId) -> std::sync::MutexGuard<'_, TenantUsage> {
        // A panic while holding this lock leaves only counters behind; they stay usable.
        self.usage[id.0 as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a request of `prompt_tokens` for the tenant, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        id: TenantId,
        prompt_tokens: u32,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let p = self.policy(id);
        let mut u = self.lock(id);
        if p.max_concurrent > 0 && u.in_flight >= p.max_concurrent {
            self.rejected_concurrency.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TenantConcurrency {
                tenant: p.name.clone(),
                limit: p.max_concurrent,
            });
        }
        if p.tokens_per_minute > 0 {
            refill(&mut u, p.tokens_per_minute, now);
            if u.bucket < 1.0 {
                self.rejected_rate.fetch_add(1, Ordering::Relaxed);
                let per_ms = p.tokens_per_minute as f64 / 60_000.0;
                let ms = ((1.0 - u.bucket) / per_ms).ceil().max(1.0);
                return Err(Refusal::TenantRate {
                    tenant: p.name.clone(),
                    limit: p.tokens_per_minute,
                    retry_after: Duration::from_millis(ms as u64),
                });
            }
            u.bucket -= f64::from(prompt_tokens);
        }
        u.in_flight += 1;
        drop(u);
        Ok(Permit {
            tenants: Arc::clone(self),
            id,
        })
    }
}

fn refill(u: &mut TenantUsage, per_minute: u64, now: Instant) {
    let elapsed = now.saturating_duration_since(u.refilled).as_secs_f64();
    u.refilled = now.max(u.refilled);
    let cap = per_minute as f64;
    u.bucket = (u.bucket + elapsed * cap / 60.0).min(cap);
}

/// A request's place in its tenant's concurrency limit; released when dropped.
#[derive(Debug)]
pub struct Permit {
    tenants: Arc<Tenants>,
    id: TenantId,
}

impl Permit {
    pub fn tenant(&self) -> TenantId {
        self.id
    }

    /// Charges generated tokens to the tenant's token bucket.
    pub fn charge(&self, tokens: u32) {
        if self.tenants.policy(self.id).tokens_per_minute > 0 {
            self.tenants.lock(self.id).bucket -= f64::from(tokens);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut u = self.tenants.lock(self.id);
        u.in_flight = u.in_flight.saturating_sub(1);
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
        let table = table(&[t("night-jobs", 2)]);
        let id = table.resolve("night-jobs");
        assert_eq!(table.policy(id).default_priority, Priority::Batch);
        assert_eq!(table.policy(id).weight, 2);
    }

    fn policy(max_concurrent: u32, tokens_per_minute: u64) -> TenantPolicy {
        TenantPolicy {
            name: "clinic".into(),
            weight: 1,
            max_concurrent,
            tokens_per_minute,
            default_priority: Priority::Batch,
        }
    }

    #[test]
    fn tenants_resolve_unknown_names_to_the_default_tenant() {
        let t = Tenants::new(vec![policy(0, 0)], Instant::now());
        assert_eq!(t.policy(t.resolve("clinic")).name, "clinic");
        assert_eq!(t.policy(t.resolve("nobody")).name, DEFAULT_TENANT);
        assert_eq!(t.policy(t.resolve("")).name, DEFAULT_TENANT);
        assert_eq!(t.policies().len(), 2);
    }

    #[test]
    fn concurrency_limit_refuses_naming_the_limit_and_frees_on_drop() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(2, 0)], now);
        let id = t.resolve("clinic");
        let a = t.admit(id, 10, now).expect("first");
        let _b = t.admit(id, 10, now).expect("second");
        let err = t.admit(id, 10, now).expect_err("third is over the limit");
        assert_eq!(err.reason(), "tenant_max_concurrent");
        assert!(err.to_string().contains("max_concurrent"), "{err}");
        assert_eq!(t.rejections(), (1, 0));
        drop(a);
        assert_eq!(t.in_flight(id), 1);
        t.admit(id, 10, now).expect("a place was freed");
        // Other tenants are not affected.
        let d = t.resolve("");
        let _x: Vec<_> = (0..5)
            .map(|_| t.admit(d, 1, now).expect("default"))
            .collect();
    }

    #[test]
    fn token_rate_limit_refuses_once_the_bucket_is_spent_and_refills_with_time() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(0, 600)], now);
        let id = t.resolve("clinic");
        let p = t.admit(id, 300, now).expect("300 of 600");
        p.charge(260);
        let _q = t
            .admit(id, 40, now)
            .expect("40 left: admitted, bucket now empty");
        let err = t.admit(id, 1, now).expect_err("spent");
        assert_eq!(err.reason(), "tenant_tokens_per_minute");
        assert!(err.to_string().contains("tokens_per_minute"), "{err}");
        assert_eq!(t.rejections().1, 1);
        let later = now + Duration::from_secs(6);
        t.admit(id, 1, later).expect("60 tokens refilled after 6 s");
    }

    #[test]
    fn token_rate_retry_hint_is_the_time_to_refill_one_token() {
        let now = Instant::now();
        let t = Tenants::new(vec![policy(0, 60)], now);
        let id = t.resolve("clinic");
        let p = t.admit(id, 60, now).expect("exactly the budget");
        p.charge(9); // 9 tokens into debt: 10 s to get back to 1 token at 1 token/s.
        let err = t.admit(id, 1, now).expect_err("in debt");
        assert_eq!(err.retry_after(), Duration::from_secs(10));
        assert!(t.admit(id, 1, now + Duration::from_secs(9)).is_err());
        assert!(t.admit(id, 1, now + Duration::from_secs(10)).is_ok());
    }
}
