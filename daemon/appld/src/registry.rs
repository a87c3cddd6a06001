//! The models the daemon serves, swappable at run time without a lock on the per-token path.
//!
//! [`Registry`] maps model ids to [`LoadedModel`]s in a copy-on-write map. A request looks its
//! model up once, under a read lock held only for the lookup, and leaves with a [`ModelLease`];
//! from then on tokens flow between the engine thread and the request's task over channels and
//! never touch the registry. Loading, unloading and swapping replace the map whole, under the
//! write lock, so a request sees either the old model or the new one, never half of either.
//!
//! A lease counts the requests using a model ([`LoadedModel::in_flight`]). Leases are taken
//! under the read lock and a model leaves the map under the write lock, so once it is out no new
//! lease can be taken: whoever removed it waits for the count to reach zero, and every request
//! in flight finishes on the engine it started on.
//!
//! While a model loads, unloads or is replaced, its [`Activity`] says so: `Admin.Status` shows
//! it with its progress, [`Registry::status_line`] is the text for systemd's `STATUS=`, and a
//! request for a model that is not in the map right now gets `UNAVAILABLE` with a retry hint
//! instead of `NOT_FOUND`.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use appl_audit::Digest;
use appl_engine::{EngineHandle, LoadProgress};
use appl_firmware_profiles::health::GpuFault;
use appl_firmware_profiles::sizing::DeviceRef;
use appl_firmware_profiles::units::mib;
use tracing::{error, info};

use crate::config::ModelConfig;
use crate::models::ModelPlan;
use crate::request::RequestError;

/// A model that is loaded and ready: its engine, where it came from, and where it sits.
pub struct LoadedModel {
    pub engine: EngineHandle,
    /// The settings it was loaded with (from the config, or the defaults for a model found
    /// in the model store).
    pub config: ModelConfig,
    /// SHA-256 of the GGUF file that was loaded.
    pub sha256: Digest,
    /// What the sizing rules decided for it: its memory and the devices that hold it.
    pub plan: ModelPlan,
    pub loaded_at: SystemTime,
    in_flight: AtomicU32,
    fault: OnceLock<ModelFault>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.config.id)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// A GPU fault that took a model out of service.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFault {
    pub gpu: u32,
    pub gpu_name: String,
    pub fault: GpuFault,
}

impl LoadedModel {
    pub fn new(
        engine: EngineHandle,
        config: ModelConfig,
        sha256: Digest,
        plan: ModelPlan,
    ) -> LoadedModel {
        LoadedModel {
            engine,
            config,
            sha256,
            plan,
            loaded_at: SystemTime::now(),
            in_flight: AtomicU32::new(0),
            fault: OnceLock::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The GPUs (inventory indices) that hold any of its layers or its output.
    pub fn gpus(&self) -> Vec<u32> {
        self.plan
            .placement
            .devices
            .iter()
            .filter(|d| d.layers.1 > d.layers.0 || d.holds_output)
            .filter_map(|d| match d.device {
                DeviceRef::Gpu(i) => Some(i),
                DeviceRef::Cpu => None,
            })
            .collect()
    }

    /// Requests holding a lease on it right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The fault that took it out of service, if one did.
    pub fn fault(&self) -> Option<&ModelFault> {
        self.fault.get()
    }

    /// Takes it out of service. True the first time; a model keeps its first fault.
    pub fn set_fault(&self, f: ModelFault) -> bool {
        self.fault.set(f).is_ok()
    }
}

/// A request's hold on a model: the model is not unloaded while a lease on it lives. Derefs to
/// the model's engine.
pub struct ModelLease {
    model: Arc<LoadedModel>,
}

impl ModelLease {
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// SHA-256 of the model's GGUF file, for the audit records.
    pub fn sha256(&self) -> Digest {
        self.model.sha256
    }
}

impl Deref for ModelLease {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        &self.model.engine
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        self.model.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ModelLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ModelLease").field(&self.model.id()).finish()
    }
}

/// What is being done to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Load,
    Unload,
    Reload,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Load => "loading",
            Op::Unload => "unloading",
            Op::Reload => "reloading",
        }
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hashing the GGUF file (SHA-256) while llama.cpp reads it.
    Loading,
    /// Waiting for the requests in flight on the old engine to finish.
    Draining,
    /// Stopping the old engine and freeing its memory.
    Stopping,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }
    }
}

