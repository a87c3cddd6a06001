//! Models managed at run time: load, unload and reload without a restart, one operation at a
//! time, each recorded in the audit log with its caller and the file's SHA-256.
//!
//! - **Load**: a `[[models]]` entry with that id, or `ID.gguf` in the model store with the
//!   `[[models]]` defaults. Sized against what the loaded models leave free, refused on a GPU
//!   with a fault, and put in service only once its engine is ready.
//! - **Unload**: the model leaves the registry (new requests get `UNAVAILABLE`, then
//!   `NOT_FOUND`), its requests in flight finish (up to `server.drain_timeout_secs`), then its
//!   engine stops and frees its memory.
//! - **Reload**: the model's file as it is now (a new version imported under the same name)
//!   replaces the running one. If both fit at once, the new one loads beside the old, which
//!   serves until the new one is ready; otherwise the file is checked first (header, size,
//!   verified digest) and the old one drains before the new one loads. Without an id, every
//!   model whose file changed is reloaded.
//!
//! Each operation runs as a task of its own, so it completes even when the operator's client
//! goes away; [`ModelManager::close`] aborts loads and waits for them at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_audit::{Action, AuditError, Digest};
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::audit::{file_sha256, known_sha256, unload_action, AdminTicket, Auditor};
use crate::config::{Config, ModelConfig};
use crate::health::HealthState;
use crate::identity::Caller;
use crate::models::{
    plan_model, start_model, verified_digest, EngineSettings, FileChanged, Hardware, LoadError,
    ModelPlan, ENGINE_STOP_TIMEOUT,
};
use crate::registry::{model_service, Activity, LoadedModel, Op, Phase, Registry};

/// Why an operator's model action was refused or failed. The variant decides the status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    /// Another model operation is running.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotLoaded(String),
    #[error("{0}")]
    AlreadyLoaded(String),
    /// Neither a `[[models]]` entry nor a file in the model store has that id.
    #[error("{0}")]
    Unknown(String),
    #[error("model {id}: {source}")]
    Load { id: String, source: LoadError },
    #[error("the audit log cannot record the action, so it is not done: {0}")]
    Audit(#[from] AuditError),
    #[error("the daemon is stopping and changes no models")]
    ShuttingDown,
    /// A bug: the operation's task failed.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            AdminError::Invalid(_) => Code::InvalidArgument,
            AdminError::Busy(_) => Code::Aborted,
            AdminError::NotLoaded(_) | AdminError::Unknown(_) => Code::NotFound,
            AdminError::AlreadyLoaded(_) => Code::AlreadyExists,
            AdminError::Load { source, .. } => source.code(),
            AdminError::Audit(e) => crate::request::audit_code(e),
            AdminError::ShuttingDown => Code::Unavailable,
            AdminError::Internal(_) => Code::Internal,
        }
    }
}

/// What an operation did to one model.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub model: String,
    /// The digest of the file now loaded (load, reload) or unloaded.
    pub sha256: Option<Digest>,
    /// `loaded`, `unloaded`, `reloaded_beside` (the old one served until the new one was
    /// ready), `reloaded_after_drain` or `unchanged`.
    pub outcome: &'static str,
    pub message: String,
    pub took: Duration,
}

/// Loads, unloads and reloads models while the daemon serves.
pub struct ModelManager {
    registry: Arc<Registry>,
    hardware: Hardware,
    config: Arc<Config>,
    settings: EngineSettings,
    auditor: Arc<Auditor>,
    reporter: HealthReporter,
    health: Arc<HealthState>,
    op: Arc<Mutex<()>>,
    tasks: TaskTracker,
    closing: Arc<AtomicBool>,
    drain: Duration,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager").finish_non_exhaustive()
    }
}

/// What the manager works with (a struct, not a long argument list).
#[derive(Debug)]
pub struct ManagerParts {
    pub registry: Arc<Registry>,
    pub hardware: Hardware,
    pub config: Arc<Config>,
    pub auditor: Arc<Auditor>,
    pub reporter: HealthReporter,
    pub health: Arc<HealthState>,
}

