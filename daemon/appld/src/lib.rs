//! appld: the appl daemon.
//!
//! `main` parses flags, reads the config, sets up logging, loads the models, binds the sockets
//! and calls [`serve`] with those listeners and a shutdown future. Tests start the real binary on
//! port 0 and a temporary Unix socket.
//!
//! Startup failures map to exit codes that systemd and operators can tell apart; see
//! [`StartupError::exit_code`].

pub mod api;
pub mod audit;
pub mod audit_rpc;
pub mod backends;
pub mod config;
pub mod metrics;
pub mod queue;
pub mod systemd;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appl_engine::{ChatTemplateSpec, EngineError, EngineHandle, ModelSpec};
use appl_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, inference_server::InferenceServer,
};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::{info, warn};

use crate::api::{Api, AppState};
use crate::config::{Config, ConfigError, GpuLayersSetting, ModelConfig};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::sizing::{
    self, Deployment, GpuLayers, KvType, MemoryEstimate, Placement,
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model {id}: {source}")]
    Model { id: String, source: EngineError },
    #[error("model {model} does not fit this machine: {reason}")]
    Sizing { model: String, reason: String },
    #[error("audit log: {0}")]
    Audit(#[from] appl_audit::AuditError),
    /// No llama.cpp backend this machine can run (exit 69), or none could be loaded.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// `APPL_CPU_VARIANT` names a variant that cannot run here (exit 78).
    #[error("llama.cpp backend: {0}")]
    BackendForced(String),
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

impl StartupError {
    /// sysexits(3) codes: 78 bad configuration, 66 a model file is missing, 65 a model file is
    /// not a usable GGUF, 69 a model does not fit the hardware, 71 an OS error such as a port in
    /// use, 74 the audit log cannot be opened or written.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            StartupError::Model { source, .. } => match source {
                EngineError::ModelFile { reason, .. } if reason.starts_with("does not exist") => 66,
                EngineError::ModelFile { .. } | EngineError::ModelLoad { .. } => 65,
                EngineError::ChatTemplate(_) => 78,
                _ => 71,
            },
            StartupError::Sizing { .. } | StartupError::Backend(_) => 69,
            StartupError::BackendForced(_) => 78,
            StartupError::Bind { .. } => 71,
            StartupError::Audit(_) => 74,
        }
    }
}

/// The sockets the daemon serves on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
    /// Prometheus metrics (`server.metrics_listen`).
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds what the config asks for. A stale Unix socket file left by an earlier run is
    /// replaced.
    pub async fn bind(config: &Config) -> Result<Self, StartupError> {
        let mut l = Listeners::default();
        let s = &config.server;
        if !s.listen.is_empty() {
            let tcp = TcpListener::bind(&s.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    what: format!("tcp {}", s.listen),
                    source,
                })?;
            l.tcp = Some(tcp);
        }
        if !s.socket.as_os_str().is_empty() {
            let path = &s.socket;
            let bind_err = |source| StartupError::Bind {
                what: format!("unix socket {}", path.display()),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(bind_err)?;
            }
            remove_stale_socket(path).map_err(bind_err)?;
            let unix = UnixListener::bind(path).map_err(bind_err)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(s.socket_mode))
                .map_err(bind_err)?;
            l.unix = Some((unix, path.clone()));
        }
        if !s.metrics_listen.is_empty() {
            let m = TcpListener::bind(&s.metrics_listen)
                .await
                .map_err(|source| StartupError::Bind {
                    what: format!("metrics tcp {}", s.metrics_listen),
                    source,
                })?;
            l.metrics = Some(m);
        }
        Ok(l)
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; refusing to replace it",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

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

/// The model engines, loaded and ready.
#[derive(Debug)]
pub struct Engines {
    engines: BTreeMap<String, EngineHandle>,
}