/// A model operation in progress.
#[derive(Debug, Clone)]
pub struct Activity {
    pub op: Op,
    pub phase: Phase,
    /// llama.cpp's progress through the tensor data.
    pub progress: LoadProgress,
    /// Bytes of the file hashed so far.
    pub hashed: Arc<AtomicU64>,
    /// Size of the GGUF file.
    pub file_bytes: u64,
    pub started: Instant,
}

impl Activity {
    pub fn new(op: Op, phase: Phase, file_bytes: u64) -> Activity {
        Activity {
            op,
            phase,
            progress: LoadProgress::default(),
            hashed: Arc::new(AtomicU64::new(0)),
            file_bytes,
            started: Instant::now(),
        }
    }

    /// Bytes of tensor data llama.cpp has read (its fraction of the file's size).
    pub fn loaded_bytes(&self) -> u64 {
        (self.progress.fraction() * self.file_bytes as f64) as u64
    }

    /// One line for people: `loading gemma: 120 of 253 MiB read, 253 of 253 MiB hashed`.
    pub fn describe(&self, id: &str) -> String {
        match self.phase {
            Phase::Loading => format!(
                "{} {id}: {} of {} read ({:.0}%), {} hashed",
                self.op.as_str(),
                mib(self.loaded_bytes()),
                mib(self.file_bytes),
                self.progress.fraction() * 100.0,
                mib(self.hashed.load(Ordering::Relaxed).min(self.file_bytes)),
            ),
            Phase::Draining | Phase::Stopping => {
                format!("{} {id}: {}", self.op.as_str(), self.phase.as_str())
            }
        }
    }
}

/// The grpc.health.v1 service name of one model: `appl.v1.Model/<id>`. `SERVING` while the
/// model serves; `NOT_SERVING` while it drains or is unloaded, after a GPU fault takes it out
/// of service, and while the daemon stops.
pub fn model_service(id: &str) -> String {
    format!("appl.v1.Model/{id}")
}

/// Model operations so far, for the metrics.
#[derive(Debug, Default)]
pub struct OpCounters {
    pub loads: AtomicU64,
    pub failed_loads: AtomicU64,
    pub unloads: AtomicU64,
}

impl OpCounters {
    pub fn loaded(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }
    pub fn load_failed(&self) {
        self.failed_loads.fetch_add(1, Ordering::Relaxed);
    }
    pub fn unloaded(&self) {
        self.unloads.fetch_add(1, Ordering::Relaxed);
    }
}

type ModelMap = BTreeMap<String, Arc<LoadedModel>>;

/// The models being served, and the operations in progress on them.
#[derive(Debug)]
pub struct Registry {
    /// Loads (at start and at run time), failed loads and unloads so far.
    pub counters: OpCounters,
    models: RwLock<Arc<ModelMap>>,
    activity: Mutex<BTreeMap<String, Activity>>,
    default_model: String,
}

