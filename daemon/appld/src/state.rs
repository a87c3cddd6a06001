//! The daemon's shared state: the models served (swappable at run time), the request limits,
//! the tenant table, the identity table, the latest hardware health and the request-id source.
//! Both request faces and the metrics read it; nothing here sees a wire type. What SIGHUP may
//! change (limits, tenants, identities) sits in [`Live`] holders: a reader takes a snapshot and
//! keeps it for its whole decision.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::task::TaskTracker;

use crate::config::LimitsConfig;
use crate::health::HealthState;
use crate::identity::AuthTable;
use crate::live::Live;
use crate::registry::{ModelLease, Registry};
use crate::request::RequestError;
use crate::tenants::Tenants;

/// What every request path shares.
#[derive(Debug)]
pub struct AppState {
    /// The models served; a request leases its model here once.
    pub models: Arc<Registry>,
    limits: Live<LimitsConfig>,
    pub started: Instant,
    /// The tenant table and each tenant's live usage.
    tenants: Live<Tenants>,
    /// Who callers are: identities, API keys, Unix socket roles.
    auth: Live<AuthTable>,
    /// How TCP is secured and which certificates expire when, for status.
    pub transport: Live<TransportStatus>,
    /// The latest hardware health sample.
    pub health: Arc<HealthState>,
    /// Set once the daemon drains: new requests are refused.
    pub draining: AtomicBool,
    /// The tasks that drive streaming requests; the drain waits for them.
    pub requests: TaskTracker,
    ids: RequestIds,
}

impl AppState {
    pub fn new(models: Arc<Registry>, limits: LimitsConfig) -> Self {
        Self {
            models,
            limits: Live::new(limits),
            started: Instant::now(),
            tenants: Live::from_arc(Tenants::new(Vec::new(), Instant::now())),
            auth: Live::new(AuthTable::default()),
            transport: Live::new(TransportStatus::default()),
            health: Arc::new(HealthState::default()),
            draining: AtomicBool::new(false),
            requests: TaskTracker::new(),
            ids: RequestIds::new(),
        }
    }

    /// Replaces the tenant table (the default has only the `default` tenant, without limits).
    pub fn with_tenants(self, tenants: Arc<Tenants>) -> Self {
        self.tenants.set(tenants);
        self
    }

    /// Sets the identity table (the default knows no identity and no key).
    pub fn with_auth(self, auth: AuthTable) -> Self {
        self.auth.set(Arc::new(auth));
        self
    }

    /// The request limits now.
    pub fn limits(&self) -> Arc<LimitsConfig> {
        self.limits.get()
    }

    /// The tenant table now (a request keeps the one it was admitted with).
    pub fn tenants(&self) -> Arc<Tenants> {
        self.tenants.get()
    }

    /// The identity table now.
    pub fn auth(&self) -> Arc<AuthTable> {
        self.auth.get()
    }

    /// Swaps in what a config reload may change. Requests already admitted keep the snapshots
    /// they took.
    pub fn reload(&self, limits: LimitsConfig, tenants: Arc<Tenants>, auth: AuthTable) {
        self.limits.set(Arc::new(limits));
        self.tenants.set(tenants);
        self.auth.set(Arc::new(auth));
    }

    /// The request-id source.
    pub fn request_ids(&self) -> &RequestIds {
        &self.ids
    }

    /// Shares the health sampler's state.
    pub fn with_health(mut self, health: Arc<HealthState>) -> Self {
        self.health = health;
        self
    }

    /// Refuses new requests once the daemon drains.
    pub fn check_admitting(&self) -> Result<(), RequestError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(RequestError::ShuttingDown);
        }
        Ok(())
    }

    /// The model serving `model`, or the default model when `model` is empty, leased for the
    /// request (see [`Registry::lease`]).
    pub fn engine(&self, model: &str) -> Result<ModelLease, RequestError> {
        self.models.lease(model)
    }

    /// A new request id (see [`RequestIds`]).
    pub fn request_id(&self) -> String {
        self.ids.next("")
    }

    /// A new id for an operator's action, `admin-...`.
    pub fn admin_id(&self) -> String {
        self.ids.next("admin-")
    }
}

/// How the TCP listener is secured, for `Admin.Status` and warnings.
#[derive(Debug, Clone, Default)]
pub struct TransportStatus {
    /// `mtls`, `tls`, `plaintext` or `none` (no TCP listener).
    pub mode: &'static str,
    pub certificates: Vec<crate::tls::CertSummary>,
}

/// Request ids unique within this daemon's lifetime and across restarts: the boot time, the
/// time since start and a counter, in hex.
#[derive(Debug)]
pub struct RequestIds {
    started: Instant,
    boot_secs: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            boot_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id, after `prefix` (such as `export-`).
    pub fn next(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        format!("{prefix}{:x}-{since:x}-{n}", self.boot_secs)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_carry_their_prefix() {
        let ids = RequestIds::new();
        let a = ids.next("");
        let b = ids.next("");
        assert_ne!(a, b);
        assert!(ids.next("export-").starts_with("export-"));
    }
}
