//! SIGHUP: reload the config file without a restart.
//!
//! The new file is read and validated first, and its TLS material loaded; if anything fails,
//! the old config stays in force and the log and the audit log (`config.reload`, status
//! `INVALID_ARGUMENT`, reason `invalid_config`) say why. Otherwise what can change at run time
//! is swapped in whole, for new requests and connections:
//!
//! - identities (`[[identities]]`), API keys (`[[api_keys]]`) and `[auth]`;
//! - TLS material (`tls.cert`, `tls.key`, `tls.client_ca`, `tls.client_crl`,
//!   `tls.client_certs`): new connections are handshaken with it, open ones (and their
//!   streams) keep the old;
//! - tenants (`[[tenants]]`): requests in flight keep the table they were admitted with;
//! - request limits (`[limits]`, but `queue_capacity`).
//!
//! Everything else needs a restart: `server.*` (addresses, socket, metrics, drain timeout),
//! `tls.insecure_plaintext`, `[[models]]`, `[queue]`, `limits.queue_capacity`, `[audit]`,
//! `[log]` and `[sizing]`. A reload that changes one of those applies the rest, and says which
//! keys wait for a restart (reason `applied_restart_needed`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use appl_audit::{Action, Ident, NewRecord};
use tokio::sync::{mpsc, Mutex};
use tracing::{error, info, warn};

use crate::audit::Auditor;
use crate::config::Config;
use crate::identity::AuthTable;
use crate::live::Live;
use crate::state::{AppState, TransportStatus};
use crate::tenants;
use crate::tls::{self, TlsMaterial};

/// Where reloads come from: the config file's path, and one message per SIGHUP.
#[derive(Debug)]
pub struct ReloadSource {
    pub path: PathBuf,
    pub signals: mpsc::Receiver<()>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; these keys changed but wait for a restart.
    Applied { restart_needed: Vec<&'static str> },
    /// Refused; the old config stays.
    Refused(String),
}

/// Applies reloads to the running daemon.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    state: Arc<AppState>,
    tls: Option<Arc<Live<TlsMaterial>>>,
    audit: Arc<Auditor>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        current: Config,
        state: Arc<AppState>,
        tls: Option<Arc<Live<TlsMaterial>>>,
        audit: Arc<Auditor>,
    ) -> Self {
        Self {
            path,
            current: Mutex::new(current),
            state,
            tls,
            audit,
        }
    }

    /// Reloads once per signal until the signals end.
    pub async fn run(self, mut signals: mpsc::Receiver<()>) {
        while signals.recv().await.is_some() {
            self.reload().await;
        }
    }

    /// Reads, checks and applies the config file once; records and logs the outcome.
    pub async fn reload(&self) -> Outcome {
        let started = Instant::now();
        let mut current = self.current.lock().await;
        let outcome = match self.load() {
            Err(why) => Outcome::Refused(why),
            Ok((config, material)) => {
                let restart_needed = restart_needed(&current, &config);
                self.apply(&config, material);
                *current = config;
                Outcome::Applied { restart_needed }
            }
        };
        let mut r = NewRecord::system(Action::ConfigReload);
        r.latency_us = Some(crate::audit::micros(started.elapsed()));
        match &outcome {
            Outcome::Applied { restart_needed } if restart_needed.is_empty() => {
                r.status = Some(0);
                r.reason = Ident::new("applied").ok();
                info!(target: "config", path = %self.path.display(), identities = current.identities.len(),
                    api_keys = current.api_keys.len(), tenants = current.tenants.len(), "config reloaded");
            }
            Outcome::Applied { restart_needed } => {
                r.status = Some(0);
                r.reason = Ident::new("applied_restart_needed").ok();
                warn!(target: "config", path = %self.path.display(), restart_needed = %restart_needed.join(","),
                    "config reloaded; these keys changed but take effect only after a restart");
            }
            Outcome::Refused(why) => {
                r.status = Some(tonic::Code::InvalidArgument as u32);
                r.reason = Ident::new("invalid_config").ok();
                error!(target: "config", path = %self.path.display(), error = %why,
                    "config reload refused; the running config stays in force");
            }
        }
        if let Err(e) = self.audit.append(r).await {
            warn!(target: "audit", error = %e, "could not record the config reload");
        }
        outcome
    }

    /// The new config and TLS material, or why they cannot be used.
    fn load(&self) -> Result<(Config, Option<TlsMaterial>), String> {
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        // The listener is TLS or plaintext for the process's life: only its material reloads.
        let material = match &self.tls {
            Some(_) if !config.tls.insecure_plaintext => {
                Some(tls::load(&config.tls).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        Ok((config, material))
    }

    fn apply(&self, config: &Config, material: Option<TlsMaterial>) {
        let old = self.state.tenants();
        let table = tenants::table(&config.tenants);
        table.carry_counters(&old);
        let mut limits = config.limits.clone();
        // The queue is sized when an engine starts.
        limits.queue_capacity = self.state.limits().queue_capacity;
        self.state
            .reload(limits, table, AuthTable::from_config(config));
        if let (Some(live), Some(m)) = (&self.tls, material) {
            self.state.transport.set(Arc::new(TransportStatus {
                mode: self.state.transport.get().mode,
                certificates: m.certificates.clone(),
            }));
            live.set(Arc::new(m));
        }
    }
}

/// The keys that changed but are read only at start.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    // The config types are compared through their debug form: it covers every field, and a
    // config is small.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut keys = Vec::new();
    let checks: [(&'static str, bool); 9] = [
        ("server", differs(&old.server, &new.server)),
        (
            "tls.insecure_plaintext",
            old.tls.insecure_plaintext != new.tls.insecure_plaintext,
        ),
        ("models", differs(&old.models, &new.models)),
        ("queue", differs(&old.queue, &new.queue)),
        (
            "limits.queue_capacity",
            old.limits.queue_capacity != new.limits.queue_capacity,
        ),
        ("audit", differs(&old.audit, &new.audit)),
        ("log", differs(&old.log, &new.log)),
        ("sizing", differs(&old.sizing, &new.sizing)),
        ("models.default", old.default_model() != new.default_model()),
    ];
    for (key, changed) in checks {
        if changed {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_keys_are_named() {
        let base = "[[models]]\nid = \"a\"\npath = \"/m.gguf\"\n";
        let parse = |t: &str| {
            Config::parse(std::path::Path::new("/etc/appl/appld.toml"), t).expect("valid")
        };
        let old = parse(base);
        let same_but_limits = parse(&format!("[limits]\nmax_stop_sequences = 3\n{base}"));
        assert!(restart_needed(&old, &same_but_limits).is_empty());
        let moved = parse(&format!("[server]\nsocket = \"/tmp/x.sock\"\n{base}"));
        assert_eq!(restart_needed(&old, &moved), ["server"]);
        let slots = parse("[[models]]\nid = \"a\"\npath = \"/m.gguf\"\nslots = 2\n");
        assert_eq!(restart_needed(&old, &slots), ["models"]);
    }
}
