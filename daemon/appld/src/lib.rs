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
//! The request path: `api` (the gRPC face) → `identity` (who calls) → `request::validate` →
//! `tenants` (the permit) → `audit` (the admitted record) → `request::drive` (the engine, the
//! completed record) → back through `api`.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod audit_rpc;
pub mod config;
pub mod identity;
pub mod listeners;
pub mod measure;
pub mod metrics;
pub mod models;
pub mod request;
pub mod serve;
pub mod state;
pub mod tenants;
pub mod transport;

use std::future::Future;

use appl_engine::EngineError;
use tracing::info;

use crate::audit::Auditor;
use crate::config::{Config, ConfigError};

pub use listeners::Listeners;
pub use models::{load_models, Engines};
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
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("the model hashing thread failed: {0}")]
    Hashing(String),
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
            StartupError::Sizing { .. } => 69,
            StartupError::Probe(_) | StartupError::Bind { .. } | StartupError::Hashing(_) => 71,
            StartupError::Audit(_) => 74,
        }
    }
}

/// Runs the daemon on bound listeners until `shutdown` resolves: opens the audit log (nothing is
/// served unless it can write), loads every model while the GGUF files are hashed for the audit
/// records, serves, then drains, stops and joins every engine, and closes the audit log.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut auditor = Auditor::open(&config.audit)
        .await
        .map_err(StartupError::from)?;
    // Hash the GGUF files (for the audit records) while llama.cpp loads them.
    let hashing = {
        let config = config.clone();
        std::thread::Builder::new()
            .name("model-sha256".into())
            .spawn(move || audit::hash_models(&config))
            .map_err(|e| StartupError::Hashing(e.to_string()))?
    };
    let loaded = tokio::task::block_in_place(|| load_models(&config));
    // Joined whatever `loaded` says: no thread outlives start-up.
    let digests = hashing
        .join()
        .map_err(|_| StartupError::Hashing("it panicked".into()));
    let failed = match (loaded, digests) {
        (Ok(engines), Ok(Ok(digests))) => {
            if let Err(e) = auditor.models_loaded(digests).await {
                tokio::task::block_in_place(|| engines.stop(models::ENGINE_STOP_TIMEOUT));
                auditor.stop_startup_failed().await;
                return Err(StartupError::from(e).into());
            }
            info!(models = engines.handles().len(), "models loaded");
            return serve(&config, engines, auditor, listeners, shutdown).await;
        }
        (Err(e), _) => e,
        (Ok(engines), Ok(Err(e))) => {
            tokio::task::block_in_place(|| engines.stop(models::ENGINE_STOP_TIMEOUT));
            StartupError::from(e)
        }
        (Ok(engines), Err(e)) => {
            tokio::task::block_in_place(|| engines.stop(models::ENGINE_STOP_TIMEOUT));
            e
        }
    };
    auditor.stop_startup_failed().await;
    Err(failed.into())
}
