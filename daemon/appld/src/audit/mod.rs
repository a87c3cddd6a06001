//! The daemon's side of the HIPAA audit log: glue between the gRPC layer and
//! [`appl_audit::AuditLog`].
//!
//! - At startup [`Auditor::open`] opens the store and writes `daemon.start`; the GGUF files are
//!   hashed (SHA-256, streaming, on their own thread while the models load, with a cache keyed
//!   by the file's identity and change time) and [`Auditor::models_loaded`] writes one
//!   `model.load` record per model. At shutdown [`Auditor::stop`] writes `daemon.stop`, signs
//!   a final checkpoint and closes the store.
//! - Per request, [`Auditor::admit`] writes the `admitted` record and waits until it is durable
//!   (fsynced) before the job may go to an engine; it returns a [`Ticket`], and the request's
//!   final message or error goes to the client only after [`Ticket::finish`] or
//!   [`Ticket::refused`] has made the `completed` record durable. A failed append becomes
//!   `UNAVAILABLE`: nothing is served unaudited.
//! - [`Auditor::watch_health`] follows the log's health: while it cannot write, grpc.health
//!   says `NOT_SERVING` for `""` and `appl.v1.Inference`, and inference is refused with
//!   `UNAVAILABLE` and the reason; it serves again by itself once writes succeed.
//!
//! No prompt or completion text is recorded or logged: records carry ids, counts and an
//! HMAC-SHA256 of the prompt under the appliance's key.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_audit::{
    Action, AuditConfig, AuditError, AuditHealth, AuditLog, Digest, Ident, NewRecord, Phase, Role,
};
use appl_engine::{FinishReason, Usage};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{debug, error, info, warn};

use crate::config::{AuditSettings, Config};

/// The metadata key a caller may name its tenant with (until mTLS identities land).
pub const TENANT_HEADER: &str = "x-appl-tenant";

/// Services whose health follows the audit log: the whole server (`""`) and inference.
const GATED_SERVICES: [&str; 2] = ["", "appl.v1.Inference"];

/// A year of 365.25 days.
const YEAR: Duration = Duration::from_secs(36525 * 864);

/// The audit log as the daemon uses it. Cheap to share behind an `Arc`.
pub struct Auditor {
    log: AuditLog,
    dir: PathBuf,
    models: BTreeMap<String, Digest>,
    /// The newest acknowledged sequence number plus one (for status while the store is down).
    records: AtomicU64,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("dir", &self.dir)
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

/// Who is calling, as far as the daemon knows today.
#[derive(Debug, Clone)]
pub struct Caller {
    actor: Ident,
    peer: Option<Ident>,
}

impl Caller {
    /// The actor to record: the tenant, else the peer.
    pub fn actor(&self) -> &Ident {
        &self.actor
    }

    /// The peer address (`127.0.0.1:5000`, `unix:uid=0,gid=0`), if known.
    pub fn peer(&self) -> Option<&Ident> {
        self.peer.as_ref()
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

fn unavailable(e: &AuditError) -> Status {
    let why = match e {
        AuditError::Unavailable(r) => r.clone(),
        other => other.to_string(),
    };
    let why = why.trim_start_matches("audit log unavailable: ");
    Status::unavailable(format!(
        "the audit log cannot write ({why}); inference is refused until it can"
    ))
}

fn ident(field: &'static str, s: &str) -> Result<Ident, Status> {
    Ident::new(s).map_err(|e| Status::internal(format!("{field} cannot be audited: {e}")))
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
            models: BTreeMap::new(),
            records: AtomicU64::new(0),
        };
        a.append(NewRecord::system(Action::DaemonStart)).await?;
        Ok(a)
    }

    /// Records `model.load` for every model, with the GGUF digests from [`hash_models`].
    pub async fn models_loaded(
        &mut self,
        digests: BTreeMap<String, Digest>,
    ) -> Result<(), AuditError> {
        for (id, sha) in &digests {
            let mut r = NewRecord::system(Action::ModelLoad);
            r.model = Some(Ident::new(id.as_str())?);
            r.model_sha256 = Some(*sha);
            r.status = Some(0);
            self.append(r).await?;
            info!(target: "audit", model = %id, sha256 = %hex::encode(sha.0), "model load recorded");
        }
        self.models = digests;
        Ok(())
    }

    async fn append(&self, r: NewRecord) -> Result<u64, AuditError> {
        let seq = self.log.append(r).await?;
        self.records.fetch_max(seq + 1, Ordering::Relaxed);
        Ok(seq)
    }

