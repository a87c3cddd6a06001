//! What a GPU fault does: every model with layers on that GPU is taken out of service (its
//! grpc.health service `appl.v1.Model/<id>` goes `NOT_SERVING`, its new requests get
//! `UNAVAILABLE` naming the GPU and the error), and the fault is recorded in the audit log
//! (`admin.hardware.fault`, reason `gpu<N>:<fault>`). Requests already running on it end as the
//! engine ends them. Throttling is not a fault: it only shows in status and the metrics.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::error;

use super::FaultEvent;
use crate::audit::Auditor;
use crate::registry::{model_service, ModelFault, Registry};

/// Handles faults until the sampler goes away (its sender is dropped).
pub async fn handle_faults(
    mut faults: UnboundedReceiver<FaultEvent>,
    registry: Arc<Registry>,
    reporter: HealthReporter,
    auditor: Arc<Auditor>,
) {
    while let Some(ev) = faults.recv().await {
        on_fault(&ev, &registry, &reporter, &auditor).await;
    }
}

/// Takes the models on the faulted GPU out of service and records the fault.
pub async fn on_fault(
    ev: &FaultEvent,
    registry: &Registry,
    reporter: &HealthReporter,
    auditor: &Auditor,
) {
    let code = ev.fault.code();
    let mut hit = Vec::new();
    for (id, m) in registry.snapshot().iter() {
        if !m.gpus().contains(&ev.gpu) {
            continue;
        }
        m.set_fault(ModelFault {
            gpu: ev.gpu,
            gpu_name: ev.gpu_name.clone(),
            fault: ev.fault,
        });
        reporter
            .set_service_status(model_service(id), ServingStatus::NotServing)
            .await;
        hit.push((id.clone(), m.sha256));
    }
    error!(
        target: "health",
        gpu = ev.gpu,
        name = %ev.gpu_name,
        fault = %ev.fault,
        reason = %code,
        models = %hit.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(","),
        "GPU fault: the models on this GPU are out of service until it is reset and appld restarted"
    );
    let records: Vec<Option<(&str, appl_audit::Digest)>> = if hit.is_empty() {
        vec![None]
    } else {
        hit.iter()
            .map(|(id, sha)| Some((id.as_str(), *sha)))
            .collect()
    };
    for model in records {
        if let Err(e) = auditor.hardware_fault(model, ev.gpu, &code).await {
            error!(target: "audit", error = %e, gpu = ev.gpu, "could not record a GPU fault");
        }
    }
}
