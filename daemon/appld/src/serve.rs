//! Serving: gRPC (with grpc.health.v1 and reflection) on TCP and the Unix socket, the
//! OpenAI-compatible HTTP API on its own port (`[openai]`), metrics on theirs, until the shutdown future resolves; then the drain, in this order:
//!
//! 1. stop admitting: no new connections, health `NOT_SERVING`, new requests `UNAVAILABLE`;
//! 2. requests in flight finish, for up to `server.drain_timeout_secs`;
//! 3. past that, every engine is stopped and joined: what still runs ends with a final
//!    `cancelled` message, and each llama.cpp context is freed on its own thread;
//! 4. the streams deliver their last message (briefly), then the remaining connections are cut;
//! 5. model operations in progress are aborted, the health sampler stops and the faults it
//!    found are recorded;
//! 6. the audit log records the stop, signs a final checkpoint and closes.
//!
//! Every request passes the edge layer first ([`crate::identity::edge`]): identity, roles,
//! metadata and message limits, admin-action records. SIGHUP reloads what can change at run
//! time ([`crate::reload`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use appl_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, inference_server::InferenceServer,
};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::api::Api;
use crate::audit::Auditor;
use crate::audit_rpc::AuditRpc;
use crate::config::{Config, MAX_MESSAGE_BYTES};
use crate::health::faults::handle_faults;
use crate::health::{HealthSampler, HealthState, Sampler};
use crate::identity::edge::EdgeLayer;
use crate::identity::AuthTable;
use crate::lifecycle::{ManagerParts, ModelManager};
use crate::listeners::Listeners;
use crate::live::Live;
use crate::models::{Hardware, ENGINE_STOP_TIMEOUT};
use crate::registry::{model_service, Registry};
use crate::reload::{ReloadSource, Reloader};
use crate::state::{AppState, TransportStatus};
use crate::systemd::{self, Notifier};
use crate::transport::{self, Incoming};
use crate::{metrics, tenants};

/// How long requests ended by an engine stop have to deliver their last message.
const FINAL_MESSAGE_GRACE: Duration = Duration::from_secs(5);

/// How long the health sampler may take to finish a sample and stop.
const SAMPLER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Services whose health goes `NOT_SERVING` while the daemon drains.
const DRAINED_SERVICES: [&str; 2] = ["", "appl.v1.Inference"];

/// What serving takes beyond the parts every daemon has.
#[derive(Debug)]
pub struct Extras {
    /// Each message reloads the config file.
    pub reload: Option<ReloadSource>,
    /// Told `READY=1` once every listener serves; pinged as systemd's watchdog while every
    /// engine's loop goes round.
    pub notifier: Arc<Notifier>,
}

