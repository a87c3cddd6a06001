//! The OpenAI wire format: request bodies into the daemon's [`GenerateInput`], each field
//! checked and named when it is wrong, and answers (whole, or as SSE chunks) back out.
//!
//! Bodies are read as JSON values and each field taken by name, so that a wrong type is a 400
//! naming its field. Fields this daemon cannot honour (`n` > 1, tools, logprobs, penalties...)
//! are refused, never silently ignored; fields that change nothing (`user`) are accepted.

use std::time::Instant;

use appl_engine::{ChatMessage, FinishReason, Priority, Usage};
use serde_json::{json, Map, Value};

use crate::request::{GenerateInput, PromptInput, RequestError, SamplingInput};

/// The two generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completion,
}

impl Kind {
    /// The method name the request path logs.
    pub fn method(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Kind::Chat, false) => "openai.ChatCompletions",
            (Kind::Chat, true) => "openai.ChatCompletionsStream",
            (Kind::Completion, false) => "openai.Completions",
            (Kind::Completion, true) => "openai.CompletionsStream",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Completion => "cmpl-",
        }
    }
}

/// A parsed generation request.
#[derive(Debug)]
pub struct Parsed {
    pub input: GenerateInput,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

fn bad(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        message: message.into(),
    }
}

/// Parses the body of a chat or completion request.
pub fn parse(kind: Kind, body: &[u8], received: Instant) -> Result<Parsed, RequestError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        RequestError::Invalid(format!(
            "the request body is not valid UTF-8 (at byte {}); send JSON in UTF-8",
            e.valid_up_to()
        ))
    })?;
    let v: Value = serde_json::from_str(text)
        .map_err(|e| RequestError::Invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(RequestError::Invalid(
            "the request body must be a JSON object".into(),
        ));
    };
    refuse_unsupported(&o)?;
    let prompt = match kind {
        Kind::Chat => PromptInput::Chat(messages(o.get("messages"))?),
        Kind::Completion => PromptInput::Text(prompt(o.get("prompt"))?),
    };
    let max_completion = opt_u32(&o, "max_completion_tokens")?;
    let max_tokens = max_completion.or(opt_u32(&o, "max_tokens")?);
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => match so.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "stream_options",
                    "stream_options.include_usage must be true or false",
                ))
            }
        },
        Some(_) => return Err(bad("stream_options", "stream_options must be an object")),
    };
    opt_str(&o, "user")?;
    Ok(Parsed {
        input: GenerateInput {
            method: kind.method(stream),
            model: opt_str(&o, "model")?.unwrap_or_default().to_owned(),
            prompt,
            sampling: SamplingInput {
                temperature: opt_f32(&o, "temperature")?,
                top_k: opt_i32(&o, "top_k")?,
                top_p: opt_f32(&o, "top_p")?,
                min_p: opt_f32(&o, "min_p")?,
                repeat_penalty: opt_f32(&o, "repeat_penalty")?,
                repeat_last_n: None,
                seed: seed(&o)?,
            },
            max_tokens,
            stop: stop(o.get("stop"))?,
            priority: priority(&o)?,
            deadline: None,
            received,
        },
        stream,
        include_usage,
    })
}

/// Refuses what this daemon cannot do, naming the field.
fn refuse_unsupported(o: &Map<String, Value>) -> Result<(), RequestError> {
    let set = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
    if let Some(n) = o.get("n").filter(|v| !v.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(bad(
                "n",
                format!("n is {n}; this server returns one choice (n = 1)"),
            ));
        }
    }
    if let Some(b) = o.get("best_of").filter(|v| !v.is_null()) {
        if b.as_u64() != Some(1) {
            return Err(bad(
                "best_of",
                format!("best_of is {b}; only 1 is supported"),
            ));
        }
    }
    for k in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = o.get(k).filter(|v| !v.is_null()) {
            if p.as_f64() != Some(0.0) {
                return Err(bad(
                    k,
                    format!("{k} is {p}; only 0 is supported (use repeat_penalty)"),
                ));
            }
        }
    }
    let falsy = |k: &str| match o.get(k) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Number(n)) => n.as_u64() == Some(0),
        _ => false,
    };
    for (k, what) in [
        ("logprobs", "log probabilities are not supported"),
        ("top_logprobs", "log probabilities are not supported"),
        ("echo", "echo is not supported"),
    ] {
        if !falsy(k) {
            return Err(bad(k, format!("{k}: {what}")));
        }
    }
    let empty = |k: &str| match o.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    for k in [
        "tools",
        "functions",
        "logit_bias",
        "suffix",
        "audio",
        "modalities",
    ] {
        if !empty(k) {
            return Err(bad(k, format!("{k} is not supported by this server")));
        }
    }
    if set("tool_choice") && o.get("tool_choice") != Some(&json!("none")) {
        return Err(bad(
            "tool_choice",
            "tool_choice is not supported (tools are not)",
        ));
    }
    if let Some(rf) = o.get("response_format").filter(|v| !v.is_null()) {
        if rf.get("type") != Some(&json!("text")) {
            return Err(bad(
                "response_format",
                "response_format: only {\"type\": \"text\"} is supported",
            ));
        }
    }
    Ok(())
}

