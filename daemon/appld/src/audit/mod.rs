//! The daemon's side of the HIPAA audit log: glue between the request path and
//! [`appl_audit::AuditLog`].
//!
//! - At startup [`Auditor::open`] opens the store, closes out (as `ABORTED`, reason
//!   `unclean_stop`) every request a previous run admitted but never completed if that run did
//!   not stop cleanly, and writes `daemon.start`; each GGUF file is hashed (SHA-256, streaming,
//!   on its own thread while llama.cpp loads it, with a cache keyed by the file's identity and
//!   change time) and every load, unload and failed load is recorded with the file's digest
//!   (`models.rs`). At shutdown [`Auditor::stop`] writes `daemon.stop`, signs a final
//!   checkpoint and closes the store.
//! - Per request, [`Auditor::admit`] writes the `admitted` record and waits until it is durable
//!   (fsynced) before the job may go to an engine; it returns an [`AuditTicket`], and the
//!   request's final message or error goes to the client only after [`AuditTicket::finish`] or
//!   [`AuditTicket::refused`] has made the `completed` record durable. A failed append refuses
//!   the request (`UNAVAILABLE`): nothing is served unaudited.
//! - [`Auditor::watch_health`] follows the log's health: while it cannot write, grpc.health
//!   says `NOT_SERVING` for `""` and `appl.v1.Inference`, and inference is refused with
//!   `UNAVAILABLE` and the reason; it serves again by itself once writes succeed.
//!
//! No prompt or completion text is recorded or logged: records carry ids, counts and an
//! HMAC-SHA256 of the prompt under the appliance's key.
//!
//! Files: `ticket.rs` (a request's records), `digests.rs` (model file digests), `models.rs`
//! (model loads and unloads, operators' model actions, GPU faults).

mod digests;
mod models;
mod ticket;

pub use digests::{file_sha256, known_sha256, FileStamp};
pub use models::{fault_action, unload_action, AdminTicket};
pub use ticket::{Api, AuditTicket, RequestFacts};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use appl_audit::{
    Action, AuditConfig, AuditError, AuditHealth, AuditLog, Digest, Ident, NewRecord, Phase,
};
use tokio_util::task::TaskTracker;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::config::AuditSettings;
use crate::request::PromptInput;

/// Services whose health follows the audit log: the whole server (`""`) and inference.
const GATED_SERVICES: [&str; 2] = ["", "appl.v1.Inference"];

/// How long the stop waits for background appends.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// A year of 365.25 days.
const YEAR: Duration = Duration::from_secs(36525 * 864);

