//! [`AuditLog`]: the async handle, the writer thread, group commit and fail-closed health.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use crate::checkpoint::Checkpoint;
use crate::error::AuditError;
use crate::keys::{fingerprint, hmac_sha256};
use crate::record::{Digest, NewRecord, Timestamp};
use crate::store::{flush_shared, FaultHook, PruneReport, StoreReader, StoreWriter, StoredRecord};

/// Six years (of 365.25 days), the HIPAA retention period.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(6 * 36525 * 864);

/// A source of wall-clock time (injectable for tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Settings of an [`AuditLog`].
#[derive(Clone)]
pub struct AuditConfig {
    /// Sign a checkpoint once this many records are uncovered.
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint once the oldest uncovered record is this old.
    pub checkpoint_every: Duration,
    /// Keep records at least this long (default six years).
    pub retention: Duration,
    /// How often to apply retention (also done at open).
    pub prune_every: Duration,
    /// While failed, how often to try to recover.
    pub retry_every: Duration,
    /// Most records in one group commit.
    pub max_batch: usize,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Wall clock.
    pub clock: Clock,
    /// Fault injection for tests and drills; `None` in production.
    pub fault_hook: Option<FaultHook>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_records: 10_000,
            checkpoint_every: Duration::from_secs(60),
            retention: DEFAULT_RETENTION,
            prune_every: Duration::from_secs(24 * 3600),
            retry_every: Duration::from_secs(1),
            max_batch: 4096,
            cache_bytes: 64 << 20,
            clock: Arc::new(SystemTime::now),
            fault_hook: None,
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("checkpoint_every_records", &self.checkpoint_every_records)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("retention", &self.retention)
            .field("prune_every", &self.prune_every)
            .field("retry_every", &self.retry_every)
            .field("max_batch", &self.max_batch)
            .field("cache_bytes", &self.cache_bytes)
            .field("fault_hook", &self.fault_hook.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the log can write. Inference must be refused unless it is [`AuditHealth::Healthy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditHealth {
    /// Writes succeed.
    Healthy,
    /// The last write failed; appends are refused until a retry succeeds.
    Failed {
        /// Why (for logs and status).
        reason: String,
        /// Since when.
        since: SystemTime,
    },
    /// [`AuditLog::close`] was called, or the writer stopped.
    Closed,
}

impl AuditHealth {
    /// True only when healthy.
    pub fn is_serving(&self) -> bool {
        matches!(self, AuditHealth::Healthy)
    }
}

enum Msg {
    Append(Box<NewRecord>, oneshot::Sender<Result<u64, AuditError>>),
    Checkpoint(oneshot::Sender<Result<Option<Checkpoint>, AuditError>>),
    Prune(oneshot::Sender<Result<PruneReport, AuditError>>),
    Close(oneshot::Sender<Result<Option<Checkpoint>, AuditError>>),
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    health: watch::Receiver<AuditHealth>,
    hmac_key: [u8; 32],
    public_key: ed25519_dalek::VerifyingKey,
    shared: Arc<RwLock<Option<sled::Db>>>,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender makes the writer checkpoint, flush and exit; wait for it so that
        // the store is released when the last handle goes.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The audit log: a cheaply cloneable, `Send + Sync` handle to one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("health", &*self.inner.health.borrow())
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log in `dir`: keys, sled store, then a checkpoint of any
    /// records a crash left uncovered, then retention. Blocking; call it before serving (or in
    /// `spawn_blocking`).
    pub fn open(dir: &Path, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(RwLock::new(None));
        let mut w =
            StoreWriter::open(dir, cfg.cache_bytes, cfg.fault_hook.clone(), shared.clone())?;
        let now = Timestamp::from_system((cfg.clock)());
        let recovered = w.checkpoint(now)?;
        prune(&mut w, &cfg)?;
        let public_key = w.signing_key().verifying_key();
        tracing::info!(
            target: "audit",
            dir = %dir.display(),
            records = w.state.frontier.size(),
            base = w.state.base,
            checkpoint = recovered.as_ref().map(|c| c.size),
            key = %fingerprint(&public_key),
            "audit log open"
        );
        let hmac_key = w.hmac_key();
        let (htx, hrx) = watch::channel(AuditHealth::Healthy);
        let (tx, rx) = mpsc::channel();
        let htx = Arc::new(htx);
        let (ftx, frx) = mpsc::channel();
        let flusher = {
            let (shared, fault, health) = (shared.clone(), cfg.fault_hook.clone(), htx.clone());
            let clock = cfg.clock.clone();
            std::thread::Builder::new()
                .name("audit-flush".into())
                .spawn(move || flusher_loop(frx, shared, fault, health, clock))
                .map_err(|e| AuditError::io(dir, e))?
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(w, cfg, rx, htx, ftx, flusher))
            .map_err(|e| AuditError::io(dir, e))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                health: hrx,
                hmac_key,
                public_key,
                shared,
                dir: dir.to_owned(),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn send(&self, m: Msg) -> Result<(), AuditError> {
        let g = self.inner.tx.lock().map_err(|_| AuditError::Closed)?;
        g.as_ref()
            .ok_or(AuditError::Closed)?
            .send(m)
            .map_err(|_| AuditError::Closed)
    }

    /// Appends a record and resolves once it is durable (fsynced), with its sequence number.
    /// Many concurrent callers share one flush. Fails fast with [`AuditError::Unavailable`]
    /// while the log is failed: the caller must then refuse the request.
    pub async fn append(&self, rec: NewRecord) -> Result<u64, AuditError> {
        if let AuditHealth::Failed { reason, .. } = &*self.inner.health.borrow() {
            return Err(AuditError::Unavailable(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(Box::new(rec), tx))?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Blocking [`AuditLog::append`], for non-async callers (not from inside a runtime).
    pub fn append_blocking(&self, rec: NewRecord) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(Box::new(rec), tx))?;
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// The health channel: `Healthy`, `Failed { reason }` or `Closed`.
    pub fn health(&self) -> watch::Receiver<AuditHealth> {
        self.inner.health.clone()
    }

    /// HMAC-SHA256 of `prompt` under the appliance's key, for [`NewRecord::prompt_hmac`].
    pub fn prompt_digest(&self, prompt: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.inner.hmac_key, prompt)
    }

    /// [`AuditLog::prompt_digest`] as a record field.
    pub fn prompt_hmac(&self, prompt: &[u8]) -> Digest {
        Digest(self.prompt_digest(prompt))
    }

    /// The checkpoint public key.
    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.public_key
    }

    /// Signs a checkpoint covering every durable record now; returns the newest checkpoint.
    pub async fn checkpoint_now(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Checkpoint(tx))?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Applies the retention policy now.
    pub async fn prune_now(&self) -> Result<PruneReport, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Prune(tx))?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Signs a final checkpoint, flushes and stops the writer. Later appends fail with
    /// [`AuditError::Closed`]. Returns the final checkpoint.
    pub async fn close(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Close(tx))?;
        let r = rx.await.map_err(|_| AuditError::Closed)?;
        if let Ok(mut g) = self.inner.tx.lock() {
            g.take();
        }
        r
    }

    /// A reader over the live store (for tail, export and verify through the daemon).
    pub fn reader(&self) -> Result<StoreReader, AuditError> {
        let g = self
            .inner
            .shared
            .read()
            .map_err(|_| AuditError::Unavailable("store lock poisoned".into()))?;
        let db = g
            .clone()
            .ok_or_else(|| AuditError::Unavailable("the store is not open".into()))?;
        Ok(StoreReader::from_db(db, &self.inner.dir))
    }

    /// The newest `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<StoredRecord>, AuditError> {
        self.reader()?.tail(n)
    }
}

fn prune(w: &mut StoreWriter, cfg: &AuditConfig) -> Result<PruneReport, AuditError> {
    let now = (cfg.clock)();
    let cutoff = now
        .checked_sub(cfg.retention)
        .unwrap_or(std::time::UNIX_EPOCH);
    w.prune(Timestamp::from_system(cutoff))
}

type Ack = oneshot::Sender<Result<u64, AuditError>>;

/// Records applied to sled whose callers wait for the next flush.
struct FlushJob {
    acks: Vec<(Ack, u64)>,
}

/// Group commit, second stage: takes every applied batch that is waiting, flushes once for all
/// of them, then acknowledges them. The writer applies the next batches meanwhile.
fn flusher_loop(
    rx: mpsc::Receiver<FlushJob>,
    shared: Arc<RwLock<Option<sled::Db>>>,
    fault: Option<FaultHook>,
    health: Arc<watch::Sender<AuditHealth>>,
    clock: Clock,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        match flush_shared(&shared, fault.as_ref()) {
            Ok(()) => {
                for (tx, seq) in jobs.into_iter().flat_map(|j| j.acks) {
                    let _ = tx.send(Ok(seq));
                }
            }
            Err(e) => {
                // Tell the writer (it sees the health change on its next turn) and everyone.
                health.send_if_modified(|h| {
                    if h.is_serving() {
                        *h = AuditHealth::Failed {
                            reason: e.to_string(),
                            since: clock(),
                        };
                        true
                    } else {
                        false
                    }
                });
                for (tx, _) in jobs.into_iter().flat_map(|j| j.acks) {
                    let _ = tx.send(Err(AuditError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

struct Writer {
    w: StoreWriter,
    cfg: AuditConfig,
    health: Arc<watch::Sender<AuditHealth>>,
    flush_tx: Option<mpsc::Sender<FlushJob>>,
    flusher: Option<std::thread::JoinHandle<()>>,
    failed: bool,
    next_retry: Instant,
    next_prune: Instant,
    /// When the oldest record not covered by a checkpoint was written.
    uncovered_since: Option<Instant>,
}

impl Writer {
    fn now(&self) -> Timestamp {
        Timestamp::from_system((self.cfg.clock)())
    }

    /// Notices a failure that the flusher published.
    fn sync_health(&mut self) {
        if !self.failed && !self.health.borrow().is_serving() {
            let reason = match &*self.health.borrow() {
                AuditHealth::Failed { reason, .. } => reason.clone(),
                other => format!("{other:?}"),
            };
            tracing::error!(target: "audit", error = %reason, "audit log failed; refusing audited work until writes succeed");
            self.failed = true;
            self.next_retry = Instant::now() + self.cfg.retry_every;
        }
    }

    fn fail(&mut self, e: &AuditError) {
        if !self.failed {
            tracing::error!(target: "audit", error = %e, "audit log failed; refusing audited work until writes succeed");
            self.failed = true;
            self.health.send_replace(AuditHealth::Failed {
                reason: e.to_string(),
                since: (self.cfg.clock)(),
            });
        }
        self.next_retry = Instant::now() + self.cfg.retry_every;
    }

    fn try_recover(&mut self) {
        let now = self.now();
        match self.w.recover(now) {
            Ok(()) => {
                self.failed = false;
                self.uncovered_since = self
                    .w
                    .state
                    .last_cp
                    .as_ref()
                    .is_none_or(|c| c.size < self.w.state.frontier.size())
                    .then(Instant::now);
                tracing::warn!(target: "audit", records = self.w.state.frontier.size(), "audit log recovered; serving again");
                self.health.send_replace(AuditHealth::Healthy);
            }
            Err(e) => {
                tracing::debug!(target: "audit", error = %e, "audit recovery attempt failed");
                self.next_retry = Instant::now() + self.cfg.retry_every;
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        let now = self.now();
        match self.w.checkpoint(now) {
            Ok(cp) => {
                self.uncovered_since = None;
                Ok(cp)
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn commit(&mut self, batch: Vec<(NewRecord, Ack)>) {
        self.sync_health();
        if self.failed {
            let reason = match &*self.health.borrow() {
                AuditHealth::Failed { reason, .. } => reason.clone(),
                _ => "audit log failed".into(),
            };
            for (_, tx) in batch {
                let _ = tx.send(Err(AuditError::Unavailable(reason.clone())));
            }
            return;
        }
        let (recs, txs): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let now = self.now();
        match self.w.append_batch(recs, now, false) {
            Ok(seqs) => {
                let acks = txs.into_iter().zip(seqs).collect();
                match &self.flush_tx {
                    Some(f) => {
                        if let Err(mpsc::SendError(job)) = f.send(FlushJob { acks }) {
                            for (tx, _) in job.acks {
                                let _ = tx.send(Err(AuditError::Closed));
                            }
                        }
                    }
                    None => {
                        for (tx, _) in acks {
                            let _ = tx.send(Err(AuditError::Closed));
                        }
                    }
                }
                self.uncovered_since.get_or_insert_with(Instant::now);
                let covered = self.w.state.last_cp.as_ref().map_or(0, |c| c.size);
                if self.w.state.frontier.size() - covered >= self.cfg.checkpoint_every_records {
                    let _ = self.checkpoint();
                }
            }
            Err(e) => {
                self.fail(&e);
                for tx in txs {
                    let _ = tx.send(Err(AuditError::Unavailable(e.to_string())));
                }
            }
        }
    }

    fn timeout(&self) -> Duration {
        let now = Instant::now();
        let mut due = self.next_prune;
        if self.failed {
            due = due.min(self.next_retry);
        } else if let Some(t) = self.uncovered_since {
            due = due.min(t + self.cfg.checkpoint_every);
        }
        // Wake at least every retry interval to notice failures the flusher reported.
        due.saturating_duration_since(now).min(self.cfg.retry_every)
    }

    fn on_timeout(&mut self) {
        self.sync_health();
        let now = Instant::now();
        if self.failed {
            if now >= self.next_retry {
                self.try_recover();
            }
            return;
        }
        if self
            .uncovered_since
            .is_some_and(|t| now >= t + self.cfg.checkpoint_every)
        {
            let _ = self.checkpoint();
        }
        if now >= self.next_prune {
            self.next_prune = now + self.cfg.prune_every;
            if let Err(e) = prune(&mut self.w, &self.cfg) {
                tracing::warn!(target: "audit", error = %e, "retention pass failed");
            }
        }
    }

    fn shutdown(mut self) -> Result<Option<Checkpoint>, AuditError> {
        // Let the flusher acknowledge everything applied, then stop it.
        self.flush_tx.take();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        self.sync_health();
        let r = if self.failed {
            Err(AuditError::Unavailable(
                "closed while failed; records after the last checkpoint are unsigned".into(),
            ))
        } else {
            self.checkpoint()
        };
        let closed = self.w.close();
        self.health.send_replace(AuditHealth::Closed);
        tracing::info!(target: "audit", "audit log closed");
        let cp = r?;
        closed?;
        Ok(cp)
    }
}

fn writer_loop(
    w: StoreWriter,
    cfg: AuditConfig,
    rx: mpsc::Receiver<Msg>,
    health: Arc<watch::Sender<AuditHealth>>,
    flush_tx: mpsc::Sender<FlushJob>,
    flusher: std::thread::JoinHandle<()>,
) {
    let mut wr = Writer {
        flush_tx: Some(flush_tx),
        flusher: Some(flusher),
        uncovered_since: None,
        next_prune: Instant::now() + cfg.prune_every,
        next_retry: Instant::now(),
        failed: false,
        w,
        cfg,
        health,
    };
    let mut pending: Option<Msg> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv_timeout(wr.timeout()) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    wr.on_timeout();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = wr.shutdown();
                    return;
                }
            },
        };
        match first {
            Msg::Append(rec, tx) => {
                // Group commit: everything already queued goes into the same batch and flush.
                let mut batch = vec![(*rec, tx)];
                while batch.len() < wr.cfg.max_batch {
                    match rx.try_recv() {
                        Ok(Msg::Append(r, t)) => batch.push((*r, t)),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                wr.commit(batch);
            }
            Msg::Checkpoint(tx) => {
                wr.sync_health();
                let r = if wr.failed {
                    Err(AuditError::Unavailable("audit log failed".into()))
                } else {
                    wr.checkpoint()
                };
                let _ = tx.send(r);
            }
            Msg::Prune(tx) => {
                wr.sync_health();
                let r = if wr.failed {
                    Err(AuditError::Unavailable("audit log failed".into()))
                } else {
                    prune(&mut wr.w, &wr.cfg)
                };
                let _ = tx.send(r);
            }
            Msg::Close(tx) => {
                // Answer appends queued before the close first.
                let mut batch = Vec::new();
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Append(r, t) => batch.push((*r, t)),
                        Msg::Checkpoint(t) | Msg::Close(t) => {
                            let _ = t.send(Err(AuditError::Closed));
                        }
                        Msg::Prune(t) => {
                            let _ = t.send(Err(AuditError::Closed));
                        }
                    }
                }
                if !batch.is_empty() {
                    wr.commit(batch);
                }
                let _ = tx.send(wr.shutdown());
                return;
            }
        }
    }
}
