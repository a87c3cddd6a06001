//! Loading a model: the sizing rules decide, before llama.cpp allocates anything, whether it
//! fits what is free on this machine and how many layers go to a GPU; then its engine starts
//! while its GGUF file is hashed, and a file whose digest differs from the one verified at
//! import is refused. The same path serves the start-up loads ([`load_models`]) and the loads
//! operators ask for at run time (`lifecycle.rs`).
//!
//! What is free is kept as a ledger: the machine as probed (or recorded) before any model
//! loaded, less what each loaded model's plan takes ([`Hardware::available`]), and never more
//! than a fresh probe shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appl_audit::Digest;
use appl_engine::{ChatTemplateSpec, EngineError, EngineHandle, ModelSpec, QueuePolicy};
use appl_firmware_profiles::gguf::{GgufError, GgufInfo};
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::sizing::{
    self, Deployment, DeviceRef, GpuLayers, MemoryEstimate, ModelSettings, Placement,
};
use appl_firmware_profiles::units::in_mib;
use tracing::{info, warn};

use crate::audit::{file_sha256, FileStamp};
use crate::config::{Config, ConfigError, GpuLayersSetting, ModelConfig};
use crate::registry::{Activity, LoadedModel, Op, Phase, Registry};
use crate::StartupError;

fn template_spec(m: &ModelConfig) -> ChatTemplateSpec {
    let t = m.chat_template.as_str();
    if t == "embedded" {
        ChatTemplateSpec::Embedded
    } else if t.contains('/') || t.ends_with(".jinja") || t.ends_with(".tmpl") {
        ChatTemplateSpec::File(PathBuf::from(t))
    } else {
        ChatTemplateSpec::Named(t.to_owned())
    }
}

/// Why a model was not loaded. The variant decides the exit code at start and the status code
/// of an operator's request; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Missing(GgufError),
    #[error("{0}")]
    Invalid(GgufError),
    #[error("it does not fit this machine: {0}")]
    DoesNotFit(String),
    #[error("probing the hardware for the sizing rules: {0}")]
    Probe(String),
    #[error("{0}")]
    Engine(EngineError),
    #[error("{0}")]
    Changed(Box<FileChanged>),
    #[error("{}: the verified digest beside it ({}) cannot be read: {why}; import the model again with `applctl models import`", path.display(), sidecar.display())]
    BadSidecar {
        path: PathBuf,
        sidecar: PathBuf,
        why: String,
    },
    #[error("{} changed while it was being loaded; replace model files only with `applctl models import` (which renames a complete file into place), then load again", .0.display())]
    ChangedWhileLoading(PathBuf),
    #[error("hashing {}: {source}", path.display())]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GPU{gpu} has a fault ({fault}); no model is loaded onto it until the GPU is reset and appld restarted")]
    GpuFault { gpu: u32, fault: String },
    #[error("the daemon is stopping")]
    Aborted,
}

/// A model file whose digest is not the one verified at import.
#[derive(Debug, thiserror::Error)]
#[error("{} changed on disk since it was verified: {} records SHA-256 {verified}, the file now hashes to {actual}; import it again with `applctl models import`", path.display(), sidecar.display())]
pub struct FileChanged {
    pub path: PathBuf,
    pub sidecar: PathBuf,
    pub verified: String,
    pub actual: String,
    pub digest: Digest,
}

impl LoadError {
    /// A short stable reason for the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::Missing(_) => "model_missing",
            LoadError::Invalid(_) => "model_invalid",
            LoadError::DoesNotFit(_) => "does_not_fit",
            LoadError::Probe(_) => "probe_failed",
            LoadError::Engine(_) => "load_failed",
            LoadError::Changed(_) | LoadError::BadSidecar { .. } => "file_changed",
            LoadError::ChangedWhileLoading(_) => "changed_while_loading",
            LoadError::Hash { .. } => "hash_failed",
            LoadError::GpuFault { .. } => "gpu_fault",
            LoadError::Aborted => "aborted",
        }
    }

    /// The status code an operator's request gets.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            LoadError::Missing(_) => Code::NotFound,
            LoadError::Invalid(_)
            | LoadError::Changed(_)
            | LoadError::BadSidecar { .. }
            | LoadError::ChangedWhileLoading(_) => Code::FailedPrecondition,
            LoadError::DoesNotFit(_) => Code::ResourceExhausted,
            LoadError::GpuFault { .. } | LoadError::Aborted => Code::Unavailable,
            LoadError::Engine(EngineError::ModelLoad { .. } | EngineError::ChatTemplate(_)) => {
                Code::FailedPrecondition
            }
            LoadError::Probe(_) | LoadError::Engine(_) | LoadError::Hash { .. } => Code::Internal,
        }
    }

    /// The digest of the file, when the failure left one known.
    pub fn digest(&self) -> Option<Digest> {
        match self {
            LoadError::Changed(c) => Some(c.digest),
            _ => None,
        }
    }

    /// The start-up error for model `id` (its exit code follows from it).
    pub fn at_startup(self, id: &str) -> StartupError {
        let id = id.to_owned();
        match self {
            LoadError::Missing(source) => StartupError::ModelMissing { id, source },
            LoadError::Invalid(source) => StartupError::ModelInvalid { id, source },
            LoadError::DoesNotFit(reason) => StartupError::Sizing { model: id, reason },
            LoadError::Probe(why) => StartupError::Probe(why),
            LoadError::Engine(source) => StartupError::Model { id, source },
            other => StartupError::ModelRefused { id, source: other },
        }
    }
}

