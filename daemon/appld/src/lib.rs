//! appld: the appl daemon.
//!
//! `main` parses flags, reads the config, sets up logging, binds the sockets
//! ([`Listeners::bind`]) and calls [`run`] with them and a shutdown future: the same path tests
//! and systemd take. [`run`] opens the audit log, loads the models, serves until shutdown, then
//! drains and stops every engine thread before it returns.
//!
//! Startup failures map to exit codes that systemd and operators can tell apart; see
//! [`StartupError::exit_code`].
//!
//! The request path: `transport` (TLS, the peer) → `identity::edge` (who calls, which roles,
//! input limits) → `api` (the gRPC face) → `request::validate` → `tenants` (the permit) →
//! `audit` (the admitted record) → `request::drive` (the engine, the completed record) → back
//! through `api`. The OpenAI-compatible HTTP face (`openai`) takes the same path from the
//! edge on. SIGHUP reloads identities, keys, tenants, limits and TLS (`reload`).

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod audit_rpc;
pub mod backends;
pub mod config;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod listeners;
pub mod live;
pub mod measure;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod ops_config;
pub mod registry;
pub mod reload;
pub mod request;
pub mod serve;
pub mod state;
pub mod systemd;
pub mod tenants;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use appl_engine::EngineError;
use tracing::info;

use crate::audit::Auditor;
use crate::config::{Config, ConfigError};
use crate::registry::Registry;

pub use listeners::Listeners;
pub use models::{load_models, Hardware};
pub use reload::ReloadSource;
pub use serve::serve;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model {id}: {source}")]
    ModelMissing {
        id: String,
        source: appl_firmware_profiles::gguf::GgufError,
    },
    #[error("model {id}: {source}")]
    ModelInvalid {
        id: String,
        source: appl_firmware_profiles::gguf::GgufError,
    },
    #[error("model {id}: {source}")]
    Model { id: String, source: EngineError },
    #[error("model {model} does not fit this machine: {reason}")]
    Sizing { model: String, reason: String },
    #[error("probing the hardware for the sizing rules: {0}")]
    Probe(String),
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
    #[error("the model hashing thread failed: {0}")]
    Hashing(String),
    /// A model refused for a reason of its file (changed since it was verified) or the GPU it
    /// was to go on.
    #[error("model {id}: {source}")]
    ModelRefused {
        id: String,
        source: models::LoadError,
    },
}

impl StartupError {
    /// sysexits(3) codes: 78 bad configuration, 66 a model file is missing or unreadable, 65 a
    /// model file is not a usable GGUF, 69 a model does not fit the hardware, 71 an OS error such as a port in
    /// use or a failed hardware probe, 74 the audit log cannot be opened or written.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            StartupError::ModelMissing { .. } => 66,
            StartupError::ModelInvalid { .. } => 65,
            StartupError::Model { source, .. } => match source {
                EngineError::ModelLoad { .. } => 65,
                EngineError::ChatTemplate(_) => 78,
                _ => 71,
            },
            StartupError::Sizing { .. } | StartupError::Backend(_) => 69,
            StartupError::BackendForced(_) => 78,
            StartupError::Probe(_) | StartupError::Bind { .. } | StartupError::Hashing(_) => 71,
            StartupError::Audit(_) => 74,
            StartupError::ModelRefused { source, .. } => match source {
                models::LoadError::Hash { .. } | models::LoadError::Missing(_) => 66,
                models::LoadError::DoesNotFit(_) | models::LoadError::GpuFault { .. } => 69,
                models::LoadError::Aborted | models::LoadError::Probe(_) => 71,
                _ => 65,
            },
        }
    }
}

/// Runs the daemon on bound listeners until `shutdown` resolves: opens the audit log (nothing is
/// served unless it can write), loads every model (hashing each GGUF file while llama.cpp reads
/// it) and records each load, serves, then drains, stops and joins every engine, and closes the
/// audit log.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let opts = RunOptions::new(&config);
    run_with(config, listeners, shutdown, opts).await
}

