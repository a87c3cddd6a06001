//! Conversions between `appl.v1` wire types and the daemon's own: requests in, answers,
//! statistics and errors out. The one place where a [`RequestError`] becomes a gRPC status.

use std::time::{Duration, Instant};

use appl_audit::AuditError;
use appl_engine::{
    ChatMessage, EngineHandle, FinishReason, HistogramSnapshot, Priority, TenantId, Usage,
};
use appl_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::registry::LoadedModel;
use crate::request::{GenerateInput, Piece, PromptInput, RequestError, SamplingInput};
use crate::state::AppState;
use crate::tenants::Tenants;

/// The metadata key of the retry hint on a refusal, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The metadata key naming the limit that refused a request.
pub const LIMIT_HEADER: &str = "x-appl-limit";

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        let mut s = Status::new(e.code(), e.to_string());
        if let Some(after) = e.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            s.metadata_mut()
                .insert(RETRY_AFTER_MS, MetadataValue::from(ms));
        }
        if let Some(limit) = e.limit() {
            s.metadata_mut()
                .insert(LIMIT_HEADER, MetadataValue::from_static(limit));
        }
        s
    }
}

/// An audit error as a gRPC status (the Audit service's reads and writes).
pub fn audit_status(e: AuditError) -> Status {
    RequestError::Audit(e).into()
}

/// The deadline a client set with `grpc-timeout`, as an instant.
pub fn deadline_of<T>(req: &Request<T>, received: Instant) -> Option<Instant> {
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

fn priority(p: i32) -> Result<Option<Priority>, RequestError> {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::Interactive) => Ok(Some(Priority::Interactive)),
        Ok(pb::Priority::Batch) => Ok(Some(Priority::Batch)),
        Ok(pb::Priority::Unspecified) => Ok(None),
        Err(_) => Err(RequestError::Invalid(format!(
            "priority is {p}; use PRIORITY_INTERACTIVE or PRIORITY_BATCH"
        ))),
    }
}

fn sampling(p: Option<pb::SamplingParams>) -> SamplingInput {
    let p = p.unwrap_or_default();
    SamplingInput {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n,
        seed: p.seed,
    }
}

/// Chat messages off the wire.
pub fn messages(m: Vec<pb::ChatMessage>) -> Vec<ChatMessage> {
    m.into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect()
}

/// A `Generate`/`GenerateStream` request.
pub fn generate_input(
    req: Request<pb::GenerateRequest>,
    method: &'static str,
) -> Result<GenerateInput, RequestError> {
    let received = Instant::now();
    let deadline = deadline_of(&req, received);
    let r = req.into_inner();
    Ok(GenerateInput {
        method,
        priority: priority(r.priority)?,
        model: r.model,
        prompt: PromptInput::Text(r.prompt),
        sampling: sampling(r.sampling),
        max_tokens: r.max_tokens,
        stop: r.stop,
        deadline,
        received,
    })
}

/// A `Chat`/`ChatStream` request.
pub fn chat_input(
    req: Request<pb::ChatRequest>,
    method: &'static str,
) -> Result<GenerateInput, RequestError> {
    let received = Instant::now();
    let deadline = deadline_of(&req, received);
    let r = req.into_inner();
    Ok(GenerateInput {
        method,
        priority: priority(r.priority)?,
        model: r.model,
        prompt: PromptInput::Chat(messages(r.messages)),
        sampling: sampling(r.sampling),
        max_tokens: r.max_tokens,
        stop: r.stop,
        deadline,
        received,
    })
}

pub fn finish_to_pb(r: FinishReason) -> pb::FinishReason {
    match r {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
        FinishReason::Deadline => pb::FinishReason::Deadline,
        FinishReason::Error => pb::FinishReason::Error,
    }
}

pub fn usage_to_pb(u: &Usage) -> pb::Usage {
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

/// One streamed piece as a chunk of `request_id`.
pub fn chunk_to_pb(piece: Piece, request_id: &str) -> pb::GenerateChunk {
    match piece {
        Piece::Tokens { text, token_ids } => pb::GenerateChunk {
            text,
            token_ids,
            request_id: request_id.to_owned(),
            ..Default::default()
        },
        Piece::Done { reason, usage } => pb::GenerateChunk {
            finish_reason: finish_to_pb(reason) as i32,
            usage: Some(usage_to_pb(&usage)),
            request_id: request_id.to_owned(),
            ..Default::default()
        },
    }
}

pub fn histogram_to_pb(h: &HistogramSnapshot) -> pb::Histogram {
    pb::Histogram {
        bounds: h.bounds.clone(),
        counts: h.cumulative.clone(),
        count: h.count,
        sum: h.sum,
    }
}

pub fn tenants_to_pb(t: &Tenants) -> Vec<pb::TenantStatus> {
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

/// A loaded model as `ListModels` describes it.
pub fn model_to_pb(state: &AppState, m: &LoadedModel) -> pb::ModelInfo {
    let spec = m.engine.spec();
    let facts = m.engine.facts();
    pb::ModelInfo {
        id: spec.id.clone(),
        path: spec.path.display().to_string(),
        slots: spec.slots(),
        ctx_per_slot: spec.ctx_per_slot(),
        n_ctx_train: facts.n_ctx_train,
        n_params: facts.n_params,
        size_bytes: facts.size_bytes,
        chat_template: m.config.chat_template.clone(),
        max_tokens_cap: state.limits().max_tokens_cap,
        is_default: spec.id == state.models.default_model(),
        sha256: hex::encode(m.sha256.0),
    }
}

/// A certificate the daemon serves with or trusts, with its expiry.
pub fn cert_to_pb(c: &crate::tls::CertSummary) -> pb::CertificateStatus {
    let left = match c.not_after.duration_since(std::time::SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    pb::CertificateStatus {
        role: c.role.to_owned(),
        subject: c.subject.clone(),
        not_after: appl_audit::Timestamp::from_system(c.not_after).to_string(),
        seconds_left: left,
    }
}

/// An engine's counters as `Admin.Status` reports them.
pub fn engine_status_to_pb(e: &EngineHandle) -> pb::EngineStatus {
    let s = e.stats();
    pb::EngineStatus {
        model: e.spec().id.clone(),
        slots: e.spec().slots(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn refusals_carry_their_retry_hint_and_limit() {
        let s = Status::from(RequestError::QueueFull("full".into()));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("1000")
        );
        assert!(s.metadata().get(LIMIT_HEADER).is_none());
        let s = Status::from(RequestError::Invalid("bad".into()));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.metadata().get(RETRY_AFTER_MS).is_none());
        // An input limit names its config key, in the message and in x-appl-limit.
        let s = Status::from(RequestError::OverLimit {
            key: "limits.max_message_bytes",
            message: "too big (limits.max_message_bytes)".into(),
        });
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.metadata().get(LIMIT_HEADER).and_then(|v| v.to_str().ok()),
            Some("limits.max_message_bytes")
        );
        for (e, code) in [
            (
                RequestError::Unauthenticated("who".into()),
                tonic::Code::Unauthenticated,
            ),
            (
                RequestError::PermissionDenied("no".into()),
                tonic::Code::PermissionDenied,
            ),
        ] {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn an_unknown_priority_is_invalid() {
        assert!(priority(pb::Priority::Batch as i32).is_ok());
        let err = priority(42).expect_err("no such priority");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
