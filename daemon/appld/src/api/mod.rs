//! The gRPC face of the request path: the `appl.v1.Inference` and `appl.v1.Admin` services.
//! Each method identifies the caller, converts its message ([`convert`]), and hands it to the
//! shared request path (`crate::request`); answers and errors are converted back. With
//! `audit_rpc.rs` (the `appl.v1.Audit` service) it is the only part of the daemon that sees
//! wire types.

pub mod admin;
pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use appl_audit::Action;
use appl_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::audit::{Api as AuditApi, AuditTicket, Auditor, RequestFacts};
use crate::identity::Caller;
use crate::lifecycle::ModelManager;
use crate::request::{admit, drive, validate, GenerateInput, Prepared, PromptInput, RequestError};
use crate::state::AppState;
use convert::{chunk_to_pb, engine_status_to_pb, finish_to_pb, model_to_pb, tenants_to_pb};

/// Both services share one state, the audit log, and the model manager.
#[derive(Debug, Clone)]
pub struct Api {
    state: Arc<AppState>,
    audit: Arc<Auditor>,
    manager: Arc<ModelManager>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

impl Api {
    pub fn new(state: Arc<AppState>, audit: Arc<Auditor>, manager: Arc<ModelManager>) -> Self {
        Self {
            state,
            audit,
            manager,
        }
    }

    /// Who is calling (resolved at the edge); refused first while the daemon drains or the
    /// audit log cannot write, so that nothing is admitted unaudited.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, RequestError> {
        admit::check_open(&self.state, &self.audit)?;
        Caller::of(req)
    }

    /// Validates a generation request and makes its `admitted` record durable.
    async fn admit(
        &self,
        caller: &Caller,
        action: Action,
        input: GenerateInput,
    ) -> Result<(Prepared, AuditTicket), RequestError> {
        let origin = admit::Origin {
            caller,
            action: &action,
            api: AuditApi::Grpc,
        };
        admit::admit(&self.state, &self.audit, origin, input).await
    }

    async fn unary(
        &self,
        caller: &Caller,
        action: Action,
        input: GenerateInput,
    ) -> Result<pb::GenerateResponse, RequestError> {
        let (p, ticket) = self.admit(caller, action, input).await?;
        let model = p.model().to_owned();
        let request_id = p.request_id.clone();
        let c = drive::run_to_end(p, ticket).await?;
        Ok(pb::GenerateResponse {
            model,
            text: c.text,
            token_ids: c.token_ids,
            finish_reason: finish_to_pb(c.reason) as i32,
            usage: Some(convert::usage_to_pb(&c.usage)),
            request_id,
        })
    }

    async fn stream(
        &self,
        caller: &Caller,
        action: Action,
        input: GenerateInput,
    ) -> Result<ChunkStream, RequestError> {
        let (p, ticket) = self.admit(caller, action, input).await?;
        let request_id = p.request_id.clone();
        let rx = drive::run_streaming(&self.state, p, ticket).await?;
        // When the client drops the stream, `rx` is dropped with it and the request ends.
        let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
            item.map(|piece| chunk_to_pb(piece, &request_id))
                .map_err(Status::from)
        });
        Ok(Box::pin(chunks))
    }
}

#[tonic::async_trait]
impl pb::inference_server::Inference for Api {
    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = self.caller(&req)?;
        let input = convert::generate_input(req, "Generate")?;
        let answer = self
            .unary(&caller, Action::InferenceGenerate, input)
            .await?;
        Ok(Response::new(answer))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let caller = self.caller(&req)?;
        let input = convert::generate_input(req, "GenerateStream")?;
        let stream = self
            .stream(&caller, Action::InferenceGenerate, input)
            .await?;
        Ok(Response::new(stream))
    }

    async fn chat(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = self.caller(&req)?;
        let input = convert::chat_input(req, "Chat")?;
        let answer = self.unary(&caller, Action::InferenceChat, input).await?;
        Ok(Response::new(answer))
    }

    type ChatStreamStream = ChunkStream;

    async fn chat_stream(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let caller = self.caller(&req)?;
        let input = convert::chat_input(req, "ChatStream")?;
        let stream = self.stream(&caller, Action::InferenceChat, input).await?;
        Ok(Response::new(stream))
    }

    async fn tokenize(
        &self,
        req: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let received = Instant::now();
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let engine = self.state.engine(&r.model)?;
        let input = match r.input {
            Some(pb::tokenize_request::Input::Prompt(p)) => PromptInput::Text(p),
            Some(pb::tokenize_request::Input::Chat(c)) => {
                PromptInput::Chat(convert::messages(c.messages))
            }
            None => return Err(RequestError::Invalid("set either prompt or chat".into()).into()),
        };
        let prompt_hmac = self.audit.input_hmac(&input);
        let rendered = validate::render(&engine, &input)?;
        validate::prompt_bytes(&self.state, "input", rendered.len())?;
        let token_ids = engine.tokenize(&rendered);
        let request_id = self.state.request_id();
        let facts = RequestFacts {
            action: Action::InferenceTokenize,
            request_id: &request_id,
            model: &engine.spec().id,
            model_sha256: Some(engine.sha256()),
            prompt_tokens: token_ids.len(),
            prompt_hmac,
            received,
            api: AuditApi::Grpc,
        };
        self.audit
            .event(&caller, &facts)
            .await
            .map_err(RequestError::from)?;
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
            .models
            .snapshot()
            .values()
            .map(|m| model_to_pb(st, m))
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = Caller::of(&req)?;
        let st = &self.state;
        let tenants = st.tenants();
        let transport = st.transport.get();
        let engines = st
            .models
            .snapshot()
            .values()
            .map(|m| engine_status_to_pb(&m.engine))
            .collect();
        let audit = self.audit.status();
        let (rejected_concurrency, rejected_rate) = tenants.rejections();
        let mut resp = pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: st.started.elapsed().as_secs_f64(),
            engines,
            audit_state: audit.state.to_owned(),
            audit_reason: audit.reason,
            audit_records: audit.records,
            audit_key: audit.key,
            tenants: tenants_to_pb(&tenants),
            rejected_tenant_concurrency: rejected_concurrency,
            rejected_tenant_rate: rejected_rate,
            tcp_security: transport.mode.to_owned(),
            certificates: transport
                .certificates
                .iter()
                .map(convert::cert_to_pb)
                .collect(),
            caller: caller.actor().to_string(),
            caller_tenant: caller.tenant().to_owned(),
            caller_roles: caller.roles().joined(),
            ..Default::default()
        };
        self.fill_status(&mut resp);
        Ok(Response::new(resp))
    }

    async fn load_model(
        &self,
        req: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::ModelOperation>, Status> {
        self.load_model_rpc(req).await
    }

    async fn unload_model(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::ModelOperation>, Status> {
        self.unload_model_rpc(req).await
    }

    async fn reload_models(
        &self,
        req: Request<pb::ReloadModelsRequest>,
    ) -> Result<Response<pb::ReloadModelsResponse>, Status> {
        self.reload_models_rpc(req).await
    }
}