/// The audit log as the daemon uses it. Cheap to share behind an `Arc`.
pub struct Auditor {
    log: AuditLog,
    dir: PathBuf,
    /// The newest acknowledged sequence number plus one (for status while the store is down).
    records: AtomicU64,
    /// Appends running in the background (requests dropped unfinished); waited for at stop.
    background: TaskTracker,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The audit log's state for `Admin.Status`.
#[derive(Debug, Clone)]
pub struct AuditStatus {
    pub state: &'static str,
    pub reason: String,
    pub records: u64,
    pub key: String,
}

impl Auditor {
    /// Opens the audit store in `settings.dir` (creating it) and writes `daemon.start`.
    pub async fn open(settings: &AuditSettings) -> Result<Auditor, AuditError> {
        let dir = settings.dir.clone();
        if settings.retention_years < 6 {
            warn!(target: "audit", retention_years = settings.retention_years,
                "audit retention is shorter than the six years HIPAA expects");
        }
        let cfg = AuditConfig {
            checkpoint_every_records: settings.checkpoint_every_records,
            checkpoint_every: Duration::from_secs(settings.checkpoint_every_secs),
            retention: YEAR * settings.retention_years,
            ..AuditConfig::default()
        };
        let log = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|source| AuditError::Io {
                    path: dir.clone(),
                    source,
                })?;
                AuditLog::open(&dir, cfg)
            })
            .await
            .map_err(|e| AuditError::Unavailable(format!("opening the audit log: {e}")))??
        };
        let a = Auditor {
            log,
            dir,
            records: AtomicU64::new(0),
            background: TaskTracker::new(),
        };
        let recovered = a.close_unfinished().await?;
        let mut start = NewRecord::system(Action::DaemonStart);
        start.reason = recovered
            .then(|| Ident::new("after_unclean_stop").ok())
            .flatten();
        a.append(start).await?;
        Ok(a)
    }

    /// After an unclean stop, records a `completed` outcome (`ABORTED`, reason `unclean_stop`)
    /// for every request the previous run admitted but never completed, before this run's
    /// `daemon.start`; so a crash during this sweep is swept again next time. True if the
    /// previous run did not stop cleanly.
    async fn close_unfinished(&self) -> Result<bool, AuditError> {
        let reader = self.log.reader()?;
        let found = tokio::task::spawn_blocking(move || appl_audit::unfinished(&reader))
            .await
            .map_err(|e| AuditError::Unavailable(format!("scanning the previous run: {e}")))??;
        let Some(u) = found else {
            return Ok(false);
        };
        warn!(target: "audit", last_seq = u.last_seq, unfinished = u.unfinished.len(),
            "the previous run did not stop cleanly; recording the requests it left unfinished");
        for r in u.unfinished {
            let mut n = NewRecord::new(r.action, Phase::Completed, r.actor, r.role);
            n.roles = r.roles;
            n.tenant = r.tenant;
            n.peer = r.peer;
            n.request_id = r.request_id;
            n.model = r.model;
            n.model_sha256 = r.model_sha256;
            n.prompt_tokens = r.prompt_tokens;
            n.api = r.api;
            n.status = Some(tonic::Code::Aborted as u32);
            n.reason = Ident::new("unclean_stop").ok();
            self.append(n).await?;
        }
        Ok(true)
    }

    /// Appends a record in the background, from a context that cannot wait (a drop); the stop
    /// waits for it.
    pub fn append_in_background(self: &Arc<Self>, r: NewRecord) {
        if tokio::runtime::Handle::try_current().is_err() {
            warn!(target: "audit", "no runtime to record a cancelled request on");
            return;
        }
        let a = Arc::clone(self);
        self.background.spawn(async move {
            if let Err(e) = a.append(r).await {
                warn!(target: "audit", error = %e, "could not record a cancelled request");
            }
        });
    }

    /// Appends a record and returns its sequence number once it is durable.
    pub async fn append(&self, r: NewRecord) -> Result<u64, AuditError> {
        let seq = self.log.append(r).await?;
        self.records.fetch_max(seq + 1, Ordering::Relaxed);
        Ok(seq)
    }

    /// The audit log itself (readers, checkpoints and the public key for `appl.v1.Audit`).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// The audit store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails while the log cannot write, so that nothing is admitted unaudited.
    pub fn check_serving(&self) -> Result<(), AuditError> {
        match &*self.log.health().borrow() {
            AuditHealth::Healthy => Ok(()),
            AuditHealth::Failed { reason, .. } => Err(AuditError::Unavailable(reason.clone())),
            AuditHealth::Closed => Err(AuditError::Closed),
        }
    }

    /// HMAC-SHA256 of a raw prompt under the appliance's key.
    pub fn prompt_hmac(&self, prompt: &str) -> Digest {
        self.log.prompt_hmac(prompt.as_bytes())
    }

    /// HMAC-SHA256 of a request's input: [`Auditor::prompt_hmac`] of a raw prompt,
    /// [`Auditor::chat_hmac`] of chat messages.
    pub fn input_hmac(&self, input: &PromptInput) -> Digest {
        match input {
            PromptInput::Text(t) => self.prompt_hmac(t),
            PromptInput::Chat(m) => {
                self.chat_hmac(m.iter().map(|m| (m.role.as_str(), m.content.as_str())))
            }
        }
    }

    /// HMAC-SHA256 of chat messages: `appl-chat-v1` then, per message, the role and the content,
    /// each preceded by its length (u64, big-endian), so that no two message lists collide.
    pub fn chat_hmac<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Digest {
        let mut buf = b"appl-chat-v1".to_vec();
        for (role, content) in messages {
            for part in [role, content] {
                buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
                buf.extend_from_slice(part.as_bytes());
            }
        }
        let d = self.log.prompt_hmac(&buf);
        // The buffer held prompt text; do not leave it lying in freed memory longer than needed.
        buf.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&buf);
        d
    }

    /// The log's state for `Admin.Status`.
    pub fn status(&self) -> AuditStatus {
        let (state, reason) = match &*self.log.health().borrow() {
            AuditHealth::Healthy => ("serving", String::new()),
            AuditHealth::Failed { reason, .. } => ("failed", reason.clone()),
            AuditHealth::Closed => ("closed", String::new()),
        };
        let records = self
            .log
            .reader()
            .and_then(|r| r.len())
            .unwrap_or_else(|_| self.records.load(Ordering::Relaxed));
        AuditStatus {
            state,
            reason,
            records,
            key: appl_audit::keys::fingerprint(&self.log.public_key()),
        }
    }

    /// Follows the log's health: grpc.health `NOT_SERVING` for `""` and `appl.v1.Inference`
    /// while the log cannot write, `SERVING` again once it can. Ends when the log closes.
    pub fn watch_health(&self, reporter: HealthReporter) -> tokio::task::JoinHandle<()> {
        let mut rx = self.log.health();
        tokio::spawn(async move {
            let mut was_serving = true;
            loop {
                let h = rx.borrow_and_update().clone();
                let serving = h.is_serving();
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for s in GATED_SERVICES {
                    reporter.set_service_status(s, status).await;
                }
                match (&h, was_serving) {
                    (AuditHealth::Failed { reason, .. }, _) => error!(
                        target: "audit",
                        reason = %reason,
                        "the audit log cannot write: inference is refused (UNAVAILABLE) and health is NOT_SERVING until it can"
                    ),
                    (AuditHealth::Healthy, false) => {
                        info!(target: "audit", "the audit log writes again: serving inference")
                    }
                    _ => {}
                }
                was_serving = serving;
                if matches!(h, AuditHealth::Closed) || rx.changed().await.is_err() {
                    for s in GATED_SERVICES {
                        reporter
                            .set_service_status(s, ServingStatus::NotServing)
                            .await;
                    }
                    return;
                }
            }
        })
    }

    /// Writes `daemon.stop`, signs a final checkpoint and closes the store.
    pub async fn stop(&self) {
        self.stop_with(None).await
    }

    /// [`Auditor::stop`] for a daemon that failed to start after the log was opened.
    pub async fn stop_startup_failed(&self) {
        self.stop_with(Some("startup_failed")).await
    }

    async fn stop_with(&self, reason: Option<&str>) {
        self.background.close();
        if tokio::time::timeout(BACKGROUND_GRACE, self.background.wait())
            .await
            .is_err()
        {
            warn!(target: "audit", pending = self.background.len(), "background audit appends still running at stop");
        }
        let mut r = NewRecord::system(Action::DaemonStop);
        r.reason = reason.and_then(|s| Ident::new(s).ok());
        if let Err(e) = self.append(r).await {
            error!(target: "audit", error = %e, "could not record daemon.stop");
        }
        match self.log.close().await {
            Ok(cp) => info!(target: "audit", checkpoint = cp.map(|c| c.size), "audit log closed"),
            Err(e) => error!(target: "audit", error = %e, "closing the audit log failed"),
        }
    }
}

/// A duration in whole microseconds, saturating (the unit of `latency_us` in records).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_hmac_separates_messages() {
        // Length prefixes: moving text between role and content changes the digest.
        let d = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(d.path(), AuditConfig::default()).expect("open");
        let a = Auditor {
            log,
            dir: d.path().to_owned(),
            records: AtomicU64::new(0),
            background: TaskTracker::new(),
        };
        let x = a.chat_hmac([("user", "ab"), ("user", "c")]);
        let y = a.chat_hmac([("user", "a"), ("user", "bc")]);
        assert_ne!(x, y);
        assert_eq!(x, a.chat_hmac([("user", "ab"), ("user", "c")]));
        assert_ne!(a.prompt_hmac("abc"), a.chat_hmac([("user", "abc")]));
    }
}