/// What the sizing rules decided for one model.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    pub deployment: Deployment,
    pub estimate: MemoryEstimate,
    pub placement: Placement,
}

impl ModelPlan {
    /// What the model occupies on each device once loaded (weights, KV cache, compute
    /// buffer); the per-device overhead and reserve are the device's, not the model's.
    fn usage(&self) -> impl Iterator<Item = (DeviceRef, u64)> + '_ {
        self.placement
            .devices
            .iter()
            .map(|d| (d.device, d.weights + d.kv + d.compute))
    }
}

/// The machine the sizing rules place models on, as it was before any model loaded.
#[derive(Debug, Clone)]
pub struct Hardware {
    baseline: Inventory,
    /// A recorded inventory stands in for this machine: never probe again.
    recorded: bool,
    /// This build of llama.cpp can offload to GPUs.
    offload: bool,
}

fn adjust(inv: &mut Inventory, device: DeviceRef, bytes: u64, add: bool) {
    let slot = match device {
        DeviceRef::Cpu => Some(&mut inv.memory.available_bytes),
        DeviceRef::Gpu(i) => inv
            .gpus
            .iter_mut()
            .find(|g| g.index == i)
            .map(|g| &mut g.vram_free_bytes),
    };
    if let Some(v) = slot {
        *v = if add {
            v.saturating_add(bytes)
        } else {
            v.saturating_sub(bytes)
        };
    }
}

impl Hardware {
    /// The hardware from the config's recorded inventory, or probed. A probed machine's GPUs
    /// are left out when this build of llama.cpp cannot offload to them; a recorded
    /// inventory's GPUs are kept (models are planned, and their GPUs' health watched, as on
    /// that machine), and the layers then run on the CPU.
    pub fn detect(config: &Config) -> Result<Hardware, StartupError> {
        let path = &config.sizing.inventory;
        let recorded = !path.as_os_str().is_empty();
        let offload =
            appl_engine::gpu_offload_supported().map_err(|source| StartupError::Model {
                id: String::new(),
                source,
            })?;
        let baseline = if recorded {
            let inv = Inventory::from_path(path).map_err(|e| {
                StartupError::Config(ConfigError::Invalid {
                    path: path.clone(),
                    key: "sizing.inventory".into(),
                    reason: format!("cannot be used: {e}"),
                })
            })?;
            if !offload && !inv.gpus.is_empty() {
                warn!(target: "sizing", gpus = inv.gpus.len(),
                    "sizing against the recorded inventory's GPUs; this CPU build of llama.cpp runs the layers on the CPU");
            }
            inv
        } else {
            probe(offload).map_err(StartupError::Probe)?
        };
        Ok(Hardware {
            baseline,
            recorded,
            offload,
        })
    }

    /// The machine before any model loaded.
    pub fn baseline(&self) -> &Inventory {
        &self.baseline
    }

    /// What is free for a new model while `loaded` are loaded, as if `released` were gone: the
    /// baseline less each loaded plan, and no more than a fresh probe shows (plus what
    /// `released` holds).
    pub fn available<'a>(
        &self,
        loaded: impl Iterator<Item = &'a ModelPlan>,
        released: Option<&ModelPlan>,
    ) -> Result<Inventory, LoadError> {
        let mut ledger = self.baseline.clone();
        for p in loaded {
            for (d, bytes) in p.usage() {
                adjust(&mut ledger, d, bytes, false);
            }
        }
        if let Some(r) = released {
            for (d, bytes) in r.usage() {
                adjust(&mut ledger, d, bytes, true);
            }
        }
        if self.recorded {
            return Ok(ledger);
        }
        let mut live = probe(self.offload).map_err(LoadError::Probe)?;
        if let Some(r) = released {
            for (d, bytes) in r.usage() {
                adjust(&mut live, d, bytes, true);
            }
        }
        ledger.memory.available_bytes = ledger
            .memory
            .available_bytes
            .min(live.memory.available_bytes);
        for g in &mut ledger.gpus {
            if let Some(l) = live.gpus.iter().find(|l| l.index == g.index) {
                g.vram_free_bytes = g.vram_free_bytes.min(l.vram_free_bytes);
            }
        }
        Ok(ledger)
    }
}