/// The hardware the sizing rules place models on: a recorded inventory if the config names one,
/// else this machine. GPUs are left out when this build of llama.cpp cannot offload to them.
fn sizing_inventory(config: &Config) -> Result<Inventory, StartupError> {
    let sizing_err = |reason: String| StartupError::Sizing {
        model: String::new(),
        reason,
    };
    let path = &config.sizing.inventory;
    let mut inv = if path.as_os_str().is_empty() {
        appl_firmware_profiles::probe::probe_system()
            .map_err(|e| sizing_err(format!("probing the hardware: {e}")))?
    } else {
        Inventory::from_path(path).map_err(|e| {
            StartupError::Config(ConfigError::Invalid {
                path: path.clone(),
                key: "sizing.inventory".into(),
                reason: format!("cannot be used: {e}"),
            })
        })?
    };
    let offload = appl_engine::gpu_offload_supported().map_err(|e| sizing_err(e.to_string()))?;
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

/// Loads every configured model. Blocking: call it before the runtime serves traffic.
pub fn load_models(config: &Config) -> Result<Engines, StartupError> {
    load_models_reporting(config, &|_| {})
}

/// [`load_models`], telling `progress` what it is doing (for systemd's `STATUS=`). First it
/// chooses and loads llama.cpp's backends for this machine.
pub fn load_models_reporting(
    config: &Config,
    progress: &dyn Fn(&str),
) -> Result<Engines, StartupError> {
    let choice = backends::load()?;
    progress(&format!("llama.cpp CPU backend: {}", choice.cpu));
    let mut engines = BTreeMap::new();
    let cores = appl_engine::physical_cores();
    // The common mistakes (a wrong path, a file that is not GGUF) get their own message first.
    for m in &config.models {
        appl_engine::check_gguf_file(&m.path).map_err(|source| StartupError::Model {
            id: m.id.clone(),
            source,
        })?;
    }
    let inventory = sizing_inventory(config)?;
    for (i, m) in config.models.iter().enumerate() {
        progress(&format!(
            "loading model {} ({} of {})",
            m.id,
            i + 1,
            config.models.len()
        ));
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
        engines.insert(m.id.clone(), engine);
    }
    Ok(Engines { engines })
}

/// Serves gRPC on the given listeners until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    config: &Config,
    engines: Engines,
    auditor: audit::Auditor,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let chat_templates = config
        .models
        .iter()
        .map(|m| (m.id.clone(), m.chat_template.clone()))
        .collect();
    let default_model = config.default_model().unwrap_or_default().to_owned();
    let state = Arc::new(
        AppState::new(
            engines.engines,
            default_model,
            config.limits.clone(),
            chat_templates,
        )
        .with_tenants(queue::tenants(&config.tenants)),
    );
    let metrics_state = Arc::clone(&state);
    let auditor = Arc::new(auditor);
    let api = Api::new(state, auditor.clone());
    let audit_rpc = audit_rpc::AuditRpc::new(auditor.clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<InferenceServer<Api>>().await;
    health_reporter.set_serving::<AdminServer<Api>>().await;
    health_reporter
        .set_serving::<AuditServer<audit_rpc::AuditRpc>>()
        .await;
    // Inference (and the server as a whole) is NOT_SERVING while the audit log cannot write.
    let audit_health = auditor.watch_health(health_reporter.clone());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(appl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(appl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let router = || {
        tonic::transport::Server::builder()
            .add_service(InferenceServer::new(api.clone()))
            .add_service(AdminServer::new(api.clone()))
            .add_service(AuditServer::new(audit_rpc.clone()))
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let tcp_addr = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok());
    let socket_path = listeners.unix.as_ref().map(|(_, p)| p.clone());
    let metrics_addr = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(m) = listeners.metrics {
        tokio::spawn(metrics::serve(m, metrics_state, stop_rx.clone()));
    }
    if let Some(tcp) = listeners.tcp {
        let server = router()
            .serve_with_incoming_shutdown(TcpListenerStream::new(tcp), stopped(stop_rx.clone()));
        tasks.spawn(server);
    }
    if let Some((unix, _)) = listeners.unix {
        let server = router()
            .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(stop_rx.clone()));
        tasks.spawn(server);
    }
    info!(
        tcp = %tcp_addr.map(|a| a.to_string()).unwrap_or_default(),
        socket = %socket_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        "ready"
    );

    let drain = std::time::Duration::from_secs(config.server.drain_timeout_secs);
    let (drained_tx, mut drained_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        info!(
            drain_timeout_s = drain.as_secs(),
            "shutting down: no new connections; finishing requests in flight"
        );
        let _ = stop_tx.send(true);
        tokio::time::sleep(drain).await;
        let _ = drained_tx.send(());
    });
    let mut served = Ok(());
    loop {
        tokio::select! {
            res = tasks.join_next() => match res {
                None => break,
                Some(res) => {
                    if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| Ok(r?)) {
                        served = Err(e);
                        break;
                    }
                }
            },
            Ok(()) = &mut drained_rx => {
                // Connections still open past the drain timeout are cut; their requests are
                // cancelled, and their audit records show them admitted but not completed.
                warn!(open_servers = tasks.len(), "drain timeout reached; closing the remaining connections");
                tasks.abort_all();
                break;
            }
        }
    }
    // Every request has finished (or been recorded as cancelled): record the stop, sign a
    // final checkpoint and close the store.
    auditor.stop().await;
    audit_health.abort();
    served?;
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    info!("stopped");
    Ok(())
}
