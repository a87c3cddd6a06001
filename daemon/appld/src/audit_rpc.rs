//! `appl.v1.Audit`: tail, export and verify the audit log through the running daemon.
//!
//! While `appld` runs, sled holds the store's lock, so `applctl audit` cannot open it; this
//! service reads the live store instead ([`appl_audit::AuditLog::reader`]). Like `api.rs` it is
//! part of the gRPC layer: it converts `appl.v1` messages to the audit crate's types and back,
//! and the audit crate never sees a wire type.
//!
//! - **Who may call.** Callers with the auditor role, over mTLS, an API key or the Unix socket:
//!   the edge ([`crate::identity::edge`]) checks it before this service sees the call, and a
//!   refusal is `PERMISSION_DENIED`, recorded as `auth.denied`.
//! - **Export** writes a durable `audit.export` admitted record first (so the export is on
//!   record before any data leaves, and the log must be able to write), signs a checkpoint so
//!   that the export reaches the present, streams the data in chunks with progress counts, and
//!   makes the `completed` record durable before the last chunk, which carries the manifest.
//!   The bytes and the manifest are exactly those of an offline export, so `applctl audit
//!   verify FILE --public-key KEY` checks them offline.
//! - All store work (scans, hashing, signature checks) runs in `spawn_blocking`.

use std::cell::Cell;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use appl_audit::{
    export, verify_store, Action, AuditError, ExportFilter, ExportProgress, Format, Ident,
    NewRecord, Phase, Role, Timestamp,
};
use appl_proto::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn, Instrument};

use crate::api::convert::audit_status;
use crate::audit::{micros, Auditor};
use crate::identity::Caller;
use crate::state::RequestIds;

/// Records `Tail` returns when the request asks for 0.
const DEFAULT_TAIL: usize = 20;
/// The most records one `Tail` returns (the response must stay under gRPC's 4 MiB default).
const MAX_TAIL: usize = 10_000;
/// Bytes of export data per chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered between the export thread and the client.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The `appl.v1.Audit` service.
#[derive(Debug, Clone)]
pub struct AuditRpc {
    audit: Arc<Auditor>,
    ids: Arc<RequestIds>,
}

impl AuditRpc {
    pub fn new(audit: Arc<Auditor>) -> Self {
        Self {
            audit,
            ids: Arc::new(RequestIds::new()),
        }
    }

    /// The caller the edge resolved (and allowed: it holds the auditor role).
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        Ok(Caller::of(req)?)
    }

    fn request_id(&self) -> String {
        self.ids.next("export-")
    }
}

fn joined(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("the audit task failed: {e}"))
}

/// The filter and format of an export request; `INVALID_ARGUMENT` naming the field otherwise.
fn export_params(r: &pb::ExportRequest) -> Result<(ExportFilter, Format), Status> {
    let time = |field: &str, s: &str| -> Result<Option<Timestamp>, Status> {
        if s.is_empty() {
            return Ok(None);
        }
        Timestamp::parse_rfc3339(s)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
    };
    let actor = if r.actor.is_empty() {
        None
    } else {
        Some(
            Ident::new(r.actor.as_str())
                .map_err(|e| Status::invalid_argument(format!("actor: {e}")))?,
        )
    };
    let filter = ExportFilter {
        from: time("from", &r.from)?,
        to: time("to", &r.to)?,
        actor,
        action: (!r.action.is_empty()).then(|| r.action.clone()),
    };
    filter.validate().map_err(audit_status)?;
    let format = if r.format.is_empty() {
        Format::Jsonl
    } else {
        r.format
            .parse()
            .map_err(|e: AuditError| Status::invalid_argument(format!("format: {e}")))?
    };
    Ok((filter, format))
}

type ChunkTx = mpsc::Sender<Result<pb::ExportChunk, Status>>;

/// Sends what the export writes to the client in chunks of [`CHUNK_BYTES`]. A client that has
/// gone away makes the write fail, which stops the export.
struct ChunkWriter<'a> {
    tx: ChunkTx,
    buf: Vec<u8>,
    progress: &'a Cell<ExportProgress>,
}

