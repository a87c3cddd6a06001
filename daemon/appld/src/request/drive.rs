//! Driving a prepared request: the tenant permit, the engine job, and the `completed` audit
//! record, which is durable before the final answer goes out. [`run_to_end`] collects a whole
//! answer (unary calls); [`run_streaming`] hands pieces to a channel as they come.

use std::time::{Duration, Instant};

use appl_engine::{len_u32, EngineError, Event, FinishReason, Job, Usage};
use tokio::sync::mpsc;
use tracing::info;

use super::{Prepared, RequestError};
use crate::audit::AuditTicket;
use crate::state::AppState;
use crate::tenants::Permit;

/// The most a unary answer goes out before the client's deadline, to beat the client's timer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Pieces buffered between a streaming request's task and its client.
const STREAM_BUFFER: usize = 16;

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// New text and the ids of the tokens it came from (either may be empty).
    Tokens { text: String, token_ids: Vec<i32> },
    /// The last piece: why generation ended and what it used.
    Done { reason: FinishReason, usage: Usage },
}

/// The whole answer of a request run to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<i32>,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// The events of one request, holding its tenant permit: the permit is released when this is
/// dropped (the request ended, or its client went away), and the completion is charged to the
/// tenant's token budget when the final event passes.
#[derive(Debug)]
struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    permit: Permit,
}

impl Events {
    async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        if let Some(Event::Done { usage, .. }) = &ev {
            self.permit.charge(usage.completion_tokens);
        }
        ev
    }
}

/// Takes the tenant permit and hands the job to its engine.
fn submit(p: &Prepared) -> Result<Events, RequestError> {
    let tenants = &p.tenants;
    let permit = tenants
        .admit(p.tenant, len_u32(p.prompt.len()), Instant::now())
        .map_err(|r| {
            info!(target: "queue", request_id = %p.request_id, tenant = %tenants.policy(p.tenant).name, reason = r.reason(), "refused");
            RequestError::TenantLimit(r)
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        request_id: p.request_id.clone(),
        prompt: p.prompt.clone(),
        sampling: p.sampling.clone(),
        max_tokens: p.max_tokens,
        stop: p.stop.clone(),
        deadline: p.deadline,
        received: p.received,
        priority: p.priority,
        tenant: p.tenant,
        weight: tenants.policy(p.tenant).weight,
        events: tx,
    };
    p.engine.submit(job).map_err(|e| match e {
        EngineError::QueueFull { .. } => RequestError::QueueFull(e.to_string()),
        other => RequestError::EngineStopped(other.to_string()),
    })?;
    Ok(Events { rx, permit })
}

/// Makes the `completed` record durable, then hands back the request's result. If the record
/// cannot be written, the client gets the audit error instead.
async fn finish<T>(
    ticket: AuditTicket,
    result: Result<T, RequestError>,
    reason: FinishReason,
    usage: &Usage,
) -> Result<T, RequestError> {
    let code = result
        .as_ref()
        .err()
        .map_or(tonic::Code::Ok, RequestError::code);
    ticket.finish(code, reason, usage).await?;
    result
}

/// Records that an admitted request ended without an engine result, and returns the error for
/// the client (or the audit error, if even that record cannot be written).
async fn refused(ticket: AuditTicket, err: RequestError) -> RequestError {
    match ticket.refused(err.code()).await {
        Ok(()) => err,
        Err(a) => RequestError::Audit(a),
    }
}

fn deadline_error(done: u32, max: u32) -> RequestError {
    RequestError::Deadline(format!("the deadline passed after {done} of {max} tokens"))
}

fn generation_failed(error: Option<String>) -> RequestError {
    RequestError::Generation(error.unwrap_or_else(|| "generation failed".to_owned()))
}

fn stopped() -> RequestError {
    RequestError::EngineStopped("the engine stopped during the request".to_owned())
}

/// Runs a request to its end and returns the whole answer, once its `completed` record is
/// durable.
pub async fn run_to_end(p: Prepared, ticket: AuditTicket) -> Result<Completion, RequestError> {
    let mut rx = match submit(&p) {
        Ok(rx) => rx,
        Err(e) => return Err(refused(ticket, e).await),
    };
    let mut text = String::new();
    let mut ids: Vec<i32> = Vec::new();
    // The client's own timer fires at the deadline (a tonic client then reports CANCELLED).
    // Answer DEADLINE_EXCEEDED a little before, leaving time to make the completed record
    // durable and send the answer; the engine notices the deadline only between steps.
    let answer_by = p.deadline.map(|d| {
        let margin = d
            .saturating_duration_since(p.received)
            .div_f64(10.0)
            .min(DEADLINE_MARGIN);
        tokio::time::Instant::from_std(d - margin)
    });
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = sleep_until_opt(answer_by) => {
                drop(rx); // the engine frees the slot at its next step
                let usage = Usage {
                    prompt_tokens: len_u32(p.prompt.len()),
                    completion_tokens: len_u32(ids.len()),
                    ..Usage::default()
                };
                log_done(&p, FinishReason::Deadline, &usage);
                let err = deadline_error(len_u32(ids.len()), p.max_tokens);
                return finish(ticket, Err(err), FinishReason::Deadline, &usage).await;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Tokens { text: t, token_ids } => {
                text.push_str(&t);
                ids.extend(token_ids);
            }
            Event::Done {
                reason,
                usage,
                error,
            } => {
                log_done(&p, reason, &usage);
                let result = match reason {
                    FinishReason::Error => Err(generation_failed(error)),
                    FinishReason::Deadline => {
                        Err(deadline_error(usage.completion_tokens, p.max_tokens))
                    }
                    _ => Ok(Completion {
                        text,
                        token_ids: ids,
                        reason,
                        usage: usage.clone(),
                    }),
                };
                return finish(ticket, result, reason, &usage).await;
            }
        }
    }
    Err(refused(ticket, stopped()).await)
}