fn probe(offload: bool) -> Result<Inventory, String> {
    let mut inv = appl_firmware_profiles::probe::probe_system().map_err(|e| e.to_string())?;
    if !offload && !inv.gpus.is_empty() {
        info!(target: "sizing", gpus = inv.gpus.len(), "this is a CPU build of llama.cpp; sizing for host RAM only");
        inv.gpus.clear();
    }
    Ok(inv)
}

/// Reads the model's GGUF header (the one read before llama.cpp opens the file), and applies
/// the sizing rules to it against `inv`: the memory the engine's context needs and where its
/// layers go. Refuses, with the numbers, a model that cannot fit.
pub fn plan_model(m: &ModelConfig, inv: &Inventory) -> Result<ModelPlan, LoadError> {
    let info = GgufInfo::from_path(&m.path).map_err(|source| match source {
        GgufError::NotFound { .. } | GgufError::Unreadable { .. } => LoadError::Missing(source),
        _ => LoadError::Invalid(source),
    })?;
    let deployment = sizing::engine_deployment(&ModelSettings {
        slots: m.slots,
        ctx_per_slot: m.ctx_per_slot,
        batch_tokens: m.batch_tokens,
    });
    let estimate = sizing::estimate(&info, &deployment);
    let layers = match m.gpu_layers {
        GpuLayersSetting::Count(n) => GpuLayers::N(n),
        GpuLayersSetting::Word(_) => GpuLayers::Auto,
    };
    let placement =
        sizing::fit(&estimate, inv, layers).map_err(|e| LoadError::DoesNotFit(e.message))?;
    Ok(ModelPlan {
        deployment,
        estimate,
        placement,
    })
}

/// The digest `applctl models import` verified and wrote beside the file (`<file>.sha256`,
/// as `sha256sum` writes it); `None` when there is none (a model placed by hand).
pub fn verified_digest(path: &Path) -> Result<Option<(PathBuf, String)>, LoadError> {
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = PathBuf::from(sidecar);
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LoadError::BadSidecar {
                path: path.to_owned(),
                sidecar,
                why: e.to_string(),
            })
        }
    };
    let hex = text.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LoadError::BadSidecar {
            path: path.to_owned(),
            sidecar,
            why: "it does not start with 64 hex digits".into(),
        });
    }
    Ok(Some((sidecar, hex.to_ascii_lowercase())))
}

/// How the engines are set up beyond each model's own settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub queue_capacity: u32,
    pub queue: QueuePolicy,
    /// Where the digest cache lives (the audit directory).
    pub digest_cache: PathBuf,
}

impl EngineSettings {
    pub fn of(config: &Config) -> EngineSettings {
        EngineSettings {
            queue_capacity: config.limits.queue_capacity,
            queue: config.queue.policy(),
            digest_cache: config.audit.dir.clone(),
        }
    }
}

