//! The edge: a tower layer on the router that every request passes before any service sees
//! it, whatever face it came in by (gRPC, or the OpenAI-compatible HTTP API: [`Face`]). It
//!
//! 1. refuses metadata larger than `limits.max_metadata_bytes`;
//! 2. resolves the caller ([`super::resolve`]) and checks the role the service needs
//!    ([`super::roles::ACCESS`], [`super::roles::HTTP_ACCESS`]); a refusal is answered here in
//!    the face's own shape, recorded as `auth.denied` (durable before the answer) and logged
//!    without any credential;
//! 3. puts the [`Caller`] in the request's extensions, where services read it;
//! 4. limits each gRPC request message to `limits.max_message_bytes`, naming the key when it
//!    refuses (the HTTP face limits its body itself, answering 413);
//! 5. records every `appl.v1.Admin` action (all methods but the reads in
//!    [`super::roles::ADMIN_READS`]) as `admin.<method>`: admitted before the handler runs,
//!    completed with its status before the client gets it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use appl_audit::{Action, Ident, NewRecord, Phase, Role as AuditRole};
use axum::body::Body;
use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body::Frame;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};
use tracing::warn;

use super::roles::{access, admin_op, http_access, split_path, Access, ADMIN_READS};
use super::{authorize, resolve, Denial, PeerAuth, Presented, AUTHORIZATION, TENANT_HEADER};
use crate::audit::{micros, Auditor};
use crate::request::RequestError;
use crate::state::AppState;

type Response = axum::response::Response;

/// Which face the routes behind an edge are: it decides the access table and the shape of a
/// refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// gRPC services; refusals are gRPC statuses.
    Grpc,
    /// The OpenAI-compatible HTTP API; refusals are OpenAI-shaped JSON errors.
    OpenAi,
}

impl Face {
    fn access(self, path: &str) -> Access {
        match self {
            Face::Grpc => access(path),
            Face::OpenAi => http_access(path),
        }
    }

    fn refuse(self, e: RequestError) -> Response {
        match self {
            Face::Grpc => tonic::Status::from(e).into_http::<Body>(),
            Face::OpenAi => crate::openai::error::response(&e),
        }
    }
}

/// The layer that installs [`Edge`] around the routes.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    state: Arc<AppState>,
    audit: Arc<Auditor>,
    face: Face,
}

impl EdgeLayer {
    /// The edge of the gRPC routes.
    pub fn new(state: Arc<AppState>, audit: Arc<Auditor>) -> Self {
        Self {
            state,
            audit,
            face: Face::Grpc,
        }
    }

    /// The edge of the OpenAI-compatible HTTP routes.
    pub fn openai(state: Arc<AppState>, audit: Arc<Auditor>) -> Self {
        Self {
            state,
            audit,
            face: Face::OpenAi,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            state: Arc::clone(&self.state),
            audit: Arc::clone(&self.audit),
            face: self.face,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    state: Arc<AppState>,
    audit: Arc<Auditor>,
    face: Face,
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was made ready goes with this call (tower's usual swap).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let state = Arc::clone(&self.state);
        let audit = Arc::clone(&self.audit);
        let face = self.face;
        Box::pin(async move { Ok(handle(inner, state, audit, face, req).await) })
    }
}

async fn handle<S>(
    mut inner: S,
    state: Arc<AppState>,
    audit: Arc<Auditor>,
    face: Face,
    mut req: Request<Body>,
) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let path = req.uri().path().to_owned();
    let limits = state.limits();
    let meta = metadata_bytes(req.headers());
    if meta > limits.max_metadata_bytes {
        return face.refuse(RequestError::OverLimit {
            key: "limits.max_metadata_bytes",
            message: format!(
                "the request metadata is {meta} bytes; this daemon accepts at most {} \
                 (limits.max_metadata_bytes)",
                limits.max_metadata_bytes
            ),
        });
    }
    let auth = state.auth();
    let presented = Presented {
        conn: req.extensions().get::<PeerAuth>(),
        remote: req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr),
        authorization: req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()),
        tenant: req.headers().get(TENANT_HEADER).map(|v| v.as_bytes()),
        certs_required: auth.certs_required,
    };
    let need = face.access(&path);
    let decided = resolve(&auth, &presented).and_then(|c| authorize(&c, need, &path).map(|()| c));
    let caller = match decided {
        Ok(c) => c,
        Err(_) if need == Access::Anyone => super::anonymous_caller(&presented),
        Err(d) => return deny(&audit, d, &path, face).await,
    };
    req.extensions_mut().insert(caller.clone());
    if face == Face::OpenAi {
        return call(&mut inner, req).await;
    }
    let limit = limits.max_message_bytes;
    let req = req.map(|b| Body::new(LimitedBody::new(b, limit)));

    let (service, method) = split_path(&path);
    if service != "appl.v1.Admin" || ADMIN_READS.contains(&method) {
        return call(&mut inner, req).await;
    }
    // An admin action: on record, durably, before it runs.
    let received = Instant::now();
    let action = match Action::admin(&admin_op(method)) {
        Ok(a) => a,
        Err(e) => {
            return refuse(RequestError::Invalid(format!(
                "admin method {method:?}: {e}"
            )))
        }
    };
    let mut admitted = NewRecord::new(
        action,
        Phase::Admitted,
        caller.actor().clone(),
        AuditRole::Operator,
    );
    admitted.roles = caller.roles_ident();
    admitted.tenant = caller.tenant_ident();
    admitted.peer = caller.peer().cloned();
    admitted.request_id = Ident::new(state.request_ids().next("admin-")).ok();
    let mut completed = admitted.clone();
    completed.phase = Phase::Completed;
    if let Err(e) = audit.append(admitted).await {
        return refuse(RequestError::Audit(e));
    }
    let resp = call(&mut inner, req).await;
    let (parts, body) = resp.into_parts();
    if let Some(code) = grpc_status(&parts.headers) {
        // Trailers-only answer (an error, usually): record it before it leaves.
        completed.status = Some(code);
        completed.latency_us = Some(micros(received.elapsed()));
        if let Err(e) = audit.append(completed).await {
            warn!(target: "audit", error = %e, "could not record an admin action's outcome");
        }
        return Response::from_parts(parts, body);
    }
    let body = AuditedBody {
        inner: body,
        audit,
        record: Some(completed),
        received,
        pending: None,
        held: None,
    };
    Response::from_parts(parts, Body::new(body))
}