    /// The SHA-256 of a loaded model's GGUF file.
    pub fn model_sha256(&self, id: &str) -> Option<Digest> {
        self.models.get(id).copied()
    }

    /// The audit log itself (readers, checkpoints and the public key for `appl.v1.Audit`).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Appends a record and returns once it is durable; `UNAVAILABLE` if it cannot be.
    pub async fn record(&self, r: NewRecord) -> Result<u64, Status> {
        self.append(r).await.map_err(|e| unavailable(&e))
    }

    /// The audit store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses with `UNAVAILABLE` while the log cannot write.
    pub fn check_serving(&self) -> Result<(), Status> {
        match &*self.log.health().borrow() {
            AuditHealth::Healthy => Ok(()),
            AuditHealth::Failed { reason, .. } => {
                Err(unavailable(&AuditError::Unavailable(reason.clone())))
            }
            AuditHealth::Closed => Err(Status::unavailable(
                "the audit log is closed (the daemon is shutting down); inference is refused",
            )),
        }
    }

    /// Who is calling: the `x-appl-tenant` metadata if present (it must be a valid audit
    /// identifier), else the peer (TCP address, or the Unix socket peer's uid). Fails with
    /// `UNAVAILABLE` first if the log cannot write, so nothing is admitted unaudited.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.check_serving()?;
        Self::identify(req)
    }

    /// [`Auditor::caller`] without the serving check (reads of the log need no write).
    pub fn identify<T>(req: &Request<T>) -> Result<Caller, Status> {
        let peer = if let Some(a) = req.remote_addr() {
            Some(Ident::from(a))
        } else {
            req.extensions()
                .get::<UdsConnectInfo>()
                .and_then(|u| u.peer_cred)
                .and_then(|c| Ident::new(format!("unix:uid={},gid={}", c.uid(), c.gid())).ok())
        };
        let tenant = match req.metadata().get(TENANT_HEADER) {
            None => None,
            Some(v) => {
                let s = v.to_str().map_err(|_| {
                    Status::invalid_argument(format!("{TENANT_HEADER} metadata is not ASCII"))
                })?;
                Some(Ident::new(s).map_err(|e| {
                    Status::invalid_argument(format!(
                        "{TENANT_HEADER} metadata is not a valid identifier ({e}); use 1-256 of \
                         letters, digits and ._-:@/=,+[]#"
                    ))
                })?)
            }
        };
        let actor = match (tenant, &peer) {
            (Some(t), _) => t,
            (None, Some(p)) => match p.as_str().strip_prefix("unix:") {
                // `uid=0,gid=0` -> `uid:0`
                Some(cred) => {
                    Ident::new(cred.split(',').next().unwrap_or(cred).replacen('=', ":", 1))
                        .unwrap_or_else(|_| p.clone())
                }
                None => p.clone(),
            },
            (None, None) => ident("actor", "unknown")?,
        };
        Ok(Caller { actor, peer })
    }

    /// HMAC-SHA256 of a raw prompt under the appliance's key.
    pub fn prompt_hmac(&self, prompt: &str) -> Digest {
        self.log.prompt_hmac(prompt.as_bytes())
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

    fn request_record(
        &self,
        caller: &Caller,
        action: Action,
        phase: Phase,
        request_id: &str,
        model: &str,
    ) -> Result<NewRecord, Status> {
        let mut r = NewRecord::new(action, phase, caller.actor.clone(), Role::Inference);
        r.peer = caller.peer.clone();
        r.request_id = Some(ident("request id", request_id)?);
        r.model = Some(ident("model id", model)?);
        r.model_sha256 = self.model_sha256(model);
        Ok(r)
    }

    /// A request record that also carries the prompt's token count and keyed digest.
    #[allow(clippy::too_many_arguments)]
    fn prompt_record(
        &self,
        caller: &Caller,
        action: Action,
        phase: Phase,
        request_id: &str,
        model: &str,
        prompt_tokens: usize,
        prompt_hmac: Digest,
    ) -> Result<NewRecord, Status> {
        let mut r = self.request_record(caller, action, phase, request_id, model)?;
        r.prompt_tokens = Some(u32::try_from(prompt_tokens).unwrap_or(u32::MAX));
        r.prompt_hmac = Some(prompt_hmac);
        Ok(r)
    }

    /// Writes the `admitted` record and returns once it is durable. Only then may the job go
    /// to an engine.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        action: Action,
        request_id: &str,
        model: &str,
        prompt_tokens: usize,
        prompt_hmac: Digest,
        received: Instant,
    ) -> Result<Ticket, Status> {
        let r = self.prompt_record(
            caller,
            action,
            Phase::Admitted,
            request_id,
            model,
            prompt_tokens,
            prompt_hmac,
        )?;
        let mut completed = r.clone();
        completed.phase = Phase::Completed;
        completed.prompt_hmac = None;
        let t = Instant::now();
        self.append(r).await.map_err(|e| unavailable(&e))?;
        Ok(Ticket {
            auditor: Some(self.clone()),
            record: completed,
            received,
            completion_tokens: 0,
            admitted_wait: t.elapsed(),
        })
    }

