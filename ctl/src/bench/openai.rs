//! The benchmark's OpenAI-compatible driver: streaming `POST /v1/completions` with usage, as
//! llama-server, vLLM and (later) appld's HTTP face serve it. Plain HTTP/1.1 on hyper, one
//! keep-alive connection per stream; server-sent events are parsed here.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::report::{Completed, Failure, Sample};
use super::Request;

/// Longest error body kept for the report.
const MAX_ERROR_BODY: usize = 300;

/// One client of an OpenAI-compatible server at `host:port`.
pub struct OpenAi {
    addr: String,
    /// Sent as `Authorization: Bearer …` when set (`--api-key`).
    api_key: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

fn unreachable(addr: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure {
        code: "UNREACHABLE".to_owned(),
        message: format!("{addr}: {e}"),
    }
}

/// Splits a server-sent event stream into the payloads of its `data:` lines.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the data payloads of the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            // An event ends at a blank line (\n\n, or \r\n\r\n).
            let end = self
                .buf
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, 2))
                .into_iter()
                .chain(
                    self.buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| (p, 4)),
                )
                .min_by_key(|&(p, _)| p);
            let Some((at, len)) = end else { break };
            let event: Vec<u8> = self.buf.drain(..at + len).collect();
            let text = String::from_utf8_lossy(&event[..at]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

/// What one streamed JSON event says.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A piece of completion (one token for llama-server and vLLM).
    Token,
    /// The last choice event, with its finish reason.
    Finish(String),
    /// Usage, at the end with `stream_options.include_usage`.
    Usage {
        prompt: u32,
        completion: u32,
        cached: Option<u32>,
    },
    Error(String),
    /// `[DONE]`
    Done,
    Other,
}

fn count(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Interprets one `data:` payload. An event may carry a choice and usage at once (llama-server
/// puts usage and `timings` on the final choice event); both are returned then.
pub fn parse_event(data: &str) -> Vec<Event> {
    if data.trim() == "[DONE]" {
        return vec![Event::Done];
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return vec![Event::Error(format!(
            "not JSON: {}",
            data.chars().take(MAX_ERROR_BODY).collect::<String>()
        ))];
    };
    if let Some(e) = v.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_owned);
        return vec![Event::Error(msg)];
    }
    let mut out = Vec::new();
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some(reason) => {
                if choice
                    .get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| !t.is_empty())
                {
                    out.push(Event::Token);
                }
                out.push(Event::Finish(reason.to_owned()));
            }
            None => out.push(Event::Token),
        }
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        let cached = u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(count)
            .or_else(|| {
                v.get("timings")
                    .and_then(|t| t.get("cache_n"))
                    .and_then(count)
            });
        out.push(Event::Usage {
            prompt: u.get("prompt_tokens").and_then(count).unwrap_or(0),
            completion: u.get("completion_tokens").and_then(count).unwrap_or(0),
            cached,
        });
    }
    if out.is_empty() {
        out.push(Event::Other);
    }
    out
}

