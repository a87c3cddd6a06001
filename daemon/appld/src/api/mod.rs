//! The gRPC layer: converts `appl.v1` messages to engine jobs and engine events back to
//! messages. With `audit_rpc.rs` (the `appl.v1.Audit` service) it is the daemon's gRPC layer,
//! the only part of the daemon that sees wire types.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appl_engine::{
    ChatMessage, EngineError, EngineHandle, Event, FinishReason, Job, Sampling, Usage,
};
use appl_proto::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::audit::{Auditor, Caller, Ticket};
use crate::config::LimitsConfig;
use crate::queue::Events;
use appl_audit::{Action, Digest};
use appl_engine::admission::Tenants;
use appl_engine::{Priority, TenantId};

/// Shared state of the gRPC services.
#[derive(Debug)]
pub struct AppState {
    pub engines: BTreeMap<String, EngineHandle>,
    pub default_model: String,
    pub limits: LimitsConfig,
    pub chat_templates: BTreeMap<String, String>,
    pub started: Instant,
    /// The tenant table and each tenant's live usage.
    pub tenants: Arc<Tenants>,
    request_counter: AtomicU64,
}

impl AppState {
    pub fn new(
        engines: BTreeMap<String, EngineHandle>,
        default_model: String,
        limits: LimitsConfig,
        chat_templates: BTreeMap<String, String>,
    ) -> Self {
        Self {
            engines,
            default_model,
            limits,
            chat_templates,
            started: Instant::now(),
            tenants: Tenants::new(Vec::new(), Instant::now()),
            request_counter: AtomicU64::new(0),
        }
    }

    /// Replaces the tenant table (the default has only the `default` tenant, without limits).
    pub fn with_tenants(mut self, tenants: Arc<Tenants>) -> Self {
        self.tenants = tenants;
        self
    }

    fn engine(&self, model: &str) -> Result<&EngineHandle, Status> {
        let id = if model.is_empty() {
            self.default_model.as_str()
        } else {
            model
        };
        self.engines.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.engines.keys().map(String::as_str).collect();
            Status::not_found(format!(
                "unknown model {id:?}; this daemon serves: {}",
                known.join(", ")
            ))
        })
    }

    /// A request id unique within this daemon's lifetime and across restarts.
    fn request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since = self.started.elapsed().as_nanos() as u64;
        format!("{boot:x}-{since:x}-{n}")
    }
}

/// Both services share one state, and the audit log.
#[derive(Debug, Clone)]
pub struct Api {
    state: Arc<AppState>,
    audit: Arc<Auditor>,
}

impl Api {
    pub fn new(state: Arc<AppState>, audit: Arc<Auditor>) -> Self {
        Self { state, audit }
    }

    /// The durable `admitted` record of a validated request (see [`Auditor::admit`]).
    async fn admit(
        &self,
        caller: &Caller,
        action: Action,
        prompt_hmac: Digest,
        p: &Prepared,
    ) -> Result<Ticket, Status> {
        self.audit
            .admit(
                caller,
                action,
                &p.request_id,
                &p.engine.spec().id,
                p.prompt.len(),
                prompt_hmac,
                p.received,
            )
            .await
    }
}