    /// Records a request that is answered at once, without an engine job (tokenize), as one
    /// durable `event` record.
    #[allow(clippy::too_many_arguments)]
    pub async fn event(
        &self,
        caller: &Caller,
        action: Action,
        request_id: &str,
        model: &str,
        prompt_tokens: usize,
        prompt_hmac: Digest,
        received: Instant,
    ) -> Result<(), Status> {
        let mut r = self.prompt_record(
            caller,
            action,
            Phase::Event,
            request_id,
            model,
            prompt_tokens,
            prompt_hmac,
        )?;
        r.status = Some(0);
        r.latency_us = Some(micros(received.elapsed()));
        self.append(r).await.map(drop).map_err(|e| unavailable(&e))
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The stable `reason` of a completed record.
fn finish_reason_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Deadline => "deadline",
        FinishReason::Error => "error",
    }
}

fn code_reason(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// An admitted request whose `completed` record is still to be written. Dropped unfinished
/// (the client went away while a unary call ran), it writes a `cancelled` completed record in
/// the background.
pub struct Ticket {
    auditor: Option<Arc<Auditor>>,
    record: NewRecord,
    received: Instant,
    completion_tokens: u32,
    /// How long the request waited for its admitted record to be durable.
    admitted_wait: Duration,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("request_id", &self.record.request_id)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// Counts tokens already sent to a streaming client (for a cancelled record).
    pub fn sent_tokens(&mut self, n: usize) {
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn take(&mut self, code: tonic::Code, reason: &str, usage: Option<&Usage>) -> NewRecord {
        let mut r = self.record.clone();
        r.status = Some(code as u32);
        r.reason = Ident::new(reason).ok();
        match usage {
            Some(u) => {
                r.prompt_tokens = Some(u.prompt_tokens);
                r.completion_tokens = Some(u.completion_tokens);
            }
            None => r.completion_tokens = Some(self.completion_tokens),
        }
        r.latency_us = Some(micros(self.received.elapsed()));
        r
    }

    async fn write(mut self, r: NewRecord) -> Result<(), Status> {
        let Some(a) = self.auditor.take() else {
            return Err(Status::internal("audit ticket used twice"));
        };
        let t = Instant::now();
        let res = a.append(r).await;
        // What the audit log cost this request on its path (bench/audit_latency.rs reads it).
        debug!(
            target: "audit",
            request_id = self.record.request_id.as_ref().map_or("", |i| i.as_str()),
            admitted_us = micros(self.admitted_wait),
            completed_us = micros(t.elapsed()),
            latency_us = micros(self.received.elapsed()),
            "request audited"
        );
        res.map(drop).map_err(|e| unavailable(&e))
    }

    /// Makes the `completed` record durable, then hands back the request's result: the final
    /// message may go out only after this. If the record cannot be written the client gets
    /// `UNAVAILABLE` instead.
    pub async fn finish<T>(
        mut self,
        result: Result<T, Status>,
        reason: FinishReason,
        usage: &Usage,
    ) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        let r = self.take(code, finish_reason_name(reason), Some(usage));
        self.write(r).await?;
        result
    }

    /// Records that an admitted request ended without an engine result (queue full, engine
    /// gone) and returns the status for the client (or `UNAVAILABLE` if even that record
    /// cannot be written).
    pub async fn refused(mut self, status: Status) -> Status {
        let r = self.take(status.code(), code_reason(status.code()), None);
        match self.write(r).await {
            Ok(()) => status,
            Err(s) => s,
        }
    }

    /// Records that the client went away mid-stream (nobody is left to tell).
    pub async fn client_gone(mut self) {
        let r = self.take(tonic::Code::Cancelled, "client_gone", None);
        if let Err(s) = self.write(r).await {
            warn!(target: "audit", error = %s.message(), "could not record a cancelled request");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(a) = self.auditor.take() else {
            return;
        };
        let r = self.take(tonic::Code::Cancelled, "client_gone", None);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = a.append(r).await {
                    warn!(target: "audit", error = %e, "could not record a cancelled request");
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model digests
// ---------------------------------------------------------------------------------------------

/// File with the digests of model files already hashed, in the audit directory.
const DIGEST_CACHE_FILE: &str = "model-sha256.cache.json";

/// What identifies one version of a file: if any of these changed, it is hashed again. The
/// change time (`ctime`) cannot be set from user space, so a file rewritten in place and
/// touched back to its old `mtime` is still noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DigestCache {
    entries: Vec<(FileId, String)>,
}

fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// SHA-256 of every configured model's GGUF, streaming, reusing digests cached in the audit
/// directory for files that have not changed. Blocking: run it on its own thread (it overlaps
/// with model loading).
pub fn hash_models(config: &Config) -> Result<BTreeMap<String, Digest>, AuditError> {
    let cache_path = config.audit.dir.join(DIGEST_CACHE_FILE);
    let mut cache: DigestCache = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut changed = false;
    for m in &config.models {
        let io = |source| AuditError::Io {
            path: m.path.clone(),
            source,
        };
        let id = FileId::of(&m.path).map_err(io)?;
        let cached = cache
            .entries
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, h)| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(h, &mut d).ok().map(|()| d)
            });
        let d = match cached {
            Some(d) => d,
            None => {
                let t = Instant::now();
                let d = sha256_file(&m.path).map_err(io)?;
                // The file must not have changed while it was read.
                if FileId::of(&m.path).map_err(io)? != id {
                    return Err(io(std::io::Error::other(
                        "the model file changed while it was being hashed",
                    )));
                }
                info!(target: "audit", model = %m.id, ms = t.elapsed().as_millis() as u64, "hashed the model file");
                cache.entries.retain(|(k, _)| k.path != id.path);
                cache.entries.push((id, hex::encode(d)));
                changed = true;
                d
            }
        };
        out.insert(m.id.clone(), Digest(d));
    }
    if changed {
        let tmp = cache_path.with_extension("json.tmp");
        let res = serde_json::to_vec(&cache)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &cache_path));
        if let Err(e) = res {
            warn!(target: "audit", path = %cache_path.display(), error = %e,
                "could not cache model digests; they will be computed again at the next start");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_sha256_and_cached_until_the_file_changes() {
        let d = tempfile::tempdir().expect("tempdir");
        let model = d.path().join("m.gguf");
        std::fs::write(&model, b"abc").expect("write");
        let text = format!(
            "[audit]\ndir = \"{}\"\n[[models]]\nid = \"m\"\npath = \"{}\"\n",
            d.path().join("audit").display(),
            model.display()
        );
        let config = Config::parse(&d.path().join("appld.toml"), &text).expect("config");
        std::fs::create_dir_all(&config.audit.dir).expect("mkdir");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got = hash_models(&config).expect("hash");
        assert_eq!(hex::encode(got["m"].0), abc);
        assert!(config.audit.dir.join(DIGEST_CACHE_FILE).exists());
        // Cached: same answer.
        assert_eq!(hex::encode(hash_models(&config).expect("hash")["m"].0), abc);
        // Rewritten: hashed again.
        std::fs::write(&model, b"abd").expect("write");
        assert_ne!(hex::encode(hash_models(&config).expect("hash")["m"].0), abc);
    }

    #[test]
    fn chat_hmac_separates_messages() {
        // Length prefixes: moving text between role and content changes the digest.
        let d = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(d.path(), AuditConfig::default()).expect("open");
        let a = Auditor {
            log,
            dir: d.path().to_owned(),
            models: BTreeMap::new(),
            records: AtomicU64::new(0),
        };
        let x = a.chat_hmac([("user", "ab"), ("user", "c")]);
        let y = a.chat_hmac([("user", "a"), ("user", "bc")]);
        assert_ne!(x, y);
        assert_eq!(x, a.chat_hmac([("user", "ab"), ("user", "c")]));
        assert_ne!(a.prompt_hmac("abc"), a.chat_hmac([("user", "abc")]));
    }
}
