//! Loading the configured models: the sizing rules decide, before llama.cpp allocates
//! anything, whether each model fits this machine and how many layers go to a GPU; then each
//! model's engine starts. [`Engines`] owns the engines and stops them at shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use appl_engine::{ChatTemplateSpec, EngineHandle, ModelSpec};
use appl_firmware_profiles::gguf::{GgufError, GgufInfo};
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::sizing::{
    self, Deployment, GpuLayers, MemoryEstimate, ModelSettings, Placement,
};
use appl_firmware_profiles::units::in_mib;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, GpuLayersSetting, ModelConfig};
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

/// What the sizing rules decided for one model.
struct Plan {
    deployment: Deployment,
    estimate: MemoryEstimate,
    placement: Placement,
}

/// Reads the model's GGUF header (the one read before llama.cpp opens the file), and applies
/// the sizing rules to it: the memory the engine's context needs and where its layers go.
/// Refuses, with the numbers, a model that cannot fit, before llama.cpp allocates anything.
fn plan_model(m: &ModelConfig, inv: &Inventory) -> Result<Plan, StartupError> {
    let info = GgufInfo::from_path(&m.path).map_err(|source| match source {
        GgufError::NotFound { .. } | GgufError::Unreadable { .. } => StartupError::ModelMissing {
            id: m.id.clone(),
            source,
        },
        _ => StartupError::ModelInvalid {
            id: m.id.clone(),
            source,
        },
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
    let placement = sizing::fit(&estimate, inv, layers).map_err(|e| StartupError::Sizing {
        model: m.id.clone(),
        reason: e.message,
    })?;
    Ok(Plan {
        deployment,
        estimate,
        placement,
    })
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
    // Every file is checked (and sized) before any model loads: a wrong path or a file that
    // is not GGUF gets its own message, without a half-started daemon.
    let inventory = sizing_inventory(config)?;
    let plans = config
        .models
        .iter()
        .map(|m| plan_model(m, &inventory))
        .collect::<Result<Vec<_>, _>>()?;
    for (m, plan) in config.models.iter().zip(plans) {
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
        let spec = ModelSpec {
            id: m.id.clone(),
            path: m.path.clone(),
            deployment: plan.deployment,
            threads: if m.threads == 0 { cores } else { m.threads },
            gpu_layers: plan.placement.n_gpu_layers,
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
