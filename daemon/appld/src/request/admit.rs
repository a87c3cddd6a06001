//! Admission, the same for every face: the daemon must be admitting and the audit log
//! writing, the request is validated ([`AppState::prepare`]) for the caller's tenant, and its
//! `admitted` record is durable before the request may go to an engine.

use std::sync::Arc;

use appl_audit::Action;

use super::{GenerateInput, Prepared, RequestError};
use crate::audit::{Api, AuditTicket, Auditor, RequestFacts};
use crate::identity::Caller;
use crate::state::AppState;

/// Who sends a request, what it is recorded as, and which API it came in through.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub caller: &'a Caller,
    pub action: &'a Action,
    pub api: Api,
}

/// Refuses every request while the daemon drains or the audit log cannot write, so that
/// nothing is admitted unaudited. Faces call it before they read a request's body.
pub fn check_open(state: &AppState, audit: &Auditor) -> Result<(), RequestError> {
    state.check_admitting()?;
    audit.check_serving()?;
    Ok(())
}

/// Validates a generation request and makes its `admitted` record durable.
pub async fn admit(
    state: &AppState,
    audit: &Arc<Auditor>,
    origin: Origin<'_>,
    input: GenerateInput,
) -> Result<(Prepared, AuditTicket), RequestError> {
    let prompt_hmac = audit.input_hmac(&input.prompt);
    let p = state.prepare(input, origin.caller.tenant())?;
    let facts = RequestFacts {
        action: origin.action.clone(),
        request_id: &p.request_id,
        model: p.model(),
        model_sha256: Some(p.engine.sha256()),
        prompt_tokens: p.prompt.len(),
        prompt_hmac,
        received: p.received,
        api: origin.api,
    };
    let ticket = audit.admit(origin.caller, &facts).await?;
    Ok((p, ticket))
}
