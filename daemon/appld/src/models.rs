//! Loading the configured models: the sizing rules decide, before llama.cpp allocates
//! anything, whether each model fits this machine and how many layers go to a GPU; then each
//! model's engine starts. [`Engines`] owns the engines and stops them at shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use appl_engine::{ChatTemplateSpec, EngineError, EngineHandle, ModelSpec};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::sizing::{
    self, Deployment, GpuLayers, KvType, MemoryEstimate, Placement,
};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, GpuLayersSetting, ModelConfig};
use crate::StartupError;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

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

/// The model engines, loaded and ready. The owner of the engine threads: [`Engines::stop`]
/// stops and joins every one of them.
#[derive(Debug, Default)]
pub struct Engines {
    engines: BTreeMap<String, EngineHandle>,
}

impl Engines {
    /// The engines by model id (handles are cheap clones).
    pub fn handles(&self) -> &BTreeMap<String, EngineHandle> {
        &self.engines
    }

    /// Stops every engine and joins its thread, each within `timeout`: what is still queued or
    /// running ends as cancelled, and each llama.cpp context is freed. True when all stopped.
    pub fn stop(&self, timeout: Duration) -> bool {
        let mut all = true;
        for (id, e) in &self.engines {
            match e.stop(timeout) {
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

/// The hardware the sizing rules place models on: a recorded inventory if the config names one,
/// else this machine. GPUs are left out when this build of llama.cpp cannot offload to them.
fn sizing_inventory(config: &Config) -> Result<Inventory, StartupError> {
    let path = &config.sizing.inventory;
    let mut inv = if path.as_os_str().is_empty() {
        appl_firmware_profiles::probe::probe_system()
            .map_err(|e| StartupError::Probe(e.to_string()))?
    } else {
        Inventory::from_path(path).map_err(|e| {
            StartupError::Config(ConfigError::Invalid {
                path: path.clone(),
                key: "sizing.inventory".into(),
                reason: format!("cannot be used: {e}"),
            })
        })?
    };
    let offload = appl_engine::gpu_offload_supported().map_err(|source| StartupError::Model {
        id: String::new(),
        source,
    })?;
    if !offload && !inv.gpus.is_empty() {
        info!(target: "sizing", gpus = inv.gpus.len(), "this is a CPU build of llama.cpp; sizing for host RAM only");
        inv.gpus.clear();
    }
    Ok(inv)
}

/// Applies the sizing rules to one model: the memory it needs and where its layers go. Refuses,
/// with the numbers, a model that cannot fit, before llama.cpp allocates anything.
fn plan_model(
    m: &ModelConfig,
    inv: &Inventory,
    n_batch: u32,
) -> Result<(MemoryEstimate, Placement), StartupError> {
    let info = GgufInfo::from_path(&m.path).map_err(|e| StartupError::Model {
        id: m.id.clone(),
        source: EngineError::ModelFile {
            path: m.path.clone(),
            reason: e.to_string(),
        },
    })?;
    let deployment = Deployment {
        ctx_per_slot: m.ctx_per_slot,
        slots: m.slots,
        n_batch,
        n_ubatch: n_batch.min(512),
        kv_type: KvType::F16,
        flash_attn: true,
        swa_full: true,
        kv_unified: true,
    };
    let estimate = sizing::estimate(&info, &deployment);
    let layers = match m.gpu_layers {
        GpuLayersSetting::Count(n) => GpuLayers::N(n),
        GpuLayersSetting::Word(_) => GpuLayers::Auto,
    };
    let placement = sizing::fit(&estimate, inv, layers).map_err(|e| StartupError::Sizing {
        model: m.id.clone(),
        reason: e.message,
    })?;
    Ok((estimate, placement))
}

/// How long each engine may take to stop once told: it finishes its current step first.
pub const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Loads every configured model. Blocking: call it before the runtime serves traffic. If one
/// model fails, the engines already started are stopped before the error is returned.
pub fn load_models(config: &Config) -> Result<Engines, StartupError> {
    let mut engines = Engines::default();
    match load_into(config, &mut engines) {
        Ok(()) => Ok(engines),
        Err(e) => {
            engines.stop(ENGINE_STOP_TIMEOUT);
            Err(e)
        }
    }
}

fn load_into(config: &Config, engines: &mut Engines) -> Result<(), StartupError> {
    let cores = appl_engine::physical_cores();
    // The common mistakes (a wrong path, a file that is not GGUF) get their own message first.
    for m in &config.models {
        appl_engine::check_gguf_file(&m.path).map_err(|source| StartupError::Model {
            id: m.id.clone(),
            source,
        })?;
    }
    let inventory = sizing_inventory(config)?;
    for m in &config.models {
        let n_batch = m.batch_tokens.max(m.slots);
        let gpu_layers = {
            let (est, placement) = plan_model(m, &inventory, n_batch)?;
            info!(
                target: "sizing",
                model = %m.id,
                weights_mib = mib(est.weights),
                kv_mib = mib(est.kv),
                compute_mib = mib(est.compute),
                output_mib = mib(est.output_buffer),
                total_mib = mib(est.total),
                placement = %placement.summary(),
                "memory plan"
            );
            placement.n_gpu_layers
        };
        let spec = ModelSpec {
            id: m.id.clone(),
            path: m.path.clone(),
            slots: m.slots,
            ctx_per_slot: m.ctx_per_slot,
            batch_tokens: m.batch_tokens,
            threads: if m.threads == 0 { cores } else { m.threads },
            gpu_layers,
            chat_template: template_spec(m),
            queue_capacity: config.limits.queue_capacity,
            queue: config.queue.policy(),
        };
        info!(target: "engine", model = %m.id, path = %m.path.display(), "loading model");
        let engine = EngineHandle::start(spec).map_err(|source| StartupError::Model {
            id: m.id.clone(),
            source,
        })?;
        let facts = engine.facts();
        if m.ctx_per_slot > facts.n_ctx_train {
            warn!(target: "engine", model = %m.id, ctx_per_slot = m.ctx_per_slot, n_ctx_train = facts.n_ctx_train,
                "ctx_per_slot is larger than the context the model was trained with; quality degrades past it");
        }
        info!(target: "engine", model = %m.id, n_params = facts.n_params, size_bytes = facts.size_bytes, "model loaded");
        engines.engines.insert(m.id.clone(), engine);
    }
    Ok(())
}
