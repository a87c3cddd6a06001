//! The benchmark's appld driver: `Inference.GenerateStream` over the Unix socket or TCP, one
//! connection per stream, timed per chunk.

use std::time::Instant;

use appl_proto::client::Authed as Channel;
use appl_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;

use super::report::{Completed, Failure, Sample};
use super::Request;
use crate::client::ConnArgs;

/// One client of appld; it connects on first use and again after a transport failure.
pub struct Grpc {
    conn: ConnArgs,
    channel: Option<Channel>,
}

/// The stable name of a gRPC code, as the gRPC spec spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn failure(s: &tonic::Status) -> Failure {
    Failure {
        code: code_name(s.code()).to_owned(),
        message: s.message().to_owned(),
    }
}

/// Codes after which the connection itself may be broken, so the next request reconnects.
fn connection_suspect(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Internal)
}

impl Grpc {
    pub fn new(conn: ConnArgs) -> Self {
        Self {
            conn,
            channel: None,
        }
    }

    /// Where and how it connects.
    #[cfg(test)]
    pub(super) fn conn(&self) -> &ConnArgs {
        &self.conn
    }

    async fn channel(&mut self) -> Result<Channel, Failure> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let c = self.conn.connect().await.map_err(|e| Failure {
            code: "UNREACHABLE".to_owned(),
            message: format!("{e:#}"),
        })?;
        self.channel = Some(c.clone());
        Ok(c)
    }

    fn request(r: &Request) -> Result<tonic::Request<pb::GenerateRequest>, Failure> {
        let priority = match r.priority {
            Some(super::PriorityArg::Interactive) => pb::Priority::Interactive,
            Some(super::PriorityArg::Batch) => pb::Priority::Batch,
            None => pb::Priority::Unspecified,
        };
        let mut req = tonic::Request::new(pb::GenerateRequest {
            model: r.model.clone(),
            prompt: r.prompt.clone(),
            sampling: Some(pb::SamplingParams {
                temperature: Some(r.temperature),
                ..Default::default()
            }),
            max_tokens: Some(r.max_tokens),
            stop: vec![],
            priority: priority as i32,
        });
        if let Some(t) = &r.tenant {
            let v = t.parse().map_err(|_| Failure {
                code: "INVALID_TENANT".to_owned(),
                message: "--tenant must be printable ASCII".to_owned(),
            })?;
            req.metadata_mut().insert("x-appl-tenant", v);
        }
        Ok(req)
    }

    /// Streams one request and times it.
    pub async fn generate(&mut self, r: &Request) -> Sample {
        let req = Self::request(r)?;
        let channel = self.channel().await?;
        let mut client = pb::inference_client::InferenceClient::new(channel);
        let sent = Instant::now();
        let mut stream = match client.generate_stream(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                if connection_suspect(s.code()) {
                    self.channel = None;
                }
                return Err(failure(&s));
            }
        };
        let mut done = Completed::default();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(s) => {
                    // A stream that breaks after it began says little about the connection
                    // that a new stream could trust: reconnect.
                    self.channel = None;
                    return Err(failure(&s));
                }
            };
            let now = sent.elapsed();
            if !chunk.token_ids.is_empty() {
                if done.arrivals.is_empty() {
                    done.ttft = now;
                }
                let n = u32::try_from(chunk.token_ids.len()).unwrap_or(u32::MAX);
                done.arrivals.push((now, n));
            }
            if chunk.finish_reason == 0 {
                continue;
            }
            done.total = now;
            let usage = chunk.usage.unwrap_or_default();
            done.prompt_tokens = usage.prompt_tokens;
            done.completion_tokens = usage.completion_tokens;
            done.cached_prompt_tokens = Some(usage.cached_prompt_tokens);
            return match pb::FinishReason::try_from(chunk.finish_reason) {
                Ok(pb::FinishReason::Stop | pb::FinishReason::Length) => Ok(done),
                Ok(other) => Err(Failure {
                    code: other
                        .as_str_name()
                        .replace("FINISH_REASON_", "FINISH_")
                        .to_owned(),
                    message: format!(
                        "the server ended the stream after {} tokens",
                        usage.completion_tokens
                    ),
                }),
                Err(_) => Err(Failure {
                    code: "FINISH_UNKNOWN".to_owned(),
                    message: format!("finish_reason {}", chunk.finish_reason),
                }),
            };
        }
        Err(Failure {
            code: "INCOMPLETE".to_owned(),
            message: "the stream ended without a final message".to_owned(),
        })
    }

    /// How many tokens `text` is, by the daemon's tokenizer.
    pub async fn count_tokens(&mut self, model: &str, text: &str) -> Option<u32> {
        let channel = self.channel().await.ok()?;
        let r = pb::inference_client::InferenceClient::new(channel)
            .tokenize(pb::TokenizeRequest {
                model: model.to_owned(),
                input: Some(pb::tokenize_request::Input::Prompt(text.to_owned())),
            })
            .await
            .ok()?;
        u32::try_from(r.into_inner().token_ids.len()).ok()
    }

    /// The served model's id and file, the named one or the default.
    pub async fn model(&mut self, model: &str) -> Option<(String, String)> {
        let channel = self.channel().await.ok()?;
        let models = pb::inference_client::InferenceClient::new(channel)
            .list_models(pb::ListModelsRequest {})
            .await
            .ok()?
            .into_inner()
            .models;
        models
            .into_iter()
            .find(|m| {
                if model.is_empty() {
                    m.is_default
                } else {
                    m.id == model
                }
            })
            .map(|m| (m.id, m.path))
    }
}