/// What the `appld` binary gives [`run_with`] beyond the config: the registry it may watch, the
/// reload signal and systemd's notifier.
#[derive(Debug)]
pub struct RunOptions {
    /// The models served. [`Registry::status_line`] says what is being loaded, with its
    /// progress, at start and at run time.
    pub registry: Arc<Registry>,
    /// Each message reloads the config file (SIGHUP).
    pub reload: Option<ReloadSource>,
    /// systemd's notify protocol: `STATUS=` while models load and change, `READY=1` once
    /// serving, watchdog pings while every engine's loop goes round. A no-op outside systemd.
    pub notifier: Arc<systemd::Notifier>,
}

impl RunOptions {
    /// No reload source, no systemd, a fresh registry.
    pub fn new(config: &Config) -> RunOptions {
        RunOptions {
            registry: Arc::new(Registry::new(config.default_model().unwrap_or_default())),
            reload: None,
            notifier: Arc::new(systemd::Notifier::default()),
        }
    }
}

/// [`run`] with the binary's [`RunOptions`].
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opts: RunOptions,
) -> anyhow::Result<()> {
    // Bad TLS files are a configuration error: found before anything else starts.
    check_tls(&config)?;
    let RunOptions {
        registry,
        reload,
        notifier,
    } = opts;
    let status = systemd::spawn_status(Arc::clone(&notifier), Arc::clone(&registry));
    let ran = start_and_serve(config, listeners, shutdown, registry, reload, notifier).await;
    status.abort();
    ran
}

async fn start_and_serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registry: Arc<Registry>,
    reload: Option<ReloadSource>,
    notifier: Arc<systemd::Notifier>,
) -> anyhow::Result<()> {
    let auditor = Auditor::open(&config.audit)
        .await
        .map_err(StartupError::from)?;
    let ids: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    notifier.status(&match ids.as_slice() {
        [one] => format!("loading model {one}"),
        many => format!("loading {} models: {}", many.len(), many.join(", ")),
    });
    let loaded = tokio::task::block_in_place(|| -> Result<Hardware, Failed> {
        backends::load()?;
        let hw = Hardware::detect(&config)?;
        load_models(&config, &hw, &registry).map_err(|(id, error)| LoadFailed { id, error })?;
        Ok(hw)
    });
    let failed = match loaded {
        Ok(hw) => {
            let mut recorded = Ok(());
            for (id, m) in registry.snapshot().iter() {
                recorded = auditor.model_loaded_at_start(id, m.sha256).await;
                if recorded.is_err() {
                    break;
                }
            }
            match recorded {
                Ok(()) => {
                    info!(models = registry.snapshot().len(), "models loaded");
                    return serve(
                        &config,
                        registry,
                        hw,
                        auditor,
                        listeners,
                        shutdown,
                        serve::Extras { reload, notifier },
                    )
                    .await;
                }
                Err(e) => {
                    tokio::task::block_in_place(|| registry.stop_all(models::ENGINE_STOP_TIMEOUT));
                    StartupError::from(e)
                }
            }
        }
        Err(Failed::Startup(e)) => e,
        Err(Failed::Load(LoadFailed { id, error })) => {
            let sha = error.digest().or_else(|| {
                let m = config.models.iter().find(|m| m.id == id)?;
                audit::known_sha256(&config.audit.dir, &m.path)
            });
            let _ = auditor
                .model_load_failed_at_start(&id, sha, error.code(), error.reason())
                .await;
            error.at_startup(&id)
        }
    };
    auditor.stop_startup_failed().await;
    Err(failed.into())
}

/// A configured model that failed to load at start.
struct LoadFailed {
    id: String,
    error: models::LoadError,
}

/// Why start-up stopped before serving.
enum Failed {
    Startup(StartupError),
    Load(LoadFailed),
}

impl From<StartupError> for Failed {
    fn from(e: StartupError) -> Failed {
        Failed::Startup(e)
    }
}

impl From<LoadFailed> for Failed {
    fn from(e: LoadFailed) -> Failed {
        Failed::Load(e)
    }
}

/// Loads the TLS material `[tls]` names when TCP is served with TLS, so that a missing or bad
/// file is reported at once (exit 78), by `--check-config` too.
pub fn check_tls(config: &Config) -> Result<(), StartupError> {
    if config.serves_tcp() && !config.tls.insecure_plaintext {
        tls::load(&config.tls).map_err(|e| StartupError::Config(ConfigError::Tls(e)))?;
    }
    Ok(())
}