/// A validated generation request, before it is handed to an engine.
struct Prepared {
    engine: EngineHandle,
    prompt: Vec<i32>,
    sampling: Sampling,
    max_tokens: u32,
    stop: Vec<String>,
    deadline: Option<Instant>,
    request_id: String,
    received: Instant,
    method: &'static str,
    tenant: TenantId,
    priority: Priority,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

fn sampling_from(p: Option<pb::SamplingParams>) -> Result<Sampling, Status> {
    let d = Sampling::default();
    let p = p.unwrap_or_default();
    let s = Sampling {
        temperature: p.temperature.unwrap_or(d.temperature),
        top_k: p.top_k.unwrap_or(d.top_k),
        top_p: p.top_p.unwrap_or(d.top_p),
        min_p: p.min_p.unwrap_or(d.min_p),
        repeat_penalty: p.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: p.repeat_last_n.unwrap_or(d.repeat_last_n),
        seed: p.seed.unwrap_or_else(fresh_seed),
    };
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return Err(invalid(format!(
            "sampling.temperature is {}; it must be 0 (greedy) or more",
            s.temperature
        )));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(invalid(format!(
            "sampling.top_p is {}; it must be in (0, 1]",
            s.top_p
        )));
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return Err(invalid(format!(
            "sampling.min_p is {}; it must be in [0, 1]",
            s.min_p
        )));
    }
    if s.top_k < 0 {
        return Err(invalid(format!(
            "sampling.top_k is {}; it must be 0 (off) or more",
            s.top_k
        )));
    }
    if !(s.repeat_penalty.is_finite() && s.repeat_penalty > 0.0) {
        return Err(invalid(format!(
            "sampling.repeat_penalty is {}; it must be more than 0 (1 is off)",
            s.repeat_penalty
        )));
    }
    if s.repeat_last_n < 0 {
        return Err(invalid(format!(
            "sampling.repeat_last_n is {}; it must be 0 or more",
            s.repeat_last_n
        )));
    }
    Ok(s)
}

fn fresh_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// The deadline a client set with `grpc-timeout`, as an instant.
fn deadline_of<T>(req: &Request<T>, received: Instant) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    received.checked_add(d)
}