fn messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, RequestError> {
    let Some(Value::Array(items)) = v else {
        return Err(bad(
            "messages",
            "messages must be an array of {role, content} objects",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("messages", format!("messages[{i}].role must be a string")))?;
            // `developer` is the newer name of `system`.
            let role = if role == "developer" { "system" } else { role };
            Ok(ChatMessage {
                role: role.to_owned(),
                content: content(i, m.get("content"))?,
            })
        })
        .collect()
}

/// A message's content: a string, or an array of text parts (joined).
fn content(i: usize, v: Option<&Value>) -> Result<String, RequestError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    _ => {
                        return Err(bad(
                            "messages",
                            format!(
                            "messages[{i}].content[{j}] is not a text part; only text is supported"
                        ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            "messages",
            format!("messages[{i}].content must be a string or an array of text parts"),
        )),
    }
}

fn prompt(v: Option<&Value>) -> Result<String, RequestError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(_)) => Err(bad(
            "prompt",
            "prompt as an array (of strings or of token ids) is not supported; send one string",
        )),
        None | Some(Value::Null) => Err(bad(
            "prompt",
            "prompt is missing; send the text to continue",
        )),
        Some(_) => Err(bad("prompt", "prompt must be a string")),
    }
}

fn stop(v: Option<&Value>) -> Result<Vec<String>, RequestError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("stop", "stop must be a string or an array of strings"))
            })
            .collect(),
        Some(_) => Err(bad("stop", "stop must be a string or an array of strings")),
    }
}

fn priority(o: &Map<String, Value>) -> Result<Option<Priority>, RequestError> {
    match opt_str(o, "priority")? {
        None => Ok(None),
        Some("interactive") => Ok(Some(Priority::Interactive)),
        Some("batch") => Ok(Some(Priority::Batch)),
        Some(other) => Err(bad(
            "priority",
            format!("priority is {other:?}; use \"interactive\" or \"batch\""),
        )),
    }
}

fn seed(o: &Map<String, Value>) -> Result<Option<u32>, RequestError> {
    match o.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(|n| n as u32) // The low 32 bits: any integer seed is accepted, as OpenAI does.
            .map(Some)
            .ok_or_else(|| bad("seed", format!("seed is {v}; it must be an integer"))),
    }
}

fn opt_str<'a>(
    o: &'a Map<String, Value>,
    k: &'static str,
) -> Result<Option<&'a str>, RequestError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(k, format!("{k} is {v}; it must be a string"))),
    }
}

fn opt_bool(o: &Map<String, Value>, k: &'static str) -> Result<Option<bool>, RequestError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(k, format!("{k} is {v}; it must be true or false"))),
    }
}

fn opt_f32(o: &Map<String, Value>, k: &'static str) -> Result<Option<f32>, RequestError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| bad(k, format!("{k} is {v}; it must be a number"))),
    }
}

fn opt_u32(o: &Map<String, Value>, k: &'static str) -> Result<Option<u32>, RequestError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad(
                    k,
                    format!(
                        "{k} is {v}; it must be a whole number from 0 to {}",
                        u32::MAX
                    ),
                )
            }),
    }
}

fn opt_i32(o: &Map<String, Value>, k: &'static str) -> Result<Option<i32>, RequestError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(k, format!("{k} is {v}; it must be a whole number"))),
    }
}

/// OpenAI's `finish_reason` for a finished request.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// The `usage` object.
pub fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

/// What every answer of one request shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub kind: Kind,
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl Head {
    pub fn new(kind: Kind, request_id: &str, model: &str) -> Head {
        Head {
            kind,
            id: format!("{}{request_id}", kind.id_prefix()),
            model: model.to_owned(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// A whole (unary) answer.
    pub fn whole(&self, text: &str, reason: FinishReason, u: &Usage) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(reason),
                "logprobs": null,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "finish_reason": finish_reason(reason),
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(u),
        })
    }

    /// A streamed chunk: new text (and the role, on a chat's first chunk), or the finish.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<FinishReason>) -> Value {
        let reason = finish.map(finish_reason);
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "finish_reason": reason, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null})
            }
        };
        self.frame(vec![choice], None)
    }

    /// The last chunk of a stream that asked for `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, u: &Usage) -> Value {
        self.frame(Vec::new(), Some(usage(u)))
    }

    fn frame(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        })
    }
}

#[cfg(test)]
mod tests;