impl Registry {
    /// An empty registry; requests naming no model go to `default_model`.
    pub fn new(default_model: impl Into<String>) -> Registry {
        Registry {
            counters: OpCounters::default(),
            models: RwLock::new(Arc::new(BTreeMap::new())),
            activity: Mutex::new(BTreeMap::new()),
            default_model: default_model.into(),
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The models served right now (a cheap snapshot).
    pub fn snapshot(&self) -> Arc<ModelMap> {
        Arc::clone(&self.models.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The model serving `id` (or the default model when `id` is empty), leased for the length
    /// of a request. Refused with `NOT_FOUND` for a model that is not served,
    /// `UNAVAILABLE` for one that is being loaded or replaced, or whose GPU has a fault.
    pub fn lease(&self, id: &str) -> Result<ModelLease, RequestError> {
        let id = if id.is_empty() {
            self.default_model.as_str()
        } else {
            id
        };
        let found = {
            let map = self.models.read().unwrap_or_else(PoisonError::into_inner);
            map.get(id).map(|m| {
                // Under the read lock: an unload (write lock) cannot slip in between the
                // lookup and the count.
                m.in_flight.fetch_add(1, Ordering::AcqRel);
                ModelLease {
                    model: Arc::clone(m),
                }
            })
        };
        match found {
            Some(lease) => match lease.model().fault() {
                None => Ok(lease),
                Some(f) => Err(RequestError::HardwareFault {
                    model: id.to_owned(),
                    gpu: f.gpu,
                    gpu_name: f.gpu_name.clone(),
                    fault: f.fault.to_string(),
                }),
            },
            None => Err(self.missing(id)),
        }
    }

    fn missing(&self, id: &str) -> RequestError {
        if let Some(a) = self.activity().get(id) {
            return RequestError::ModelUnavailable(format!(
                "model {id:?} is not serving right now ({}); retry shortly",
                a.describe(id)
            ));
        }
        let known = self.snapshot();
        let known: Vec<&str> = known.keys().map(String::as_str).collect();
        let what = if id == self.default_model {
            "the default model"
        } else {
            "unknown model"
        };
        RequestError::UnknownModel(format!(
            "{what} {id:?} is not loaded; this daemon serves: {}",
            if known.is_empty() {
                "no model".to_owned()
            } else {
                known.join(", ")
            }
        ))
    }

    /// Puts `model` in service under its id; returns the model it replaces, if any.
    pub fn insert(&self, model: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let mut guard = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let mut map = ModelMap::clone(&guard);
        let old = map.insert(model.id().to_owned(), model);
        *guard = Arc::new(map);
        old
    }

    /// Takes a model out of service: no new lease can be taken on it once this returns.
    pub fn remove(&self, id: &str) -> Option<Arc<LoadedModel>> {
        let mut guard = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if !guard.contains_key(id) {
            return None;
        }
        let mut map = ModelMap::clone(&guard);
        let old = map.remove(id);
        *guard = Arc::new(map);
        old
    }

    /// The operations in progress, by model id.
    pub fn activity(&self) -> BTreeMap<String, Activity> {
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that an operation on `id` began (or moved to a new phase).
    pub fn set_activity(&self, id: &str, a: Activity) {
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), a);
    }

    /// Moves the operation on `id` to `phase`.
    pub fn set_phase(&self, id: &str, phase: Phase) {
        if let Some(a) = self
            .activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(id)
        {
            a.phase = phase;
        }
    }

    /// The operation on `id` ended.
    pub fn clear_activity(&self, id: &str) {
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// What the daemon is doing to its models, in one line (for systemd's `STATUS=`); `None`
    /// when nothing is in progress.
    pub fn status_line(&self) -> Option<String> {
        let a = self.activity();
        if a.is_empty() {
            return None;
        }
        Some(
            a.iter()
                .map(|(id, a)| a.describe(id))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Stops every served model's engine and joins its thread, each within `timeout`: what is
    /// still queued or running ends as cancelled. True when all stopped.
    pub fn stop_all(&self, timeout: Duration) -> bool {
        let mut all = true;
        for (id, m) in self.snapshot().iter() {
            match m.engine.stop(timeout) {
                Ok(()) => info!(target: "engine", model = %id, "engine thread joined"),
                Err(err) => {
                    error!(target: "engine", model = %id, error = %err, "engine thread did not stop");
                    all = false;
                }
            }
        }
        all
    }
}