impl Api {
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        method: &'static str,
        model: &str,
        prompt_text: &str,
        sampling: Option<pb::SamplingParams>,
        max_tokens: Option<u32>,
        stop: Vec<String>,
        deadline: Option<Instant>,
        received: Instant,
        who: (String, i32),
    ) -> Result<Prepared, Status> {
        let st = &self.state;
        let tenant = st.tenants.resolve(&who.0);
        let priority = match pb::Priority::try_from(who.1) {
            Ok(pb::Priority::Interactive) => Priority::Interactive,
            Ok(pb::Priority::Batch) => Priority::Batch,
            Ok(pb::Priority::Unspecified) => st.tenants.policy(tenant).default_priority,
            Err(_) => {
                return Err(invalid(format!(
                    "priority is {}; use PRIORITY_INTERACTIVE or PRIORITY_BATCH",
                    who.1
                )))
            }
        };
        let engine = st.engine(model)?.clone();
        let limits = &st.limits;
        if prompt_text.len() > limits.max_prompt_bytes {
            return Err(invalid(format!(
                "the prompt is {} bytes; this daemon accepts at most {} (limits.max_prompt_bytes)",
                prompt_text.len(),
                limits.max_prompt_bytes
            )));
        }
        let sampling = sampling_from(sampling)?;
        let max_tokens = max_tokens.unwrap_or(limits.default_max_tokens);
        if max_tokens == 0 {
            return Err(invalid("max_tokens is 0; ask for at least 1 token"));
        }
        if max_tokens > limits.max_tokens_cap {
            return Err(invalid(format!(
                "max_tokens is {max_tokens}; this daemon allows at most {} (limits.max_tokens_cap)",
                limits.max_tokens_cap
            )));
        }
        if stop.len() > limits.max_stop_sequences {
            return Err(invalid(format!(
                "{} stop sequences given; at most {} are allowed",
                stop.len(),
                limits.max_stop_sequences
            )));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > 256) {
            return Err(invalid(format!(
                "a stop sequence is {} bytes; at most 256 are allowed",
                long.len()
            )));
        }
        let prompt = engine.tokenize(prompt_text);
        let ctx = engine.spec().ctx_per_slot as usize;
        if prompt.len() >= ctx {
            return Err(invalid(format!(
                "the prompt is {} tokens, but a slot's context for model {} is {ctx} tokens (prompt plus completion); shorten the prompt",
                prompt.len(),
                engine.spec().id
            )));
        }
        Ok(Prepared {
            engine,
            prompt,
            sampling,
            max_tokens,
            stop,
            deadline,
            request_id: st.request_id(),
            received,
            method,
            tenant,
            priority,
        })
    }

    fn prepare_generate(
        &self,
        req: Request<pb::GenerateRequest>,
        method: &'static str,
    ) -> Result<Prepared, Status> {
        let received = Instant::now();
        let deadline = deadline_of(&req, received);
        let tenant = crate::queue::tenant_name(&req);
        let r = req.into_inner();
        if r.prompt.is_empty() {
            return Err(invalid("prompt is empty; send the text to continue"));
        }
        self.prepare(
            method,
            &r.model,
            &r.prompt,
            r.sampling,
            r.max_tokens,
            r.stop,
            deadline,
            received,
            (tenant, r.priority),
        )
    }

    fn prepare_chat(
        &self,
        req: Request<pb::ChatRequest>,
        method: &'static str,
    ) -> Result<Prepared, Status> {
        let received = Instant::now();
        let deadline = deadline_of(&req, received);
        let tenant = crate::queue::tenant_name(&req);
        let r = req.into_inner();
        let prompt = self.render(&r.model, &r.messages)?;
        self.prepare(
            method,
            &r.model,
            &prompt,
            r.sampling,
            r.max_tokens,
            r.stop,
            deadline,
            received,
            (tenant, r.priority),
        )
    }

    fn render(&self, model: &str, messages: &[pb::ChatMessage]) -> Result<String, Status> {
        let engine = self.state.engine(model)?;
        if messages.is_empty() {
            return Err(invalid("messages is empty; send at least one user message"));
        }
        for (i, m) in messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(invalid(format!(
                    "messages[{i}].role is {:?}; use system, user or assistant",
                    m.role
                )));
            }
        }
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        engine.render_chat(&msgs).map_err(|e| match e {
            EngineError::ChatTemplate(m) => Status::failed_precondition(m),
            other => Status::internal(other.to_string()),
        })
    }

    /// Submits the job and returns the receiving end of its events.
    fn submit(&self, p: &Prepared) -> Result<Events, Status> {
        let tenants = &self.state.tenants;
        let permit = tenants
            .admit(p.tenant, len_u32(p.prompt.len()), Instant::now())
            .map_err(|r| {
                info!(target: "queue", request_id = %p.request_id, tenant = %tenants.policy(p.tenant).name, reason = r.reason(), "refused");
                crate::queue::refusal_status(&r)
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
            EngineError::QueueFull { .. } => {
                let mut s = Status::resource_exhausted(e.to_string());
                s.metadata_mut()
                    .insert("retry-after-ms", tonic::metadata::MetadataValue::from(1000));
                s
            }
            other => Status::unavailable(other.to_string()),
        })?;
        Ok(Events::new(rx, permit))
    }

    /// Runs a job to its end. The response (or error) goes out only once the `completed` audit
    /// record is durable.
    async fn unary(
        &self,
        p: Prepared,
        ticket: Ticket,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let mut rx = match self.submit(&p) {
            Ok(rx) => rx,
            Err(s) => return Err(ticket.refused(s).await),
        };
        let mut text = String::new();
        let mut ids: Vec<i32> = Vec::new();
        // tonic cancels a unary call itself when its grpc-timeout expires, as CANCELLED. Answer
        // DEADLINE_EXCEEDED a little before that; the engine notices the deadline only between
        // steps.
        let answer_by = p.deadline.map(|d| {
            let margin = d
                .saturating_duration_since(p.received)
                .div_f64(10.0)
                .min(Duration::from_millis(50));
            tokio::time::Instant::from_std(d - margin)
        });
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = sleep_until_opt(answer_by) => {
                    drop(rx); // the engine frees the slot at its next step
                    let usage = Usage {
                        prompt_tokens: u32::try_from(p.prompt.len()).unwrap_or(u32::MAX),
                        completion_tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
                        ..Usage::default()
                    };
                    log_done(&p, FinishReason::Deadline, &usage);
                    let status = Status::deadline_exceeded(format!(
                        "the deadline passed after {} of {} tokens",
                        ids.len(),
                        p.max_tokens
                    ));
                    return ticket.finish(Err(status), FinishReason::Deadline, &usage).await;
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
                        FinishReason::Error => Err(Status::internal(
                            error.unwrap_or_else(|| "generation failed".to_owned()),
                        )),
                        FinishReason::Deadline => Err(Status::deadline_exceeded(format!(
                            "the deadline passed after {} of {} tokens",
                            usage.completion_tokens, p.max_tokens
                        ))),
                        _ => Ok(Response::new(pb::GenerateResponse {
                            model: p.engine.spec().id.clone(),
                            text,
                            token_ids: ids,
                            finish_reason: finish_to_pb(reason) as i32,
                            usage: Some(usage_to_pb(&usage)),
                            request_id: p.request_id.clone(),
                        })),
                    };
                    return ticket.finish(result, reason, &usage).await;
                }
            }
        }
        Err(ticket
            .refused(Status::unavailable("the engine stopped during the request"))
            .await)
    }

    /// Streams a job's tokens. The final message (or error) goes out only once the `completed`
    /// audit record is durable.
    async fn stream(&self, p: Prepared, mut ticket: Ticket) -> Result<ChunkStream, Status> {
        let mut rx = match self.submit(&p) {
            Ok(rx) => rx,
            Err(s) => return Err(ticket.refused(s).await),
        };
        let out = async_stream(move |tx| async move {
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
                let chunk = match ev {
                    Event::Tokens { text, token_ids } => {
                        ticket.sent_tokens(token_ids.len());
                        pb::GenerateChunk {
                            text,
                            token_ids,
                            request_id: p.request_id.clone(),
                            ..Default::default()
                        }
                    }
                    Event::Done {
                        reason,
                        usage,
                        error,
                    } => {
                        log_done(&p, reason, &usage);
                        let last = if reason == FinishReason::Error {
                            Err(Status::internal(
                                error.unwrap_or_else(|| "generation failed".to_owned()),
                            ))
                        } else {
                            Ok(pb::GenerateChunk {
                                finish_reason: finish_to_pb(reason) as i32,
                                usage: Some(usage_to_pb(&usage)),
                                request_id: p.request_id.clone(),
                                ..Default::default()
                            })
                        };
                        let last = ticket.finish(last, reason, &usage).await;
                        let _ = tx.send(last).await;
                        return;
                    }
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    // The client went away; dropping `rx` tells the engine to free the slot.
                    drop(rx);
                    ticket.client_gone().await;
                    return;
                }
            }
            let s = ticket
                .refused(Status::unavailable("the engine stopped during the request"))
                .await;
            let _ = tx.send(Err(s)).await;
        });
        Ok(out)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