impl OpenAi {
    pub fn new(addr: String, api_key: Option<String>) -> Self {
        Self {
            addr,
            api_key,
            sender: None,
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        let reusable = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| unreachable(&self.addr, &e))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(&self.addr, &e))?;
            // The connection task ends when the sender is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| Failure {
            code: "UNREACHABLE".to_owned(),
            message: "no connection".to_owned(),
        })
    }

    async fn post(
        &mut self,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let host = self.addr.clone();
        let mut req = hyper::Request::post(path).header(hyper::header::HOST, host);
        if let Some(key) = &self.api_key {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "text/event-stream, application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Failure {
                code: "BAD_REQUEST".to_owned(),
                message: e.to_string(),
            })?;
        let sender = self.sender().await?;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(Failure {
                    code: "TRANSPORT".to_owned(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Streams one completion and times it.
    pub async fn generate(&mut self, r: &Request) -> Sample {
        let mut body = serde_json::json!({
            "prompt": r.prompt,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !r.model.is_empty() {
            body["model"] = Value::from(r.model.clone());
        }
        if let Some(p) = r.priority {
            // appl's extension; other servers ignore it.
            body["priority"] = Value::from(p.as_str());
        }
        let sent = Instant::now();
        let resp = self.post("/v1/completions", &body).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            return Err(Failure {
                code: format!("HTTP_{}", status.as_u16()),
                message: text.chars().take(MAX_ERROR_BODY).collect(),
            });
        }
        let mut sse = SseParser::default();
        let mut done = Completed::default();
        let mut finish: Option<String> = None;
        let mut usage_seen = false;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    self.sender = None;
                    return Err(Failure {
                        code: "TRANSPORT".to_owned(),
                        message: e.to_string(),
                    });
                }
            };
            let Some(bytes) = frame.data_ref() else {
                continue;
            };
            let now = sent.elapsed();
            for data in sse.push(bytes) {
                for event in parse_event(&data) {
                    match event {
                        Event::Token => {
                            if done.arrivals.is_empty() {
                                done.ttft = now;
                            }
                            done.arrivals.push((now, 1));
                        }
                        Event::Finish(reason) => finish = Some(reason),
                        Event::Usage {
                            prompt,
                            completion,
                            cached,
                        } => {
                            usage_seen = true;
                            done.prompt_tokens = prompt;
                            done.completion_tokens = completion;
                            done.cached_prompt_tokens = cached;
                        }
                        Event::Error(message) => {
                            return Err(Failure {
                                code: "STREAM_ERROR".to_owned(),
                                message,
                            })
                        }
                        Event::Done => {
                            done.total = now;
                            return finished(done, finish, usage_seen);
                        }
                        Event::Other => {}
                    }
                }
            }
        }
        done.total = sent.elapsed();
        if finish.is_some() {
            return finished(done, finish, usage_seen);
        }
        Err(Failure {
            code: "INCOMPLETE".to_owned(),
            message: "the event stream ended without a finish reason".to_owned(),
        })
    }

    /// How many tokens `text` is, by llama-server's `/tokenize` (None where it has none).
    pub async fn count_tokens(&mut self, text: &str) -> Option<u32> {
        let body = serde_json::json!({"content": text, "add_special": true});
        let resp = self.post("/tokenize", &body).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        u32::try_from(v.get("tokens")?.as_array()?.len()).ok()
    }
}

fn finished(mut done: Completed, finish: Option<String>, usage_seen: bool) -> Sample {
    if !usage_seen {
        // A server that does not send usage: count what arrived.
        done.completion_tokens = done.arrivals.iter().map(|a| a.1).sum();
    }
    match finish.as_deref() {
        Some("stop" | "length") | None => Ok(done),
        Some(other) => Err(Failure {
            code: format!("FINISH_{}", other.to_ascii_uppercase()),
            message: format!("finish_reason {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_blank_lines_whatever_the_chunking() {
        let stream = "data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        for cut in [1, 3, 7, stream.len()] {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            for piece in stream.as_bytes().chunks(cut) {
                got.extend(p.push(piece));
            }
            assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "[DONE]"], "chunks of {cut}");
        }
    }

    #[test]
    fn llama_server_events_are_read_as_tokens_finish_and_usage() {
        // The shapes llama-server sends for a streamed /v1/completions with include_usage.
        let cases: &[(&str, Vec<Event>)] = &[
            (
                r#"{"choices":[{"text":" the","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}"#,
                vec![Event::Token],
            ),
            (
                r#"{"choices":[{"text":"","index":0,"finish_reason":"length"}],"usage":{"completion_tokens":64,"prompt_tokens":70,"total_tokens":134,"prompt_tokens_details":{"cached_tokens":5}},"timings":{"cache_n":5}}"#,
                vec![
                    Event::Finish("length".into()),
                    Event::Usage {
                        prompt: 70,
                        completion: 64,
                        cached: Some(5),
                    },
                ],
            ),
            (
                r#"{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":9},"timings":{"cache_n":0}}"#,
                vec![Event::Usage {
                    prompt: 9,
                    completion: 3,
                    cached: Some(0),
                }],
            ),
            (
                r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#,
                vec![Event::Error("boom".into())],
            ),
            ("[DONE]", vec![Event::Done]),
        ];
        for (data, want) in cases {
            assert_eq!(&parse_event(data), want, "{data}");
        }
        assert!(matches!(parse_event("nope")[..], [Event::Error(_)]));
    }

    #[test]
    fn a_finish_other_than_stop_or_length_is_a_failure_with_its_code() {
        let f = finished(Completed::default(), Some("error".into()), true).unwrap_err();
        assert_eq!(f.code, "FINISH_ERROR");
        let ok = finished(
            Completed {
                arrivals: vec![(Default::default(), 1); 3],
                ..Default::default()
            },
            Some("length".into()),
            false,
        )
        .expect("length is a normal end");
        assert_eq!(ok.completion_tokens, 3);
    }
}
