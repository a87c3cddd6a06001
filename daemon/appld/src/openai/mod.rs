//! The OpenAI-compatible HTTP face of the request path: `POST /v1/chat/completions` and
//! `POST /v1/completions` (whole, or streamed as server-sent events ending `data: [DONE]`),
//! `GET /v1/models` and `GET /health`, on their own listener (`[openai] listen`).
//!
//! Like the gRPC face (`api/`) it only translates: the edge layer has resolved the caller (an
//! API key as `Authorization: Bearer`, or a client certificate); the request goes through the
//! same admission, tenant permit, audit records and engine queue ([`crate::request`]), and its
//! records say `api = openai`. Errors are OpenAI-shaped ([`error`]).

pub mod config;
pub mod error;
pub mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use appl_audit::Action;
use appl_engine::FinishReason;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use futures::{stream, Stream, StreamExt};
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::audit::{Api, Auditor};
use crate::identity::Caller;
use crate::request::{admit, drive, Piece, RequestError};
use crate::state::AppState;
use wire::{Head, Kind, Parsed};

/// The header that carries the request id on every generation answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the handlers share.
#[derive(Debug)]
pub struct OpenAi {
    state: Arc<AppState>,
    audit: Arc<Auditor>,
}

/// The routes of the HTTP API (the edge layer goes on top, in `serve.rs`).
pub fn router(state: Arc<AppState>, audit: Arc<Auditor>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(Arc::new(OpenAi { state, audit }))
}

async fn chat(State(api): State<Arc<OpenAi>>, req: Request) -> Response {
    api.generate(Kind::Chat, req).await
}

async fn completions(State(api): State<Arc<OpenAi>>, req: Request) -> Response {
    api.generate(Kind::Completion, req).await
}

async fn not_found(req: Request) -> Response {
    error::plain(
        StatusCode::NOT_FOUND,
        "unknown_url",
        format!(
            "{} {} is not part of this API; it serves POST /v1/chat/completions, POST \
             /v1/completions, GET /v1/models and GET /health",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `GET /health`: 200 while the daemon serves inference, 503 while it drains or the audit
/// log cannot write (the same state grpc.health reports for `""`).
async fn health(State(api): State<Arc<OpenAi>>) -> Response {
    match admit::check_open(&api.state, &api.audit) {
        Ok(()) => error::json_response(StatusCode::OK, &json!({"status": "serving"})),
        Err(e) => {
            let mut body = error::body_of(&e);
            body["status"] = json!("not_serving");
            error::json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// `GET /v1/models`: the models served now.
async fn models(State(api): State<Arc<OpenAi>>) -> Response {
    let created = std::time::SystemTime::now()
        .checked_sub(api.state.started.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let data: Vec<_> = api
        .state
        .models
        .snapshot()
        .keys()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "appl"}))
        .collect();
    error::json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

impl OpenAi {
    async fn generate(&self, kind: Kind, req: Request) -> Response {
        let received = Instant::now();
        match self.try_generate(kind, req, received).await {
            Ok(r) => r,
            Err(e) => e,
        }
    }

    async fn try_generate(
        &self,
        kind: Kind,
        req: Request,
        received: Instant,
    ) -> Result<Response, Response> {
        let refuse = |e: RequestError| error::response(&e);
        admit::check_open(&self.state, &self.audit).map_err(refuse)?;
        let caller = Caller::from_extensions(req.extensions()).map_err(refuse)?;
        let body = self.read_body(req).await?;
        let Parsed {
            input,
            stream,
            include_usage,
        } = wire::parse(kind, &body, received).map_err(refuse)?;
        let action = match kind {
            Kind::Chat => Action::InferenceChat,
            Kind::Completion => Action::InferenceGenerate,
        };
        let origin = admit::Origin {
            caller: &caller,
            action: &action,
            api: Api::OpenAi,
        };
        let (p, ticket) = admit::admit(&self.state, &self.audit, origin, input)
            .await
            .map_err(refuse)?;
        let request_id = p.request_id.clone();
        let head = Head::new(kind, &request_id, p.model());
        let mut resp = if stream {
            let rx = drive::run_streaming(&self.state, p, ticket)
                .await
                .map_err(refuse)?;
            sse(head, rx, include_usage)
        } else {
            let c = drive::run_to_end(p, ticket).await.map_err(refuse)?;
            if c.reason == FinishReason::Cancelled {
                return Err(refuse(cancelled()));
            }
            error::json_response(StatusCode::OK, &head.whole(&c.text, c.reason, &c.usage))
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        Ok(resp)
    }

    /// The request body, at most `limits.max_message_bytes` (413 past it, naming the key).
    async fn read_body(&self, req: Request) -> Result<Bytes, Response> {
        let limit = self.state.limits().max_message_bytes;
        let too_large = |len: Option<u64>| {
            let size = len.map_or_else(|| "larger".to_owned(), |n| format!("{n} bytes"));
            let mut r = error::plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is {size}; this daemon accepts at most {limit} \
                     (limits.max_message_bytes)"
                ),
            );
            r.headers_mut().insert(
                crate::api::convert::LIMIT_HEADER,
                HeaderValue::from_static("limits.max_message_bytes"),
            );
            r
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(declared));
        }
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(None)),
            Err(e) => Err(error::plain(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("the request body could not be read: {e}"),
            )),
        }
    }
}

fn cancelled() -> RequestError {
    RequestError::EngineStopped(
        "the request was ended before it finished (the daemon is stopping); retry".into(),
    )
}

/// One server-sent event carrying `v`.
fn event(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A streamed answer as server-sent events: a chat's first chunk carries the role, each piece
/// its text, the last chunk the finish reason, then the usage if asked for, then
/// `data: [DONE]`. An error mid-stream is sent as an event with the error object, and the
/// stream ends without `[DONE]`. Dropping the body (the client went away) drops `rx`, which
/// ends the request and frees its slot at the engine's next step.
fn sse(
    head: Head,
    rx: tokio::sync::mpsc::Receiver<Result<Piece, RequestError>>,
    include_usage: bool,
) -> Response {
    let first = (head.kind == Kind::Chat).then(|| event(&head.chunk(Some(""), true, None)));
    let pieces = tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(move |item| {
        let frames: Vec<Bytes> = match item {
            Ok(Piece::Tokens { text, .. }) if text.is_empty() => Vec::new(),
            Ok(Piece::Tokens { text, .. }) => vec![event(&head.chunk(Some(&text), false, None))],
            Ok(Piece::Done {
                reason: FinishReason::Cancelled,
                ..
            }) => {
                vec![event(&error::body_of(&cancelled()))]
            }
            Ok(Piece::Done { reason, usage }) => {
                let mut f = vec![event(&head.chunk(None, false, Some(reason)))];
                if include_usage {
                    f.push(event(&head.usage_chunk(&usage)));
                }
                f.push(Bytes::from_static(b"data: [DONE]\n\n"));
                f
            }
            Err(e) => vec![event(&error::body_of(&e))],
        };
        stream::iter(frames)
    });
    let body = stream::iter(first).chain(pieces);
    let mut r = Response::new(Body::from_stream(ok_frames(body)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn ok_frames(s: impl Stream<Item = Bytes>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    s.map(Ok)
}