/// Starts a request and returns the channel its pieces arrive on. The last item is
/// [`Piece::Done`] or an error, and it is sent only once the `completed` record is durable.
/// Dropping the receiver (the client went away) frees the slot at the engine's next step and
/// records the request as cancelled.
pub async fn run_streaming(
    state: &AppState,
    p: Prepared,
    mut ticket: AuditTicket,
) -> Result<mpsc::Receiver<Result<Piece, RequestError>>, RequestError> {
    let mut rx = match submit(&p) {
        Ok(rx) => rx,
        Err(e) => return Err(refused(ticket, e).await),
    };
    let (tx, out) = mpsc::channel(STREAM_BUFFER);
    state.requests.spawn(async move {
        loop {
            // A request that is queued or paused sends nothing for a while, so the client
            // leaving must be noticed here too, not only when the next send fails.
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = tx.closed() => {
                    drop(rx);
                    ticket.client_gone().await;
                    return;
                }
            };
            let Some(ev) = ev else { break };
            let piece = match ev {
                Event::Tokens { text, token_ids } => {
                    ticket.sent_tokens(token_ids.len());
                    Piece::Tokens { text, token_ids }
                }
                Event::Done {
                    reason,
                    usage,
                    error,
                } => {
                    log_done(&p, reason, &usage);
                    let last = if reason == FinishReason::Error {
                        Err(generation_failed(error))
                    } else {
                        Ok(Piece::Done {
                            reason,
                            usage: usage.clone(),
                        })
                    };
                    let last = finish(ticket, last, reason, &usage).await;
                    let _ = tx.send(last).await;
                    return;
                }
            };
            if tx.send(Ok(piece)).await.is_err() {
                // The client went away; dropping `rx` tells the engine to free the slot.
                drop(rx);
                ticket.client_gone().await;
                return;
            }
        }
        let _ = tx.send(Err(refused(ticket, stopped()).await)).await;
    });
    Ok(out)
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_done(p: &Prepared, reason: FinishReason, usage: &Usage) {
    info!(
        target: "api",
        request_id = %p.request_id,
        method = p.method,
        model = %p.model(),
        reason = ?reason,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        ttft_ms = usage.time_to_first_token.as_secs_f64() * 1e3,
        decode_ms = usage.decode.as_secs_f64() * 1e3,
        priority = p.priority.as_str(),
        cached_prompt_tokens = usage.cached_prompt_tokens,
        preemptions = usage.preemptions,
        "request finished"
    );
}
