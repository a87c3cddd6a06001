//! appld: the appl daemon.
//!
//! `main` parses flags, reads the config, sets up logging, loads the models, binds the sockets
//! and calls [`serve`] with those listeners and a shutdown future. Tests start the real binary on
//! port 0 and a temporary Unix socket.
//!
//! Startup failures map to exit codes that systemd and operators can tell apart; see
//! [`StartupError::exit_code`].

pub mod api;
pub mod config;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appl_engine::{ChatTemplateSpec, EngineError, EngineHandle, ModelSpec};
use appl_proto::v1::{admin_server::AdminServer, inference_server::InferenceServer};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::{info, warn};

use crate::api::{Api, AppState};
use crate::config::{Config, ConfigError, ModelConfig};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model {id}: {source}")]
    Model { id: String, source: EngineError },
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

impl StartupError {
    /// sysexits(3) codes: 78 bad configuration, 66 a model file is missing, 65 a model file is
    /// not a usable GGUF, 71 an OS error such as a port in use.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            StartupError::Model { source, .. } => match source {
                EngineError::ModelFile { reason, .. } if reason.starts_with("does not exist") => 66,
                EngineError::ModelFile { .. } | EngineError::ModelLoad { .. } => 65,
                EngineError::ChatTemplate(_) => 78,
                _ => 71,
            },
            StartupError::Bind { .. } => 71,
        }
    }
}

/// The sockets the daemon serves on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
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

/// Loads every configured model. Blocking: call it before the runtime serves traffic.
pub fn load_models(config: &Config) -> Result<Engines, StartupError> {
    let mut engines = BTreeMap::new();
    let cores = appl_engine::physical_cores();
    for m in &config.models {
        let spec = ModelSpec {
            id: m.id.clone(),
            path: m.path.clone(),
            slots: m.slots,
            ctx_per_slot: m.ctx_per_slot,
            batch_tokens: m.batch_tokens,
            threads: if m.threads == 0 { cores } else { m.threads },
            gpu_layers: m.gpu_layers,
            chat_template: template_spec(m),
            queue_capacity: config.limits.queue_capacity,
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
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let chat_templates = config
        .models
        .iter()
        .map(|m| (m.id.clone(), m.chat_template.clone()))
        .collect();
    let default_model = config.default_model().unwrap_or_default().to_owned();
    let state = Arc::new(AppState::new(
        engines.engines,
        default_model,
        config.limits.clone(),
        chat_templates,
    ));
    let api = Api::new(state);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<InferenceServer<Api>>().await;
    health_reporter.set_serving::<AdminServer<Api>>().await;
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
        "ready"
    );

    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    while let Some(res) = tasks.join_next().await {
        res??;
    }
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    info!("stopped");
    Ok(())
}
