//! The audit records of the model lifecycle. Every load, unload and failed load carries the
//! GGUF file's SHA-256 (when it could be read):
//!
//! - at start the daemon itself records `model.load` per model (actor `system`), or the
//!   failed load that stopped it;
//! - an operator's action (`model.load`, `admin.model.unload`) is recorded twice, like a
//!   request: `admitted` with the caller before anything changes, `completed` with the outcome
//!   and the digest ([`AdminTicket`]);
//! - a GPU fault is recorded by the daemon as `admin.hardware.fault`, once per model it takes
//!   out of service (or once with no model when the GPU held none), with the reason
//!   `gpu<N>:<fault>` such as `gpu0:xid_79`.

use std::sync::Arc;
use std::time::Instant;

use appl_audit::{Action, AuditError, Digest, Ident, NewRecord, Phase, Role};
use tonic::Code;
use tracing::info;

use super::{micros, Auditor};
use crate::identity::Caller;

/// The action of an unload (the audit crate's `admin.*` family).
pub fn unload_action() -> Action {
    Action::Admin("model.unload".to_owned())
}

/// The action of a GPU fault.
pub fn fault_action() -> Action {
    Action::Admin("hardware.fault".to_owned())
}

impl Auditor {
    /// Records a model the daemon loaded at start.
    pub async fn model_loaded_at_start(&self, id: &str, sha256: Digest) -> Result<(), AuditError> {
        let mut r = NewRecord::system(Action::ModelLoad);
        r.model = Some(Ident::new(id)?);
        r.model_sha256 = Some(sha256);
        r.status = Some(0);
        self.append(r).await?;
        info!(target: "audit", model = %id, sha256 = %hex::encode(sha256.0), "model load recorded");
        Ok(())
    }

    /// Records a model that failed to load at start (the daemon then stops).
    pub async fn model_load_failed_at_start(
        &self,
        id: &str,
        sha256: Option<Digest>,
        code: Code,
        reason: &str,
    ) -> Result<(), AuditError> {
        let mut r = NewRecord::system(Action::ModelLoad);
        r.model = Ident::new(id).ok();
        r.model_sha256 = sha256;
        r.status = Some(code as u32);
        r.reason = Ident::new(reason).ok();
        self.append(r).await.map(drop)
    }

    /// Makes the `admitted` record of an operator's model action durable, before anything
    /// changes; the returned ticket writes the `completed` record.
    pub async fn admin_begin(
        self: &Arc<Self>,
        caller: &Caller,
        action: Action,
        request_id: &str,
        model: &str,
    ) -> Result<AdminTicket, AuditError> {
        let mut r = NewRecord::new(
            action,
            Phase::Admitted,
            caller.actor().clone(),
            Role::Operator,
        );
        r.peer = caller.peer().cloned();
        r.request_id = Some(Ident::new(request_id)?);
        r.model = Some(Ident::new(model)?);
        let mut completed = r.clone();
        completed.phase = Phase::Completed;
        self.append(r).await?;
        Ok(AdminTicket {
            auditor: Arc::clone(self),
            record: completed,
            started: Instant::now(),
        })
    }

    /// Records a GPU fault, against the model it took out of service if any.
    pub async fn hardware_fault(
        &self,
        model: Option<(&str, Digest)>,
        gpu: u32,
        fault_code: &str,
    ) -> Result<(), AuditError> {
        let mut r = NewRecord::system(fault_action());
        if let Some((id, sha)) = model {
            r.model = Some(Ident::new(id)?);
            r.model_sha256 = Some(sha);
        }
        r.status = Some(Code::Unavailable as u32);
        r.reason = Some(Ident::new(format!("gpu{gpu}:{fault_code}"))?);
        self.append(r).await.map(drop)
    }
}

/// An operator's model action whose `completed` record is still to be written.
pub struct AdminTicket {
    auditor: Arc<Auditor>,
    record: NewRecord,
    started: Instant,
}

impl std::fmt::Debug for AdminTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTicket")
            .field("action", &self.record.action)
            .field("model", &self.record.model)
            .finish_non_exhaustive()
    }
}

impl AdminTicket {
    /// Writes the `completed` record: the outcome (`code`, and a stable `reason` when it
    /// failed) and the digest of the file the action loaded or unloaded.
    pub async fn finish(
        self,
        code: Code,
        reason: Option<&str>,
        sha256: Option<Digest>,
    ) -> Result<(), AuditError> {
        let mut r = self.record;
        r.status = Some(code as u32);
        r.reason = reason.and_then(|s| Ident::new(s).ok());
        r.model_sha256 = sha256;
        r.latency_us = Some(micros(self.started.elapsed()));
        self.auditor.append(r).await.map(drop)
    }
}