/// Loads one planned model: starts its engine while its file is hashed on a second thread
/// (joined before this returns, whatever happens), then refuses it, stopping the engine, if the
/// digest differs from the verified one or the file changed meanwhile. Blocking. `activity`
/// receives the progress.
pub fn start_model(
    m: &ModelConfig,
    plan: ModelPlan,
    hw: &Hardware,
    settings: &EngineSettings,
    activity: &Activity,
) -> Result<LoadedModel, LoadError> {
    let est = &plan.estimate;
    info!(
        target: "sizing",
        model = %m.id,
        weights_mib = in_mib(est.weights),
        kv_mib = in_mib(est.kv),
        compute_mib = in_mib(est.compute),
        output_mib = in_mib(est.output_buffer),
        total_mib = in_mib(est.total),
        placement = %plan.placement.summary(),
        "memory plan"
    );
    let verified = verified_digest(&m.path)?;
    let hashing = {
        let (dir, path, hashed) = (
            settings.digest_cache.clone(),
            m.path.clone(),
            Arc::clone(&activity.hashed),
        );
        std::thread::Builder::new()
            .name("model-sha256".into())
            .spawn(move || file_sha256(&dir, &path, &hashed))
            .map_err(|source| LoadError::Hash {
                path: m.path.clone(),
                source,
            })?
    };
    let spec = ModelSpec {
        id: m.id.clone(),
        path: m.path.clone(),
        deployment: plan.deployment,
        threads: if m.threads == 0 {
            appl_engine::physical_cores()
        } else {
            m.threads
        },
        gpu_layers: if hw.offload {
            plan.placement.n_gpu_layers
        } else {
            0
        },
        chat_template: template_spec(m),
        queue_capacity: settings.queue_capacity,
        queue: settings.queue.clone(),
        load_progress: activity.progress.clone(),
    };
    info!(target: "engine", model = %m.id, path = %m.path.display(), "loading model");
    let engine = EngineHandle::start(spec);
    // Joined whatever the engine did: no thread outlives the load.
    let hashed = hashing.join().map_err(|_| LoadError::Hash {
        path: m.path.clone(),
        source: std::io::Error::other("the hashing thread panicked"),
    });
    let engine = match engine {
        Ok(e) => e,
        Err(EngineError::LoadAborted { .. }) => return Err(LoadError::Aborted),
        Err(e) => return Err(LoadError::Engine(e)),
    };
    match check_file(m, verified, hashed) {
        Ok(digest) => {
            let facts = engine.facts();
            if m.ctx_per_slot > facts.n_ctx_train {
                warn!(target: "engine", model = %m.id, ctx_per_slot = m.ctx_per_slot, n_ctx_train = facts.n_ctx_train,
                    "ctx_per_slot is larger than the context the model was trained with; quality degrades past it");
            }
            info!(target: "engine", model = %m.id, n_params = facts.n_params, size_bytes = facts.size_bytes,
                sha256 = %hex::encode(digest.0), "model loaded");
            Ok(LoadedModel::new(engine, m.clone(), digest, plan))
        }
        Err(e) => {
            if let Err(stop) = engine.stop(ENGINE_STOP_TIMEOUT) {
                warn!(target: "engine", model = %m.id, error = %stop, "the refused model's engine did not stop");
            }
            Err(e)
        }
    }
}

/// The file's digest, once it is known to be the verified one and unchanged since hashing.
fn check_file(
    m: &ModelConfig,
    verified: Option<(PathBuf, String)>,
    hashed: Result<std::io::Result<(Digest, FileStamp)>, LoadError>,
) -> Result<Digest, LoadError> {
    let (digest, stamp) = hashed?.map_err(|source| LoadError::Hash {
        path: m.path.clone(),
        source,
    })?;
    if let Some((sidecar, want)) = verified {
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
    if FileStamp::of(&m.path).ok().as_ref() != Some(&stamp) {
        return Err(LoadError::ChangedWhileLoading(m.path.clone()));
    }
    Ok(digest)
}

/// How long each engine may take to stop once told: it finishes its current step first.
pub const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Loads every configured model with `autoload` into `registry`, in config order, each sized
/// against what the ones before it left free. Blocking: call it before the daemon serves. If
/// one fails, the engines already started are stopped, and the model's id and error returned.
pub fn load_models(
    config: &Config,
    hw: &Hardware,
    registry: &Registry,
) -> Result<(), (String, LoadError)> {
    let settings = EngineSettings::of(config);
    let models: Vec<&ModelConfig> = config.models.iter().filter(|m| m.autoload).collect();
    // Every file is read (and sized alone) before any model loads: a wrong path or a file
    // that is not GGUF gets its own message, without a half-started daemon.
    for m in &models {
        plan_model(m, hw.baseline()).map_err(|e| (m.id.clone(), e))?;
    }
    for m in models {
        let res = (|| {
            let snapshot = registry.snapshot();
            let free = hw.available(snapshot.values().map(|l| &l.plan), None)?;
            let plan = plan_model(m, &free)?;
            let size = std::fs::metadata(&m.path).map_or(0, |md| md.len());
            let activity = Activity::new(Op::Load, Phase::Loading, size);
            registry.set_activity(&m.id, activity.clone());
            let loaded = start_model(m, plan, hw, &settings, &activity);
            registry.clear_activity(&m.id);
            loaded
        })();
        match res {
            Ok(loaded) => {
                registry.insert(Arc::new(loaded));
                registry.counters.loaded();
            }
            Err(e) => {
                registry.stop_all(ENGINE_STOP_TIMEOUT);
                return Err((m.id.clone(), e));
            }
        }
    }
    Ok(())
}
