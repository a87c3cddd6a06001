//! The audit records of one request: [`Auditor::admit`] makes the `admitted` record durable and
//! returns an [`AuditTicket`], the obligation to write the `completed` record before the client
//! gets its final answer. [`Auditor::event`] records a request answered at once (tokenize).

use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_audit::{Action, AuditError, Digest, Ident, NewRecord, Phase, Role};
use appl_engine::{len_u32, FinishReason, Usage};
use tracing::{debug, warn};

use super::{micros, Auditor};
use crate::identity::Caller;

/// The facts of one request that its records carry (never its text).
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub action: Action,
    pub request_id: &'a str,
    pub model: &'a str,
    /// SHA-256 of the model's GGUF file (the engine the request was leased).
    pub model_sha256: Option<Digest>,
    pub prompt_tokens: usize,
    /// HMAC of the prompt under the appliance's key ([`Auditor::prompt_hmac`]).
    pub prompt_hmac: Digest,
    /// When the request arrived.
    pub received: Instant,
    /// The API the request came in through.
    pub api: Api,
}

/// The API a request came in through, as its records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `appl.v1` over gRPC.
    Grpc,
    /// The OpenAI-compatible HTTP API.
    OpenAi,
}

impl Api {
    /// The name in the record's `api` field.
    pub fn name(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::OpenAi => "openai",
        }
    }
}

impl Auditor {
    /// A request record of `caller` with the request's id, model, prompt count and digest.
    fn request_record(
        &self,
        caller: &Caller,
        phase: Phase,
        f: &RequestFacts<'_>,
    ) -> Result<NewRecord, AuditError> {
        let mut r = NewRecord::new(
            f.action.clone(),
            phase,
            caller.actor().clone(),
            Role::Inference,
        );
        r.peer = caller.peer().cloned();
        r.roles = caller.roles_ident();
        r.tenant = caller.tenant_ident();
        r.request_id = Some(Ident::new(f.request_id)?);
        r.model = Some(Ident::new(f.model)?);
        r.model_sha256 = f.model_sha256;
        r.prompt_tokens = Some(len_u32(f.prompt_tokens));
        r.prompt_hmac = Some(f.prompt_hmac);
        r.api = Some(Ident::new(f.api.name())?);
        Ok(r)
    }

    /// Writes the `admitted` record and returns once it is durable. Only then may the job go
    /// to an engine.
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        facts: &RequestFacts<'_>,
    ) -> Result<AuditTicket, AuditError> {
        let r = self.request_record(caller, Phase::Admitted, facts)?;
        let mut completed = r.clone();
        completed.phase = Phase::Completed;
        completed.prompt_hmac = None;
        let t = Instant::now();
        self.append(r).await?;
        Ok(AuditTicket {
            auditor: Some(self.clone()),
            record: completed,
            received: facts.received,
            completion_tokens: 0,
            admitted_wait: t.elapsed(),
        })
    }

    /// Records a request that is answered at once, without an engine job (tokenize), as one
    /// durable `event` record.
    pub async fn event(&self, caller: &Caller, facts: &RequestFacts<'_>) -> Result<(), AuditError> {
        let mut r = self.request_record(caller, Phase::Event, facts)?;
        r.status = Some(0);
        r.latency_us = Some(micros(facts.received.elapsed()));
        self.append(r).await.map(drop)
    }
}

/// An admitted request whose `completed` record is still to be written. Dropped unfinished
/// (the client went away while a unary call ran), it writes a `cancelled` completed record in
/// the background.
pub struct AuditTicket {
    auditor: Option<Arc<Auditor>>,
    record: NewRecord,
    received: Instant,
    completion_tokens: u32,
    /// How long the request waited for its admitted record to be durable.
    admitted_wait: Duration,
}

impl std::fmt::Debug for AuditTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTicket")
            .field("request_id", &self.record.request_id)
            .finish_non_exhaustive()
    }
}

impl AuditTicket {
    /// Counts tokens already sent to a streaming client (for a cancelled record).
    pub fn sent_tokens(&mut self, n: usize) {
        self.completion_tokens = self.completion_tokens.saturating_add(len_u32(n));
    }

    fn take(&mut self, code: tonic::Code, reason: &str, usage: Option<&Usage>) -> NewRecord {
        let mut r = self.record.clone();
        r.status = Some(code as u32);
        r.reason = Ident::new(reason).ok();
        match usage {
            Some(u) => {
                r.prompt_tokens = Some(u.prompt_tokens);
                r.completion_tokens = Some(u.completion_tokens);
            }
            None => r.completion_tokens = Some(self.completion_tokens),
        }
        r.latency_us = Some(micros(self.received.elapsed()));
        r
    }

    async fn write(mut self, r: NewRecord) -> Result<(), AuditError> {
        // Every public method consumes the ticket, so the auditor is still here.
        let Some(a) = self.auditor.take() else {
            return Err(AuditError::Closed);
        };
        let t = Instant::now();
        let res = a.append(r).await;
        // What the audit log cost this request on its path (bench/audit_latency.rs reads it).
        debug!(
            target: "audit",
            request_id = self.record.request_id.as_ref().map_or("", |i| i.as_str()),
            admitted_us = micros(self.admitted_wait),
            completed_us = micros(t.elapsed()),
            latency_us = micros(self.received.elapsed()),
            "request audited"
        );
        res.map(drop)
    }

    /// Makes the `completed` record of a request that ran durable, with the code its client
    /// gets. The final message may go out only after this.
    pub async fn finish(
        mut self,
        code: tonic::Code,
        reason: FinishReason,
        usage: &Usage,
    ) -> Result<(), AuditError> {
        let r = self.take(code, finish_reason_name(reason), Some(usage));
        self.write(r).await
    }

    /// Records that an admitted request ended without an engine result (queue full, engine
    /// gone), with the code its client gets.
    pub async fn refused(mut self, code: tonic::Code) -> Result<(), AuditError> {
        let r = self.take(code, code_reason(code), None);
        self.write(r).await
    }

    /// Records that the client went away mid-stream (nobody is left to tell).
    pub async fn client_gone(mut self) {
        let r = self.take(tonic::Code::Cancelled, "client_gone", None);
        if let Err(e) = self.write(r).await {
            warn!(target: "audit", error = %e, "could not record a cancelled request");
        }
    }
}

impl Drop for AuditTicket {
    fn drop(&mut self) {
        let Some(a) = self.auditor.take() else {
            return;
        };
        let r = self.take(tonic::Code::Cancelled, "client_gone", None);
        a.append_in_background(r);
    }
}

/// The stable `reason` of a completed record.
fn finish_reason_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Deadline => "deadline",
        FinishReason::Error => "error",
    }
}

/// The stable `reason` of a refused request's completed record: its status code's name.
fn code_reason(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