impl ModelManager {
    pub fn new(p: ManagerParts) -> ModelManager {
        ModelManager {
            settings: EngineSettings::of(&p.config),
            drain: Duration::from_secs(p.config.server.drain_timeout_secs),
            registry: p.registry,
            hardware: p.hardware,
            config: p.config,
            auditor: p.auditor,
            reporter: p.reporter,
            health: p.health,
            op: Arc::new(Mutex::new(())),
            tasks: TaskTracker::new(),
            closing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs `f` as the one model operation in progress, in a task of its own.
    async fn exclusive<T, F>(self: &Arc<Self>, what: &str, f: F) -> Result<T, AdminError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
    {
        if self.closing.load(Ordering::Acquire) {
            return Err(AdminError::ShuttingDown);
        }
        let Ok(guard) = Arc::clone(&self.op).try_lock_owned() else {
            let busy: Vec<String> = self
                .registry
                .activity()
                .iter()
                .map(|(id, a)| a.describe(id))
                .collect();
            return Err(AdminError::Busy(format!(
                "another model operation is in progress ({}); {what} again once it is done",
                if busy.is_empty() {
                    "starting".to_owned()
                } else {
                    busy.join("; ")
                }
            )));
        };
        let task = self.tasks.spawn(async move {
            let _guard = guard;
            f.await
        });
        task.await
            .map_err(|e| AdminError::Internal(format!("the model operation failed: {e}")))?
    }

    /// Loads model `id`.
    pub async fn load(
        self: &Arc<Self>,
        caller: Caller,
        request_id: String,
        id: String,
    ) -> Result<Outcome, AdminError> {
        let me = Arc::clone(self);
        self.exclusive("load", async move {
            let t = Instant::now();
            if me.registry.snapshot().contains_key(&id) {
                return Err(AdminError::AlreadyLoaded(format!(
                    "model {id:?} is already loaded; use reload to replace it"
                )));
            }
            check_id(&id)?;
            let ticket = me
                .auditor
                .admin_begin(&caller, Action::ModelLoad, &request_id, &id)
                .await?;
            let m = match me.resolve(&id) {
                Ok(m) => m,
                Err(e) => {
                    ticket.finish(e.code(), Some("model_missing"), None).await?;
                    return Err(e);
                }
            };
            let loaded = me.load_new(&m, Op::Load).await;
            let sha = me.finish_load(ticket, &m, loaded).await?;
            Ok(Outcome {
                message: format!("model {id} serves"),
                model: id,
                sha256: Some(sha),
                outcome: "loaded",
                took: t.elapsed(),
            })
        })
        .await
    }

    /// Unloads model `id` once its requests in flight are done.
    pub async fn unload(
        self: &Arc<Self>,
        caller: Caller,
        request_id: String,
        id: String,
    ) -> Result<Outcome, AdminError> {
        let me = Arc::clone(self);
        self.exclusive("unload", async move {
            let t = Instant::now();
            if !me.registry.snapshot().contains_key(&id) {
                return Err(AdminError::NotLoaded(format!("model {id:?} is not loaded")));
            }
            let ticket = me
                .auditor
                .admin_begin(&caller, unload_action(), &request_id, &id)
                .await?;
            let (sha, drained) = me.retire(&id, Op::Unload).await;
            ticket.finish(tonic::Code::Ok, None, sha).await?;
            Ok(Outcome {
                message: retire_message(&id, drained),
                model: id,
                sha256: sha,
                outcome: "unloaded",
                took: t.elapsed(),
            })
        })
        .await
    }

    /// Reloads model `id` from its file, or, with no id, every model whose file changed.
    pub async fn reload(
        self: &Arc<Self>,
        caller: Caller,
        request_id: String,
        id: Option<String>,
    ) -> Result<Vec<Outcome>, AdminError> {
        let me = Arc::clone(self);
        self.exclusive("reload", async move {
            let loaded = me.registry.snapshot();
            let only_changed = id.is_none();
            let ids: Vec<String> = match id {
                Some(id) if loaded.contains_key(&id) => vec![id],
                Some(id) => {
                    return Err(AdminError::NotLoaded(format!(
                        "model {id:?} is not loaded; load it instead"
                    )))
                }
                None => loaded.keys().cloned().collect(),
            };
            let mut out = Vec::new();
            for (i, id) in ids.into_iter().enumerate() {
                let rid = format!("{request_id}.{i}");
                out.push(me.swap(&caller, &rid, &id, only_changed).await?);
            }
            Ok(out)
        })
        .await
    }

    /// The model `id` stands for: its `[[models]]` entry, or `ID.gguf` in the model store.
    fn resolve(&self, id: &str) -> Result<ModelConfig, AdminError> {
        check_id(id)?;
        if let Some(m) = self.config.models.iter().find(|m| m.id == id) {
            return Ok(m.clone());
        }
        let path = self.config.model_store.dir.join(format!("{id}.gguf"));
        if path.is_file() {
            return Ok(ModelConfig::with_defaults(id, path));
        }
        Err(AdminError::Unknown(format!(
            "no [[models]] entry has id {id:?} and the model store has no {}; import it with \
             `applctl models import FILE --name {id}`",
            path.display()
        )))
    }

    /// Sizes `m` against what the loaded models leave free, then loads it.
    async fn load_new(&self, m: &ModelConfig, op: Op) -> Result<LoadedModel, LoadError> {
        let free = {
            let snapshot = self.registry.snapshot();
            self.hardware
                .available(snapshot.values().map(|l| &l.plan), None)?
        };
        let plan = plan_model(m, &free)?;
        self.start_planned(m, plan, op).await
    }

    /// Loads a planned model (blocking parts off the async threads), with its activity shown
    /// until the caller puts it in service; cleared here when it fails.
    async fn start_planned(
        &self,
        m: &ModelConfig,
        plan: ModelPlan,
        op: Op,
    ) -> Result<LoadedModel, LoadError> {
        self.check_gpus(&plan)?;
        let size = std::fs::metadata(&m.path).map_or(0, |md| md.len());
        let activity = Activity::new(op, Phase::Loading, size);
        self.registry.set_activity(&m.id, activity.clone());
        if self.closing.load(Ordering::Acquire) {
            activity.progress.abort();
        }
        let (m2, hw, settings) = (m.clone(), self.hardware.clone(), self.settings.clone());
        let res =
            tokio::task::spawn_blocking(move || start_model(&m2, plan, &hw, &settings, &activity))
                .await
                .unwrap_or_else(|e| {
                    Err(LoadError::Engine(appl_engine::EngineError::Backend(
                        e.to_string(),
                    )))
                });
        if res.is_err() {
            self.registry.clear_activity(&m.id);
        }
        res
    }

    /// Refuses a plan that puts layers on a GPU with a fault.
    fn check_gpus(&self, plan: &ModelPlan) -> Result<(), LoadError> {
        for d in &plan.placement.devices {
            if let appl_firmware_profiles::sizing::DeviceRef::Gpu(i) = d.device {
                if let Some(f) = self.health.latched(i) {
                    return Err(LoadError::GpuFault {
                        gpu: i,
                        fault: f.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Puts a loaded model in service (or records why it failed) and writes the completed
    /// record; the model's digest on success.
    async fn finish_load(
        &self,
        ticket: AdminTicket,
        m: &ModelConfig,
        loaded: Result<LoadedModel, LoadError>,
    ) -> Result<Digest, AdminError> {
        let id = m.id.as_str();
        match loaded {
            Ok(m) => {
                let sha = m.sha256;
                let replaced = self.registry.insert(Arc::new(m));
                debug_assert!(
                    replaced.is_none(),
                    "callers retire the old model themselves"
                );
                self.registry.clear_activity(id);
                self.registry.counters.loaded();
                self.reporter
                    .set_service_status(model_service(id), ServingStatus::Serving)
                    .await;
                ticket.finish(tonic::Code::Ok, None, Some(sha)).await?;
                Ok(sha)
            }
            Err(e) => Err(self.fail(ticket, m, e).await),
        }
    }

    /// Takes model `id` out of service, waits for its requests in flight, stops its engine.
    /// Returns its digest and whether every request finished before the drain timeout.
    async fn retire(&self, id: &str, op: Op) -> (Option<Digest>, bool) {
        let Some(model) = self.registry.remove(id) else {
            return (None, true);
        };
        self.registry
            .set_activity(id, Activity::new(op, Phase::Draining, 0));
        self.reporter
            .set_service_status(model_service(id), ServingStatus::NotServing)
            .await;
        let drained = self.drained(&model).await;
        if !drained {
            warn!(target: "engine", model = %id, in_flight = model.in_flight(),
                "drain timeout reached; the requests still running end as cancelled");
        }
        self.registry.set_phase(id, Phase::Stopping);
        let sha = model.sha256;
        let stopping = Arc::clone(&model);
        let stopped =
            tokio::task::spawn_blocking(move || stopping.engine.stop(ENGINE_STOP_TIMEOUT)).await;
        match stopped {
            Ok(Ok(())) => {
                info!(target: "engine", model = %id, "model unloaded; engine thread joined")
            }
            Ok(Err(e)) => warn!(target: "engine", model = %id, error = %e, "engine did not stop"),
            Err(e) => {
                warn!(target: "engine", model = %id, error = %e, "stopping the engine failed")
            }
        }
        self.registry.clear_activity(id);
        self.registry.counters.unloaded();
        (Some(sha), drained)
    }

    /// Waits for a retired model's leases to end, up to the drain timeout, or until the
    /// daemon stops.
    async fn drained(&self, model: &LoadedModel) -> bool {
        let until = tokio::time::Instant::now() + self.drain;
        while model.in_flight() > 0 {
            if tokio::time::Instant::now() >= until || self.closing.load(Ordering::Acquire) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Replaces model `id` with its file as it is now. With `only_if_changed`, a file whose
    /// digest is the loaded one is left alone.
    async fn swap(
        &self,
        caller: &Caller,
        request_id: &str,
        id: &str,
        only_if_changed: bool,
    ) -> Result<Outcome, AdminError> {
        let t = Instant::now();
        let Some(old) = self.registry.snapshot().get(id).cloned() else {
            return Err(AdminError::NotLoaded(format!("model {id:?} is not loaded")));
        };
        let m = old.config.clone();
        if only_if_changed {
            let current = self
                .digest_now(&m)
                .await
                .map_err(|source| AdminError::Load {
                    id: id.to_owned(),
                    source,
                })?;
            if current == old.sha256 {
                return Ok(Outcome {
                    model: id.to_owned(),
                    sha256: Some(current),
                    outcome: "unchanged",
                    message: format!("model {id}: its file is the one loaded"),
                    took: t.elapsed(),
                });
            }
        }
        let load_ticket = self
            .auditor
            .admin_begin(caller, Action::ModelLoad, request_id, id)
            .await?;
        // Beside the old one, when both fit at once.
        let beside = {
            let snapshot = self.registry.snapshot();
            self.hardware
                .available(snapshot.values().map(|l| &l.plan), None)
                .ok()
                .and_then(|free| plan_model(&m, &free).ok())
        };
        if let Some(plan) = beside {
            let new = match self.start_planned(&m, plan, Op::Reload).await {
                Ok(n) => n,
                Err(e) => return Err(self.fail(load_ticket, &m, e).await),
            };
            let sha = new.sha256;
            self.registry.insert(Arc::new(new));
            self.registry.clear_activity(id);
            self.registry.counters.loaded();
            load_ticket.finish(tonic::Code::Ok, None, Some(sha)).await?;
            // Requests now lease the new engine; the old one drains.
            let unload = self
                .auditor
                .admin_begin(caller, unload_action(), &format!("{request_id}.old"), id)
                .await?;
            let drained = self.retire_replaced(id, old).await;
            unload
                .finish(tonic::Code::Ok, None, Some(drained.0))
                .await?;
            return Ok(Outcome {
                model: id.to_owned(),
                sha256: Some(sha),
                outcome: "reloaded_beside",
                message: format!(
                    "model {id}: the new version serves; the old one served until it was ready. {}",
                    retire_message(id, drained.1)
                ),
                took: t.elapsed(),
            });
        }
        // Not beside: check the new file before the old one goes.
        if let Err(e) = self.precheck(&m, &old).await {
            return Err(self.fail(load_ticket, &m, e).await);
        }
        let unload = self
            .auditor
            .admin_begin(caller, unload_action(), &format!("{request_id}.old"), id)
            .await?;
        let (old_sha, drained) = self.retire(id, Op::Reload).await;
        unload.finish(tonic::Code::Ok, None, old_sha).await?;
        let loaded = self.load_new(&m, Op::Reload).await;
        let sha = self
            .finish_load(load_ticket, &m, loaded)
            .await
            .map_err(|e| match e {
                AdminError::Load { id, source } => AdminError::Load {
                    id,
                    source: LoadError::DoesNotFit(format!(
                    "the old version was unloaded to make room, and the new one failed: {source}"
                )),
                },
                other => other,
            })?;
        Ok(Outcome {
            model: id.to_owned(),
            sha256: Some(sha),
            outcome: "reloaded_after_drain",
            message: format!(
                "model {id}: both versions do not fit at once, so the old one drained first. {}",
                retire_message(id, drained)
            ),
            took: t.elapsed(),
        })
    }

    /// Drains and stops a model already replaced in the registry; its digest and whether it
    /// drained in time.
    async fn retire_replaced(&self, id: &str, old: Arc<LoadedModel>) -> (Digest, bool) {
        // Requests lease the new version meanwhile; status shows the old one draining.
        self.registry
            .set_activity(id, Activity::new(Op::Reload, Phase::Draining, 0));
        let drained = self.drained(&old).await;
        let sha = old.sha256;
        let res = tokio::task::spawn_blocking(move || old.engine.stop(ENGINE_STOP_TIMEOUT)).await;
        if !matches!(res, Ok(Ok(()))) {
            warn!(target: "engine", model = %id, "the replaced engine did not stop cleanly");
        }
        self.registry.clear_activity(id);
        self.registry.counters.unloaded();
        info!(target: "engine", model = %id, drained, "the replaced model's engine stopped");
        (sha, drained)
    }

    /// Before draining a model to make room for its new version: the new file reads as GGUF,
    /// fits once the old one is gone, avoids faulted GPUs, and is the verified one.
    async fn precheck(&self, m: &ModelConfig, old: &LoadedModel) -> Result<(), LoadError> {
        let free = {
            let snapshot = self.registry.snapshot();
            let others = snapshot
                .values()
                .filter(|l| l.id() != m.id)
                .map(|l| &l.plan);
            self.hardware.available(others, Some(&old.plan))?
        };
        let plan = plan_model(m, &free)?;
        self.check_gpus(&plan)?;
        let digest = self.digest_now(m).await?;
        if let Some((sidecar, want)) = verified_digest(&m.path)? {
            let actual = hex::encode(digest.0);
            if actual != want {
                return Err(LoadError::Changed(Box::new(FileChanged {
                    path: m.path.clone(),
                    sidecar,
                    verified: want,
                    actual,
                    digest,
                })));
            }
        }
        Ok(())
    }

    /// The digest of a model's file now (cached when the file is unchanged).
    async fn digest_now(&self, m: &ModelConfig) -> Result<Digest, LoadError> {
        let (dir, path) = (self.settings.digest_cache.clone(), m.path.clone());
        let res = tokio::task::spawn_blocking(move || {
            file_sha256(&dir, &path, &std::sync::atomic::AtomicU64::new(0))
        })
        .await;
        match res {
            Ok(Ok((d, _))) => Ok(d),
            Ok(Err(source)) => Err(LoadError::Hash {
                path: m.path.clone(),
                source,
            }),
            Err(e) => Err(LoadError::Hash {
                path: m.path.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Records a failed load (with the file's digest when it is known) and turns it into the
    /// operator's error.
    async fn fail(&self, ticket: AdminTicket, m: &ModelConfig, e: LoadError) -> AdminError {
        self.registry.counters.load_failed();
        warn!(target: "engine", model = %m.id, error = %e, reason = e.reason(), "model not loaded");
        let sha = e
            .digest()
            .or_else(|| known_sha256(&self.settings.digest_cache, &m.path));
        if let Err(a) = ticket.finish(e.code(), Some(e.reason()), sha).await {
            return AdminError::Audit(a);
        }
        AdminError::Load {
            id: m.id.clone(),
            source: e,
        }
    }

    /// At shutdown: aborts loads in progress, stops waiting for drains, and waits for the
    /// operations to end (their engines stopped and joined).
    pub async fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for a in self.registry.activity().values() {
            a.progress.abort();
        }
        self.tasks.close();
        if tokio::time::timeout(ENGINE_STOP_TIMEOUT * 2, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(target: "engine", "a model operation was still running at shutdown");
        }
    }
}

/// A model id the audit log can record and the model store can hold as a file name.
fn check_id(id: &str) -> Result<(), AdminError> {
    if appl_audit::Ident::new(id).is_err() || id.contains('/') || id.starts_with('.') {
        return Err(AdminError::Invalid(format!(
            "model id {id:?} must be 1-256 of letters, digits and ._-:@=,+[]#, without / and \
             not starting with a dot"
        )));
    }
    Ok(())
}

fn retire_message(id: &str, drained: bool) -> String {
    if drained {
        format!("every request on the old {id} engine finished before it stopped")
    } else {
        format!(
            "the drain timeout passed: requests still running on the old {id} engine ended as \
             cancelled"
        )
    }
}
