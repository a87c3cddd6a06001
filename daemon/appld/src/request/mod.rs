//! The request path that every face (gRPC, the OpenAI-compatible HTTP API) shares: admission
//! ([`admit`]: validation ([`validate`]) and the admitted record), then the tenant permit, the audit records and the engine
//! ([`drive`]). Faces translate their wire types into a [`GenerateInput`] and the results back;
//! nothing in here sees a wire type.
//!
//! Every failure is a [`RequestError`]. Its variant decides the canonical status code
//! ([`RequestError::code`]): the gRPC status, the code in the audit record, and later the HTTP
//! status all follow from it, never from the message text.

pub mod admit;
pub mod drive;
pub mod validate;

use std::time::{Duration, Instant};

use appl_audit::AuditError;
use appl_engine::{ChatMessage, Priority, Sampling, TenantId};
use tonic::Code;

use crate::registry::ModelLease;
use crate::tenants::Refusal;

pub use drive::{Completion, Piece};

/// Why a request failed. The message is for people; the variant decides the code.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A field is missing, malformed or out of range; the message names it and the limit.
    #[error("{0}")]
    Invalid(String),
    /// One field of the request is malformed or out of range: `field` names it as the faces
    /// call it (`temperature`, `prompt`, `messages`), the message says what is allowed.
    #[error("{message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// The model is not served here; the message lists the ones that are.
    #[error("{0}")]
    UnknownModel(String),
    /// The model cannot render chat messages (no template, or the template failed).
    #[error("{0}")]
    ChatTemplate(String),
    /// A tenant limit refused the request before it queued.
    #[error(transparent)]
    TenantLimit(#[from] Refusal),
    /// The model's queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// The engine stopped before or during the request.
    #[error("{0}")]
    EngineStopped(String),
    /// The model is loading, unloading or being replaced; a retry shortly may succeed.
    #[error("{0}")]
    ModelUnavailable(String),
    /// A GPU that holds the model has a fault (uncorrectable ECC, a fatal XID); the message
    /// names the GPU and the error. It lasts until the GPU is reset and the daemon restarted.
    #[error("model {model} is out of service: GPU{gpu} ({gpu_name}) reported {fault}; reset the GPU and restart appld, or use another appliance")]
    HardwareFault {
        model: String,
        gpu: u32,
        gpu_name: String,
        fault: String,
    },
    /// The daemon is draining before it stops.
    #[error("the daemon is shutting down and takes no new requests; retry against another appliance or once it is back")]
    ShuttingDown,
    /// The client's deadline passed.
    #[error("{0}")]
    Deadline(String),
    /// Generation failed inside the engine.
    #[error("{0}")]
    Generation(String),
    /// The audit log could not record the request; nothing is served unaudited.
    #[error("{}", audit_message(.0))]
    Audit(#[from] AuditError),
    /// A bug or an impossible state; the message says which.
    #[error("{0}")]
    Internal(String),
    /// The caller has no valid credentials: no or a bad client certificate, an unknown or
    /// disabled API key, an identity that is not configured.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (a role it lacks, a tenant not its own).
    #[error("{0}")]
    PermissionDenied(String),
    /// An input is over a configured limit; `key` is the config key that sets it.
    #[error("{message}")]
    OverLimit { key: &'static str, message: String },
}

/// How long a client should wait before retrying a full queue.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(1000);

impl RequestError {
    /// The canonical status code of this error (gRPC's code space; the audit log records it).
    pub fn code(&self) -> Code {
        match self {
            RequestError::Invalid(_)
            | RequestError::InvalidField { .. }
            | RequestError::OverLimit { .. } => Code::InvalidArgument,
            RequestError::Unauthenticated(_) => Code::Unauthenticated,
            RequestError::PermissionDenied(_) => Code::PermissionDenied,
            RequestError::UnknownModel(_) => Code::NotFound,
            RequestError::ChatTemplate(_) => Code::FailedPrecondition,
            RequestError::TenantLimit(_) | RequestError::QueueFull(_) => Code::ResourceExhausted,
            RequestError::EngineStopped(_)
            | RequestError::ShuttingDown
            | RequestError::ModelUnavailable(_)
            | RequestError::HardwareFault { .. } => Code::Unavailable,
            RequestError::Deadline(_) => Code::DeadlineExceeded,
            RequestError::Generation(_) | RequestError::Internal(_) => Code::Internal,
            RequestError::Audit(e) => audit_code(e),
        }
    }

    /// When a retry may succeed, for refusals that have such a time.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RequestError::TenantLimit(r) => Some(r.retry_after()),
            RequestError::QueueFull(_) | RequestError::ModelUnavailable(_) => {
                Some(QUEUE_FULL_RETRY)
            }
            _ => None,
        }
    }

    /// The limit that refused the request, as a short stable name, if one did: the tenant
    /// limit, or the config key of an input limit (`limits.max_prompt_bytes`).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            RequestError::TenantLimit(r) => Some(r.reason()),
            RequestError::OverLimit { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl RequestError {
    /// The request field at fault, if one is: the field of an [`RequestError::InvalidField`],
    /// or the field an input limit measured (by its config key).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RequestError::InvalidField { field, .. } => Some(field),
            RequestError::UnknownModel(_) => Some("model"),
            RequestError::OverLimit { key, .. } => match *key {
                "limits.max_prompt_bytes" | "limits.max_prompt_tokens" => Some("prompt"),
                "limits.max_chat_messages" => Some("messages"),
                "limits.max_tokens_cap" => Some("max_tokens"),
                "limits.max_stop_sequences" | "limits.max_stop_bytes" => Some("stop"),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The status code of an audit failure: the one mapping from [`AuditError`] to a code, used by
/// the request path and the Audit service alike.
pub fn audit_code(e: &AuditError) -> Code {
    match e {
        AuditError::Unavailable(_) | AuditError::Closed => Code::Unavailable,
        AuditError::InvalidField { .. } => Code::InvalidArgument,
        AuditError::Export(_) => Code::FailedPrecondition,
        AuditError::Corrupt(_) => Code::DataLoss,
        AuditError::Store(_) | AuditError::Io { .. } | AuditError::Key(_) => Code::Internal,
    }
}

/// What an operator or client reads about an audit failure, with its stable reason.
pub fn audit_message(e: &AuditError) -> String {
    match e {
        AuditError::Unavailable(why) => format!(
            "the audit log cannot write ({why}); requests are refused until it can (reason: {})",
            e.reason()
        ),
        AuditError::Closed => format!(
            "the audit log is closed (the daemon is shutting down); requests are refused \
             (reason: {})",
            e.reason()
        ),
        other => format!("{other} (reason: {})", other.reason()),
    }
}

/// The text to generate from.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// A raw prompt, continued as is.
    Text(String),
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// Sampling as the client asked for it; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct SamplingInput {
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    pub seed: Option<u32>,
}

/// A generation request as a face received it, before validation.
#[derive(Debug, Clone)]
pub struct GenerateInput {
    /// The method, for logs (`Generate`, `ChatStream`, ...).
    pub method: &'static str,
    /// Empty for the default model.
    pub model: String,
    pub prompt: PromptInput,
    pub sampling: SamplingInput,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// `None` takes the tenant's default priority.
    pub priority: Option<Priority>,
    /// The client's deadline, if it set one.
    pub deadline: Option<Instant>,
    /// When the request arrived.
    pub received: Instant,
}

/// A validated generation request, ready for its admitted record and an engine.
#[derive(Debug)]
pub struct Prepared {
    /// The model's engine, leased: the model is not unloaded while the request holds it.
    pub engine: ModelLease,
    pub prompt: Vec<i32>,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub deadline: Option<Instant>,
    pub request_id: String,
    pub received: Instant,
    pub method: &'static str,
    pub tenant: TenantId,
    /// The tenant table `tenant` indexes: the one this request was admitted with, even if a
    /// reload has replaced it since.
    pub tenants: std::sync::Arc<crate::tenants::Tenants>,
    pub priority: Priority,
}

impl Prepared {
    /// The id of the model that serves this request.
    pub fn model(&self) -> &str {
        &self.engine.spec().id
    }
}