/// A stream fed by a task. When the client drops the stream, the channel closes and the task
/// ends, dropping whatever it owns (here the engine event receiver).
fn async_stream<F, Fut>(f: F) -> ChunkStream
where
    F: FnOnce(mpsc::Sender<Result<pb::GenerateChunk, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let fut = f(tx);
    tokio::spawn(fut);
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
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
        model = %p.engine.spec().id,
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

/// The prompt HMAC of chat messages (see [`Auditor::chat_hmac`]).
fn chat_hmac(audit: &Auditor, messages: &[pb::ChatMessage]) -> Digest {
    audit.chat_hmac(
        messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str())),
    )
}

fn finish_to_pb(r: FinishReason) -> pb::FinishReason {
    match r {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
        FinishReason::Deadline => pb::FinishReason::Deadline,
        FinishReason::Error => pb::FinishReason::Error,
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn histogram_to_pb(h: &appl_engine::HistogramSnapshot) -> pb::Histogram {
    pb::Histogram {
        bounds: h.bounds.clone(),
        counts: h.cumulative.clone(),
        count: h.count,
        sum: h.sum,
    }
}

fn tenants_to_pb(t: &Tenants) -> Vec<pb::TenantStatus> {
    t.policies()
        .iter()
        .enumerate()
        .map(|(i, p)| pb::TenantStatus {
            name: p.name.clone(),
            weight: p.weight,
            max_concurrent: p.max_concurrent,
            tokens_per_minute: p.tokens_per_minute,
            default_priority: match p.default_priority {
                Priority::Interactive => pb::Priority::Interactive,
                Priority::Batch => pb::Priority::Batch,
            } as i32,
            in_flight: t.in_flight(TenantId(i as u32)),
        })
        .collect()
}

fn usage_to_pb(u: &Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        time_to_first_token_ms: u.time_to_first_token.as_secs_f64() * 1e3,
        decode_ms: u.decode.as_secs_f64() * 1e3,
        queue_ms: u.queue.as_secs_f64() * 1e3,
        cached_prompt_tokens: u.cached_prompt_tokens,
        preemptions: u.preemptions,
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for Api {
    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = self.audit.caller(&req)?;
        let hmac = self.audit.prompt_hmac(&req.get_ref().prompt);
        let p = self.prepare_generate(req, "Generate")?;
        let ticket = self
            .admit(&caller, Action::InferenceGenerate, hmac, &p)
            .await?;
        self.unary(p, ticket).await
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let caller = self.audit.caller(&req)?;
        let hmac = self.audit.prompt_hmac(&req.get_ref().prompt);
        let p = self.prepare_generate(req, "GenerateStream")?;
        let ticket = self
            .admit(&caller, Action::InferenceGenerate, hmac, &p)
            .await?;
        Ok(Response::new(self.stream(p, ticket).await?))
    }

    async fn chat(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = self.audit.caller(&req)?;
        let hmac = chat_hmac(&self.audit, &req.get_ref().messages);
        let p = self.prepare_chat(req, "Chat")?;
        let ticket = self.admit(&caller, Action::InferenceChat, hmac, &p).await?;
        self.unary(p, ticket).await
    }

    type ChatStreamStream = ChunkStream;

    async fn chat_stream(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let caller = self.audit.caller(&req)?;
        let hmac = chat_hmac(&self.audit, &req.get_ref().messages);
        let p = self.prepare_chat(req, "ChatStream")?;
        let ticket = self.admit(&caller, Action::InferenceChat, hmac, &p).await?;
        Ok(Response::new(self.stream(p, ticket).await?))
    }

    async fn tokenize(
        &self,
        req: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let received = Instant::now();
        let caller = self.audit.caller(&req)?;
        let r = req.into_inner();
        let engine = self.state.engine(&r.model)?;
        let hmac = match &r.input {
            Some(pb::tokenize_request::Input::Prompt(p)) => self.audit.prompt_hmac(p),
            Some(pb::tokenize_request::Input::Chat(c)) => chat_hmac(&self.audit, &c.messages),
            None => return Err(invalid("set either prompt or chat")),
        };
        let rendered = match r.input {
            Some(pb::tokenize_request::Input::Prompt(p)) => p,
            Some(pb::tokenize_request::Input::Chat(c)) => self.render(&r.model, &c.messages)?,
            None => return Err(invalid("set either prompt or chat")),
        };
        if rendered.len() > self.state.limits.max_prompt_bytes {
            return Err(invalid(format!(
                "the input is {} bytes; this daemon accepts at most {} (limits.max_prompt_bytes)",
                rendered.len(),
                self.state.limits.max_prompt_bytes
            )));
        }
        let token_ids = engine.tokenize(&rendered);
        self.audit
            .event(
                &caller,
                Action::InferenceTokenize,
                &self.state.request_id(),
                &engine.spec().id,
                token_ids.len(),
                hmac,
                received,
            )
            .await?;
        let pieces = token_ids.iter().map(|&t| engine.piece(t)).collect();
        Ok(Response::new(pb::TokenizeResponse {
            token_ids,
            rendered,
            pieces,
        }))
    }

    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let st = &self.state;
        let models = st
            .engines
            .values()
            .map(|e| {
                let spec = e.spec();
                let facts = e.facts();
                pb::ModelInfo {
                    id: spec.id.clone(),
                    path: spec.path.display().to_string(),
                    slots: spec.slots,
                    ctx_per_slot: spec.ctx_per_slot,
                    n_ctx_train: facts.n_ctx_train,
                    n_params: facts.n_params,
                    size_bytes: facts.size_bytes,
                    chat_template: st.chat_templates.get(&spec.id).cloned().unwrap_or_default(),
                    max_tokens_cap: st.limits.max_tokens_cap,
                    is_default: spec.id == st.default_model,
                    sha256: self
                        .audit
                        .model_sha256(&spec.id)
                        .map(|d| hex::encode(d.0))
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let engines = self
            .state
            .engines
            .values()
            .map(|e| {
                let s = e.stats();
                pb::EngineStatus {
                    model: e.spec().id.clone(),
                    slots: e.spec().slots,
                    busy_slots: s.busy_slots,
                    queued: s.queued,
                    steps: s.steps,
                    max_batch_sequences: s.max_batch_sequences,
                    tokens_generated: s.tokens_generated,
                    tokens_prefilled: s.tokens_prefilled,
                    requests_completed: s.requests_completed,
                    tokens_prefix_reused: s.tokens_prefix_reused,
                    queued_interactive: s.queued_interactive,
                    queued_batch: s.queued_batch,
                    paused: s.paused,
                    preemptions: s.preemptions,
                    rejected_queue_full: s.rejected_queue_full,
                    expired_in_queue: s.expired_in_queue,
                    time_to_first_token: Some(histogram_to_pb(&s.ttft)),
                    inter_token: Some(histogram_to_pb(&s.inter_token)),
                    batch_sequences: Some(histogram_to_pb(&s.batch_sequences)),
                }
            })
            .collect();
        let audit = self.audit.status();
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.state.started.elapsed().as_secs_f64(),
            engines,
            audit_state: audit.state.to_owned(),
            audit_reason: audit.reason,
            audit_records: audit.records,
            audit_key: audit.key,
            tenants: tenants_to_pb(&self.state.tenants),
            rejected_tenant_concurrency: self.state.tenants.rejections().0,
            rejected_tenant_rate: self.state.tenants.rejections().1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_defaults_are_valid() {
        let s = sampling_from(None).expect("defaults are valid");
        assert!(s.temperature > 0.0);
    }

    #[test]
    fn bad_sampling_is_invalid_argument_naming_the_field() {
        let cases = [
            (
                pb::SamplingParams {
                    temperature: Some(-0.1),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                pb::SamplingParams {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                pb::SamplingParams {
                    top_p: Some(1.5),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                pb::SamplingParams {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                pb::SamplingParams {
                    min_p: Some(-1.0),
                    ..Default::default()
                },
                "min_p",
            ),
            (
                pb::SamplingParams {
                    top_k: Some(-3),
                    ..Default::default()
                },
                "top_k",
            ),
            (
                pb::SamplingParams {
                    repeat_penalty: Some(0.0),
                    ..Default::default()
                },
                "repeat_penalty",
            ),
        ];
        for (params, field) in cases {
            let err = sampling_from(Some(params)).expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(field), "{}", err.message());
        }
    }

    #[test]
    fn grpc_timeout_header_becomes_a_deadline() {
        let now = Instant::now();
        for (v, d) in [
            ("250m", Duration::from_millis(250)),
            ("3S", Duration::from_secs(3)),
            ("5u", Duration::from_micros(5)),
            ("1M", Duration::from_secs(60)),
        ] {
            let mut req = Request::new(());
            req.metadata_mut()
                .insert("grpc-timeout", v.parse().expect("ascii"));
            assert_eq!(deadline_of(&req, now), Some(now + d), "{v}");
        }
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "xyz".parse().expect("ascii"));
        assert_eq!(deadline_of(&req, now), None);
    }
}