async fn call<S>(inner: &mut S, req: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The bytes of a request's metadata as HTTP/2 counts them (name, value and 32 per entry).
fn metadata_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
}

fn refuse(e: RequestError) -> Response {
    tonic::Status::from(e).into_http::<Body>()
}

/// Records a denial (durably, before the answer; best effort: the refusal stands if the log
/// cannot write), logs it without credentials, and answers it.
async fn deny(audit: &Auditor, d: Denial, path: &str, face: Face) -> Response {
    let code = d.error.code();
    warn!(target: "auth", path, actor = %d.actor, peer = d.peer.as_ref().map_or("", |p| p.as_str()),
        reason = d.reason, code = ?code, "refused");
    if d.audited {
        let mut r = NewRecord::new(
            Action::AuthDenied,
            Phase::Event,
            d.actor.clone(),
            AuditRole::Anonymous,
        );
        r.peer = d.peer.clone();
        r.roles = (!d.roles.is_empty())
            .then(|| Ident::new(d.roles.joined()).ok())
            .flatten();
        r.status = Some(code as u32);
        r.reason = Ident::new(d.reason).ok();
        r.request_id = Ident::new(path.trim_start_matches('/').replace('/', ":")).ok();
        r.api = Ident::new(match face {
            Face::Grpc => crate::audit::Api::Grpc.name(),
            Face::OpenAi => crate::audit::Api::OpenAi.name(),
        })
        .ok();
        if let Err(e) = audit.append(r).await {
            warn!(target: "audit", error = %e, "could not record a refused call");
        }
    }
    face.refuse(*d.error)
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A request body that refuses any gRPC message larger than the limit as soon as its length
/// prefix arrives, before the message is buffered.
struct LimitedBody {
    inner: Body,
    limit: usize,
    /// Bytes of the current 5-byte message header seen so far.
    header: Vec<u8>,
    /// Bytes of the current message still to pass.
    remaining: usize,
}

impl LimitedBody {
    fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            header: Vec::with_capacity(5),
            remaining: 0,
        }
    }

    /// Follows the gRPC framing through `data`; the size of a message over the limit.
    fn scan(&mut self, mut data: &[u8]) -> Option<usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.header.clear();
                if len > self.limit {
                    return Some(len);
                }
                self.remaining = len;
            }
        }
        None
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let chunk = data.chunk().to_vec();
                if let Some(len) = self.scan(&chunk) {
                    let limit = self.limit;
                    let status = tonic::Status::from(RequestError::OverLimit {
                        key: "limits.max_message_bytes",
                        message: format!(
                            "the request message is {len} bytes; this daemon accepts at most \
                             {limit} (limits.max_message_bytes)"
                        ),
                    });
                    return Poll::Ready(Some(Err(axum::Error::new(status))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An admin action's response body: the `completed` record, with the status from the trailers,
/// is durable before the trailers go out. A client that leaves early is recorded as cancelled.
struct AuditedBody {
    inner: Body,
    audit: Arc<Auditor>,
    record: Option<NewRecord>,
    received: Instant,
    pending: Option<Pending>,
    held: Option<HeaderMap>,
}

impl AuditedBody {
    fn finish(&mut self, code: u32) -> Option<NewRecord> {
        let mut r = self.record.take()?;
        r.status = Some(code);
        r.latency_us = Some(micros(self.received.elapsed()));
        Some(r)
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if let Some(p) = self.pending.as_mut() {
                ready!(p.as_mut().poll(cx));
                self.pending = None;
                return Poll::Ready(self.held.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(f)) if f.is_trailers() => {
                    let Ok(trailers) = f.into_trailers() else {
                        unreachable!("is_trailers was checked")
                    };
                    let code = grpc_status(&trailers).unwrap_or(tonic::Code::Unknown as u32);
                    if let Some(r) = self.finish(code) {
                        let audit = Arc::clone(&self.audit);
                        self.pending = Some(Box::pin(async move {
                            if let Err(e) = audit.append(r).await {
                                warn!(target: "audit", error = %e, "could not record an admin action's outcome");
                            }
                        }));
                    }
                    self.held = Some(trailers);
                }
                Some(Ok(f)) => return Poll::Ready(Some(Ok(f))),
                Some(Err(e)) => {
                    if let Some(r) = self.finish(tonic::Code::Internal as u32) {
                        self.audit.append_in_background(r);
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if let Some(r) = self.finish(tonic::Code::Unknown as u32) {
                        self.audit.append_in_background(r);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        if let Some(r) = self.finish(tonic::Code::Cancelled as u32) {
            self.audit.append_in_background(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_limit_reads_lengths_across_chunk_boundaries() {
        let mut b = LimitedBody::new(Body::empty(), 10);
        // A 3-byte message, then a 10-byte one split inside its header: both pass.
        assert_eq!(b.scan(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0]), None);
        assert_eq!(b.scan(&[0, 10]), None);
        assert_eq!(b.scan(&[0; 10]), None);
        // An 11-byte message is refused as soon as its prefix is complete.
        assert_eq!(b.scan(&[0, 0, 0]), None);
        assert_eq!(b.scan(&[0, 11]), Some(11));
    }

    /// Any Admin method but the reads is on record: admitted before it runs, completed with
    /// the status its trailers carry; and a caller without the operator role never reaches it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_actions_are_recorded_and_need_the_operator_role() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = crate::config::AuditSettings {
            dir: dir.path().to_owned(),
            ..Default::default()
        };
        let audit = Arc::new(Auditor::open(&settings).await.expect("audit log"));
        let state = Arc::new(
            AppState::new(
                Arc::new(crate::registry::Registry::new("")),
                crate::config::LimitsConfig::default(),
            )
            .with_auth(crate::identity::AuthTable::new(
                &crate::identity::config::AuthSettings::default(),
                &[],
                &[],
                &[],
            )),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        // A stand-in for a future Admin method: answers OK in its trailers.
        let inner = tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().expect("ascii"));
                let frames = futures::stream::iter([
                    Ok::<_, axum::Error>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Ok::<_, Infallible>(Response::new(Body::new(http_body_util::StreamBody::new(
                    frames,
                ))))
            }
        });
        let mut edge = EdgeLayer::new(Arc::clone(&state), Arc::clone(&audit)).layer(inner);
        let call = |uid: u32| {
            let mut req = Request::post("/appl.v1.Admin/StartDrain")
                .body(Body::empty())
                .expect("request");
            req.extensions_mut().insert(PeerAuth::Unix {
                uid,
                gid: uid,
                groups: vec![uid].into(),
            });
            req
        };
        let resp = edge.call(call(0)).await.expect("infallible");
        let collected = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body");
        assert_eq!(collected.trailers().and_then(grpc_status), Some(0));
        // uid 4242 is not an admin: refused at the edge, never reaching the method.
        let resp = edge.call(call(4242)).await.expect("infallible");
        assert_eq!(
            grpc_status(resp.headers()),
            Some(tonic::Code::PermissionDenied as u32)
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let tail = audit.log().tail(10).expect("tail");
        let actions: Vec<(String, String, Option<u32>)> = tail
            .iter()
            .map(|r| {
                (
                    r.record.action.name(),
                    r.record.actor.to_string(),
                    r.record.status,
                )
            })
            .collect();
        assert!(
            actions.contains(&("admin.start_drain".into(), "uid:0".into(), None)),
            "{actions:?}"
        );
        assert!(
            actions.contains(&("admin.start_drain".into(), "uid:0".into(), Some(0))),
            "{actions:?}"
        );
        assert!(
            actions.contains(&("auth.denied".into(), "uid:4242".into(), Some(7))),
            "{actions:?}"
        );
        audit.stop().await;
    }

    #[test]
    fn metadata_is_counted_as_http2_does() {
        let mut h = HeaderMap::new();
        h.insert("x-appl-tenant", "ward-a".parse().expect("ascii"));
        assert_eq!(metadata_bytes(&h), 13 + 6 + 32);
    }
}