/// Serves on the given listeners until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    config: &Config,
    registry: Arc<Registry>,
    hardware: Hardware,
    auditor: Auditor,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extras: Extras,
) -> anyhow::Result<()> {
    let Extras { reload, notifier } = extras;
    let health = Arc::new(HealthState::default());
    let state = Arc::new(
        AppState::new(Arc::clone(&registry), config.limits.clone())
            .with_tenants(tenants::table(&config.tenants))
            .with_health(Arc::clone(&health))
            .with_auth(AuthTable::from_config(config)),
    );
    let tcp_mode = config.tls.mode(listeners.tcp.is_some());
    let on_tcp = listeners.tcp.is_some() || listeners.openai.is_some();
    let tls = match (on_tcp, config.tls.insecure_plaintext) {
        (true, false) => {
            let m = crate::tls::load(&config.tls)
                .map_err(|e| crate::StartupError::Config(crate::config::ConfigError::Tls(e)))?;
            Some(Arc::new(Live::new(m)))
        }
        _ => None,
    };
    state.transport.set(Arc::new(TransportStatus {
        mode: tcp_mode,
        certificates: tls
            .as_ref()
            .map(|t| t.get().certificates.clone())
            .unwrap_or_default(),
    }));
    if listeners.openai.is_some() && config.tls.insecure_plaintext {
        warn!(
            target: "auth",
            listen = %config.openai.listen,
            "INSECURE: the OpenAI-compatible HTTP API is served WITHOUT TLS \
             (tls.insecure_plaintext = true): API keys, prompts and answers cross the network in \
             clear; use it only on 127.0.0.1 for a demo"
        );
    }
    if tcp_mode == "plaintext" {
        warn!(
            target: "auth",
            listen = %config.server.listen,
            anonymous_roles = %config.auth.anonymous_roles.iter().map(|r| r.name()).collect::<Vec<_>>().join("+"),
            "INSECURE: gRPC on TCP is served WITHOUT TLS (tls.insecure_plaintext = true): anyone on \
             the network can read prompts and answers, and API keys; use it only on 127.0.0.1 for \
             a demo"
        );
    }
    if let Some(t) = &tls {
        for c in t.get().expiring(Duration::from_secs(30 * 86_400)) {
            warn!(target: "auth", role = c.role, subject = %c.subject,
                not_after = %appl_audit::Timestamp::from_system(c.not_after), "certificate expires within 30 days");
        }
    }
    let auditor = Arc::new(auditor);
    let audit_rpc = AuditRpc::new(Arc::clone(&auditor));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<InferenceServer<Api>>().await;
    health_reporter.set_serving::<AdminServer<Api>>().await;
    health_reporter.set_serving::<AuditServer<AuditRpc>>().await;
    for id in registry.snapshot().keys() {
        health_reporter
            .set_service_status(model_service(id), ServingStatus::Serving)
            .await;
    }
    // Inference (and the server as a whole) is NOT_SERVING while the audit log cannot write.
    let audit_health = auditor.watch_health(health_reporter.clone());
    let manager = Arc::new(ModelManager::new(ManagerParts {
        registry: Arc::clone(&registry),
        hardware: hardware.clone(),
        config: Arc::new(config.clone()),
        auditor: Arc::clone(&auditor),
        reporter: health_reporter.clone(),
        health: Arc::clone(&health),
    }));
    let api = Api::new(
        Arc::clone(&state),
        Arc::clone(&auditor),
        Arc::clone(&manager),
    );
    // Hardware health: the sampler thread, and the task that acts on the faults it finds.
    let (fault_tx, fault_rx) = tokio::sync::mpsc::unbounded_channel();
    let faults = tokio::spawn(handle_faults(
        fault_rx,
        Arc::clone(&registry),
        health_reporter.clone(),
        Arc::clone(&auditor),
    ));
    let sampler = HealthSampler::start(
        Sampler::from_config(&config.health, hardware.baseline().clone()),
        config.health.interval(),
        Arc::clone(&health),
        fault_tx,
    )?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(appl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(appl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The edge enforces `limits.max_message_bytes`, naming the key; these are ceilings only.
    let routes = tonic::service::Routes::new(
        InferenceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(AdminServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
    .add_service(AuditServer::new(audit_rpc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
    .add_service(health_service.clone())
    .add_service(reflection_v1.clone())
    .add_service(reflection_v1alpha.clone())
    .prepare()
    .into_axum_router()
    .layer(EdgeLayer::new(Arc::clone(&state), Arc::clone(&auditor)));
    let mut openai_routes = crate::openai::router(Arc::clone(&state), Arc::clone(&auditor));
    if config.openai.metrics {
        openai_routes = openai_routes.merge(metrics::router_on_api(
            Arc::clone(&state),
            Arc::clone(&auditor),
        ));
    }
    let openai_routes =
        openai_routes.layer(EdgeLayer::openai(Arc::clone(&state), Arc::clone(&auditor)));
    if let Some(r) = reload {
        let reloader = Reloader::new(
            r.path,
            config.clone(),
            Arc::clone(&state),
            tls.clone(),
            Arc::clone(&auditor),
        );
        tokio::spawn(reloader.run(r.signals));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    let tcp_addr = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok());
    let socket_path = listeners.unix.as_ref().map(|(_, p)| p.clone());
    let metrics_addr = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok());
    let openai_addr = listeners.openai.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(m) = listeners.metrics {
        let stop = stopped(stop_rx.clone());
        let routes = metrics::router(Arc::clone(&state), Arc::clone(&auditor));
        servers.spawn(transport::serve(Incoming::Tcp(m), routes, stop));
    }
    if let Some(tcp) = listeners.tcp {
        let stop = stopped(stop_rx.clone());
        let incoming = match &tls {
            Some(t) => Incoming::Tls(tcp, Arc::clone(t)),
            None => Incoming::Tcp(tcp),
        };
        servers.spawn(transport::serve(incoming, routes.clone(), stop));
    }
    if let Some(http) = listeners.openai {
        let stop = stopped(stop_rx.clone());
        let incoming = match &tls {
            Some(t) => Incoming::Tls(http, Arc::clone(t)),
            None => Incoming::Tcp(http),
        };
        servers.spawn(transport::serve(incoming, openai_routes, stop));
    }
    if let Some((unix, _)) = listeners.unix {
        let stop = stopped(stop_rx.clone());
        servers.spawn(transport::serve(Incoming::Unix(unix), routes.clone(), stop));
    }
    info!(
        tcp = %tcp_addr.map(|a| a.to_string()).unwrap_or_default(),
        socket = %socket_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        openai = %openai_addr.map(|a| a.to_string()).unwrap_or_default(),
        tcp_security = tcp_mode,
        "ready"
    );
    // Sockets bound, audit log open, every model loaded, every listener serving.
    notifier.ready(&serving_line(&registry));
    let watchdog = {
        let state = Arc::clone(&state);
        let stale_after = notifier.watchdog_interval().unwrap_or_default();
        systemd::spawn_watchdog(Arc::clone(&notifier), move || {
            engines_alive(&state, stale_after)
        })
    };

    let drain = Duration::from_secs(config.server.drain_timeout_secs);
    let (drained_tx, mut drained_rx) = tokio::sync::oneshot::channel::<()>();
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = draining_tx.send(());
        let _ = stop_tx.send(true);
        tokio::time::sleep(drain).await;
        let _ = drained_tx.send(());
    });
    {
        let state = Arc::clone(&state);
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            if draining_rx.await.is_ok() {
                info!(
                    drain_timeout_s = drain.as_secs(),
                    "shutting down: no new requests; finishing the requests in flight"
                );
                state.draining.store(true, Ordering::Relaxed);
                audit_health.abort();
                not_serving(&reporter, &state.models).await;
            }
        });
    }

    let mut served = Ok(());
    loop {
        tokio::select! {
            res = servers.join_next() => match res {
                None => break,
                Some(res) => {
                    if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| Ok(r?)) {
                        served = Err(e);
                        break;
                    }
                }
            },
            Ok(()) = &mut drained_rx => {
                warn!(open_servers = servers.len(), "drain timeout reached; ending the requests still in flight");
                // Every request still in an engine gets its final message now; the servers
                // then finish on their own, or are cut after a short grace.
                manager.close().await;
                tokio::task::block_in_place(|| registry.stop_all(ENGINE_STOP_TIMEOUT));
                let cut = tokio::time::sleep(FINAL_MESSAGE_GRACE);
                tokio::pin!(cut);
                loop {
                    tokio::select! {
                        res = servers.join_next() => if res.is_none() { break },
                        () = &mut cut => {
                            warn!(open_servers = servers.len(), "closing the remaining connections");
                            servers.abort_all();
                            break;
                        }
                    }
                }
                break;
            }
        }
    }
    // Idempotent when the drain timeout already stopped them.
    manager.close().await;
    tokio::task::block_in_place(|| registry.stop_all(ENGINE_STOP_TIMEOUT));
    // The sampler stops (dropping its fault channel), then the fault task records what it
    // still holds before the audit log closes.
    tokio::task::block_in_place(|| sampler.stop(SAMPLER_STOP_TIMEOUT));
    if let Err(e) = faults.await {
        warn!(target: "health", error = %e, "the fault task failed");
    }
    state.requests.close();
    if tokio::time::timeout(FINAL_MESSAGE_GRACE, state.requests.wait())
        .await
        .is_err()
    {
        warn!(
            open_requests = state.requests.len(),
            "requests still finishing after the engines stopped"
        );
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    // Every request has finished (or been recorded as cancelled): record the stop, sign a
    // final checkpoint and close the store.
    auditor.stop().await;
    served?;
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    info!("stopped");
    Ok(())
}

/// `systemctl status`'s line while nothing is being loaded or changed.
pub fn serving_line(registry: &Registry) -> String {
    let n = registry.snapshot().len();
    format!("serving {n} model{}", if n == 1 { "" } else { "s" })
}

/// The watchdog's health check: every engine's loop went round within `stale_after` (an idle
/// engine wakes every second, a busy one at every step). While draining, engines are being
/// stopped on purpose, and systemd no longer holds the daemon to its watchdog.
fn engines_alive(state: &AppState, stale_after: Duration) -> bool {
    if state.draining.load(Ordering::Relaxed) {
        return true;
    }
    state
        .models
        .snapshot()
        .values()
        .all(|m| m.engine.heartbeat().elapsed() < stale_after)
}

/// Tells health checkers (and load balancers) that this daemon takes no new work, nor does
/// any of its models.
async fn not_serving(reporter: &HealthReporter, models: &Registry) {
    for s in DRAINED_SERVICES {
        reporter
            .set_service_status(s, ServingStatus::NotServing)
            .await;
    }
    for id in models.snapshot().keys() {
        reporter
            .set_service_status(model_service(id), ServingStatus::NotServing)
            .await;
    }
}
