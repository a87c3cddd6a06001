//! The daemon's shared state: the loaded engines, the request limits, the tenant table, the
//! identity table, and the request-id source. Both request faces and the metrics read it;
//! nothing here sees a wire type. What SIGHUP may change (limits, tenants, identities) sits in
//! [`Live`] holders: a reader takes a snapshot and keeps it for its whole decision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use appl_engine::EngineHandle;
use tokio_util::task::TaskTracker;

use crate::config::LimitsConfig;
use crate::identity::AuthTable;
use crate::live::Live;
use crate::request::RequestError;
use crate::tenants::Tenants;

/// What every request path shares.
#[derive(Debug)]
pub struct AppState {
    pub engines: BTreeMap<String, EngineHandle>,
    pub default_model: String,
    limits: Live<LimitsConfig>,
    pub chat_templates: BTreeMap<String, String>,
    pub started: Instant,
    /// The tenant table and each tenant's live usage.
    tenants: Live<Tenants>,
    /// Who callers are: identities, API keys, Unix socket roles.
    auth: Live<AuthTable>,
    /// How TCP is secured and which certificates expire when, for status.
    pub transport: Live<TransportStatus>,
    /// Set once the daemon drains: new requests are refused.
    pub draining: AtomicBool,
    /// The tasks that drive streaming requests; the drain waits for them.
    pub requests: TaskTracker,
    ids: RequestIds,
}

impl AppState {
    pub fn new(
        engines: BTreeMap<String, EngineHandle>,
        default_model: String,
        limits: LimitsConfig,
        chat_templates: BTreeMap<String, String>,
    ) -> Self {
        Self {
            engines,
            default_model,
            limits: Live::new(limits),
            chat_templates,
            started: Instant::now(),
            tenants: Live::from_arc(Tenants::new(Vec::new(), Instant::now())),
            auth: Live::new(AuthTable::default()),
            transport: Live::new(TransportStatus::default()),
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

    /// Refuses new requests once the daemon drains.
    pub fn check_admitting(&self) -> Result<(), RequestError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(RequestError::ShuttingDown);
        }
        Ok(())
    }

    /// The engine serving `model`, or the default model's when `model` is empty.
    pub fn engine(&self, model: &str) -> Result<&EngineHandle, RequestError> {
        let id = if model.is_empty() {
            self.default_model.as_str()
        } else {
            model
        };
        self.engines.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.engines.keys().map(String::as_str).collect();
            RequestError::UnknownModel(format!(
                "unknown model {id:?}; this daemon serves: {}",
                known.join(", ")
            ))
        })
    }

    /// A new request id (see [`RequestIds`]).
    pub fn request_id(&self) -> String {
        self.ids.next("")
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