impl ChunkWriter<'_> {
    fn send(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        let p = self.progress.get();
        self.tx
            .blocking_send(Ok(pb::ExportChunk {
                data,
                manifest: String::new(),
                scanned: p.scanned,
                total: p.total,
                exported: p.exported,
            }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK_BYTES {
            let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
            self.send(data)?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.send(data)?;
        }
        Ok(())
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditRpc {
    async fn tail(
        &self,
        req: Request<pb::TailRequest>,
    ) -> Result<Response<pb::TailResponse>, Status> {
        self.caller(&req)?;
        let n = match req.get_ref().n {
            0 => DEFAULT_TAIL,
            n => usize::try_from(n).unwrap_or(MAX_TAIL).min(MAX_TAIL),
        };
        let log = self.audit.log().clone();
        let records = tokio::task::spawn_blocking(move || log.tail(n))
            .await
            .map_err(joined)?
            .map_err(audit_status)?
            .into_iter()
            .map(|r| {
                String::from_utf8(r.record.canonical_bytes())
                    .map_err(|_| Status::internal("a record's canonical form is not UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::TailResponse { records }))
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let caller = self.caller(&req)?;
        let received = Instant::now();
        let (filter, format) = export_params(req.get_ref())?;
        let request_id = self.request_id();
        let span = tracing::info_span!(target: "audit", "audit_export", request_id = %request_id);
        // On record, durably, before any data leaves; the log must be able to write.
        self.audit.check_serving().map_err(audit_status)?;
        let mut admitted = NewRecord::new(
            Action::AuditExport,
            Phase::Admitted,
            caller.actor().clone(),
            Role::Auditor,
        );
        admitted.peer = caller.peer().cloned();
        admitted.roles = caller.roles_ident();
        admitted.tenant = caller.tenant_ident();
        admitted.request_id = Some(
            Ident::new(request_id.as_str())
                .map_err(|e| Status::internal(format!("request id: {e}")))?,
        );
        let mut completed = admitted.clone();
        completed.phase = Phase::Completed;
        self.audit
            .append(admitted)
            .instrument(span.clone())
            .await
            .map_err(audit_status)?;
        // Sign a checkpoint over everything durable now, this export's own record included.
        let log = self.audit.log();
        let reader = match log.checkpoint_now().await.and_then(|_| log.reader()) {
            Ok(r) => r,
            Err(e) => {
                warn!(target: "audit", request_id = %request_id, error = %e, "export failed");
                let reason = e.reason();
                let s = audit_status(e);
                completed.status = Some(s.code() as u32);
                completed.reason = Ident::new(reason).ok();
                completed.latency_us = Some(micros(received.elapsed()));
                // Best effort: the client is told of the first failure either way.
                if let Err(r) = self.audit.append(completed).await {
                    warn!(target: "audit", error = %r, "could not record a failed export");
                }
                return Err(s);
            }
        };

        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let audit = Arc::clone(&self.audit);
        let task = async move {
            info!(target: "audit", format = %format, filter = ?filter, "export started");
            let job = {
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || {
                    let seen = Cell::new(ExportProgress {
                        scanned: 0,
                        total: 0,
                        exported: 0,
                    });
                    let progress_tx = tx.clone();
                    let mut w = ChunkWriter {
                        tx,
                        buf: Vec::with_capacity(CHUNK_BYTES),
                        progress: &seen,
                    };
                    let mut progress = |p: ExportProgress| {
                        seen.set(p);
                        // Progress-only chunk; a full channel just skips one update.
                        let _ = progress_tx.try_send(Ok(pb::ExportChunk {
                            data: Vec::new(),
                            manifest: String::new(),
                            scanned: p.scanned,
                            total: p.total,
                            exported: p.exported,
                        }));
                    };
                    let m = export(&reader, &filter, format, &mut w, &mut progress)?;
                    w.flush().map_err(|e| AuditError::Export(e.to_string()))?;
                    Ok::<_, AuditError>(m)
                })
            };
            let result = match job.await {
                Ok(Ok(m)) => serde_json::to_string_pretty(&m)
                    .map(|json| (m, json))
                    .map_err(|e| Status::internal(format!("manifest: {e}"))),
                Ok(Err(e)) => Err(audit_status(e)),
                Err(e) => Err(joined(e)),
            };
            // The completed record is durable before the client gets the last chunk.
            let code = result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
            completed.status = Some(code as u32);
            completed.reason = Ident::new(if code == tonic::Code::Ok {
                "ok"
            } else {
                "export_failed"
            })
            .ok();
            completed.latency_us = Some(micros(received.elapsed()));
            let recorded = audit.append(completed).await.map_err(audit_status);
            let last = match (result, recorded) {
                (Ok((m, manifest)), Ok(_)) => {
                    info!(target: "audit", records = m.count, checkpoint = m.checkpoint.size,
                        ms = received.elapsed().as_millis() as u64, "export done");
                    Ok(pb::ExportChunk {
                        data: Vec::new(),
                        manifest,
                        scanned: m.checkpoint.size.saturating_sub(m.store_base),
                        total: m.checkpoint.size.saturating_sub(m.store_base),
                        exported: m.count,
                    })
                }
                (Err(s), _) | (Ok(_), Err(s)) => {
                    warn!(target: "audit", code = ?s.code(), error = %s.message(), "export failed");
                    Err(s)
                }
            };
            // The client may be gone; nothing is left to tell it then.
            let _ = tx.send(last).await;
        };
        tokio::spawn(task.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify_store(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        self.caller(&req)?;
        let log = self.audit.log().clone();
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || {
            let reader = log.reader()?;
            verify_store(&reader, &log.public_key())
        })
        .await
        .map_err(joined)?
        .map_err(audit_status)?;
        info!(target: "audit", ok = report.ok, records = report.records,
            ms = started.elapsed().as_millis() as u64, "live store verified");
        let report_json = serde_json::to_string_pretty(&report)
            .map_err(|e| Status::internal(format!("report: {e}")))?;
        Ok(Response::new(pb::VerifyResponse {
            ok: report.ok,
            report: report.to_string(),
            first_bad_seq: report.problem.as_ref().and_then(|p| p.seq),
            records: report.records,
            key_fingerprint: report.key.clone(),
            report_json,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_params_name_the_bad_field() {
        let ok = pb::ExportRequest {
            from: "2026-01-01T00:00:00Z".into(),
            action: "inference.*".into(),
            ..Default::default()
        };
        let (f, fmt) = export_params(&ok).expect("valid");
        assert_eq!(fmt, Format::Jsonl);
        assert!(f.from.is_some() && f.to.is_none() && f.actor.is_none());
        for (req, field) in [
            (
                pb::ExportRequest {
                    from: "yesterday".into(),
                    ..Default::default()
                },
                "from",
            ),
            (
                pb::ExportRequest {
                    actor: "two words".into(),
                    ..Default::default()
                },
                "actor",
            ),
            (
                pb::ExportRequest {
                    action: "nope".into(),
                    ..Default::default()
                },
                "action",
            ),
            (
                pb::ExportRequest {
                    format: "xml".into(),
                    ..Default::default()
                },
                "format",
            ),
        ] {
            let s = export_params(&req).expect_err(field);
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(s.message().contains(field), "{field}: {}", s.message());
        }
    }
}
