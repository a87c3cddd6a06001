//! Validation: a [`GenerateInput`] becomes a [`Prepared`] request, or a
//! [`RequestError::InvalidField`] (or `UnknownModel`, `ChatTemplate`) whose message names the field
//! and the limit. Runs on the caller's task: tokenizing and template rendering need only the
//! shared model, not the engine thread.

use appl_engine::{ChatMessage, EngineError, EngineHandle, Sampling};

use super::{GenerateInput, Prepared, PromptInput, RequestError, SamplingInput};
use crate::config::LimitsConfig;
use crate::state::AppState;

fn invalid(field: &'static str, msg: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        message: msg.into(),
    }
}

/// Sampling settings with defaults filled in, each checked against its range.
pub fn sampling(p: &SamplingInput) -> Result<Sampling, RequestError> {
    let d = Sampling::default();
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
        return Err(invalid(
            "temperature",
            format!(
                "sampling.temperature is {}; it must be 0 (greedy) or more",
                s.temperature
            ),
        ));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(invalid(
            "top_p",
            format!("sampling.top_p is {}; it must be in (0, 1]", s.top_p),
        ));
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return Err(invalid(
            "min_p",
            format!("sampling.min_p is {}; it must be in [0, 1]", s.min_p),
        ));
    }
    if s.top_k < 0 {
        return Err(invalid(
            "top_k",
            format!("sampling.top_k is {}; it must be 0 (off) or more", s.top_k),
        ));
    }
    if !(s.repeat_penalty.is_finite() && s.repeat_penalty > 0.0) {
        return Err(invalid(
            "repeat_penalty",
            format!(
                "sampling.repeat_penalty is {}; it must be more than 0 (1 is off)",
                s.repeat_penalty
            ),
        ));
    }
    if s.repeat_last_n < 0 {
        return Err(invalid(
            "repeat_last_n",
            format!(
                "sampling.repeat_last_n is {}; it must be 0 or more",
                s.repeat_last_n
            ),
        ));
    }
    Ok(s)
}

fn fresh_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// The prompt text: a raw prompt as is, chat messages rendered with the model's template.
pub fn render(engine: &EngineHandle, prompt: &PromptInput) -> Result<String, RequestError> {
    match prompt {
        PromptInput::Text(t) => Ok(t.clone()),
        PromptInput::Chat(messages) => render_chat(engine, messages),
    }
}

fn render_chat(engine: &EngineHandle, messages: &[ChatMessage]) -> Result<String, RequestError> {
    if messages.is_empty() {
        return Err(invalid(
            "messages",
            "messages is empty; send at least one user message",
        ));
    }
    check_roles(messages)?;
    engine.render_chat(messages).map_err(|e| match e {
        EngineError::ChatTemplate(m) => RequestError::ChatTemplate(m),
        other => RequestError::Internal(other.to_string()),
    })
}

/// Refuses text longer than `limits.max_prompt_bytes`.
pub fn prompt_bytes(state: &AppState, what: &str, len: usize) -> Result<(), RequestError> {
    let max = state.limits().max_prompt_bytes;
    if len > max {
        return Err(RequestError::OverLimit {
            key: "limits.max_prompt_bytes",
            message: format!(
                "the {what} is {len} bytes; this daemon accepts at most {max} (limits.max_prompt_bytes)"
            ),
        });
    }
    Ok(())
}

/// A refusal for an input over a configured limit, naming the key.
fn over(key: &'static str, message: String) -> RequestError {
    RequestError::OverLimit { key, message }
}

/// Everything about a generation request that can be checked without a model: the prompt is
/// not empty, chat messages (count, roles, bytes), sampling ranges, `max_tokens` and stop
/// sequences, each against its configured limit. The fuzz target `request_validation` drives
/// exactly this function.
pub fn check_input(
    limits: &LimitsConfig,
    input: &GenerateInput,
) -> Result<(u32, Sampling), RequestError> {
    match &input.prompt {
        PromptInput::Text(t) => {
            if t.is_empty() {
                return Err(invalid(
                    "prompt",
                    "prompt is empty; send the text to continue",
                ));
            }
            if t.len() > limits.max_prompt_bytes {
                return Err(over(
                    "limits.max_prompt_bytes",
                    format!(
                        "the prompt is {} bytes; this daemon accepts at most {} (limits.max_prompt_bytes)",
                        t.len(),
                        limits.max_prompt_bytes
                    ),
                ));
            }
        }
        PromptInput::Chat(messages) => {
            if messages.is_empty() {
                return Err(invalid(
                    "messages",
                    "messages is empty; send at least one user message",
                ));
            }
            if messages.len() > limits.max_chat_messages {
                return Err(over(
                    "limits.max_chat_messages",
                    format!(
                        "{} chat messages given; at most {} are allowed (limits.max_chat_messages)",
                        messages.len(),
                        limits.max_chat_messages
                    ),
                ));
            }
            check_roles(messages)?;
            let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
            if bytes > limits.max_prompt_bytes {
                return Err(over(
                    "limits.max_prompt_bytes",
                    format!(
                        "the messages hold {bytes} bytes; this daemon accepts at most {} (limits.max_prompt_bytes)",
                        limits.max_prompt_bytes
                    ),
                ));
            }
        }
    }
    let sampling = sampling(&input.sampling)?;
    let max_tokens = input.max_tokens.unwrap_or(limits.default_max_tokens);
    if max_tokens == 0 {
        return Err(invalid(
            "max_tokens",
            "max_tokens is 0; ask for at least 1 token",
        ));
    }
    if max_tokens > limits.max_tokens_cap {
        return Err(over(
            "limits.max_tokens_cap",
            format!(
                "max_tokens is {max_tokens}; this daemon allows at most {} (limits.max_tokens_cap)",
                limits.max_tokens_cap
            ),
        ));
    }
    if input.stop.len() > limits.max_stop_sequences {
        return Err(over(
            "limits.max_stop_sequences",
            format!(
                "{} stop sequences given; at most {} are allowed (limits.max_stop_sequences)",
                input.stop.len(),
                limits.max_stop_sequences
            ),
        ));
    }
    if let Some(long) = input.stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(over(
            "limits.max_stop_bytes",
            format!(
                "a stop sequence is {} bytes; at most {} are allowed (limits.max_stop_bytes)",
                long.len(),
                limits.max_stop_bytes
            ),
        ));
    }
    Ok((max_tokens, sampling))
}

fn check_roles(messages: &[ChatMessage]) -> Result<(), RequestError> {
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(invalid(
                "messages",
                format!(
                    "messages[{i}].role is {:?}; use system, user or assistant",
                    m.role
                ),
            ));
        }
    }
    Ok(())
}

impl AppState {
    /// Validates a generation request for `tenant`: [`check_input`], then what needs the
    /// model: the rendered prompt's size in bytes and in tokens.
    pub fn prepare(&self, input: GenerateInput, tenant: &str) -> Result<Prepared, RequestError> {
        let limits = self.limits();
        let (max_tokens, sampling) = check_input(&limits, &input)?;
        let engine = self.engine(&input.model)?;
        let prompt_text = render(&engine, &input.prompt)?;
        let tenants = self.tenants();
        let tenant = tenants.resolve(tenant);
        let priority = input
            .priority
            .unwrap_or_else(|| tenants.policy(tenant).default_priority);
        prompt_bytes(self, "prompt", prompt_text.len())?;
        let prompt = engine.tokenize(&prompt_text);
        if prompt.len() > limits.max_prompt_tokens {
            return Err(over(
                "limits.max_prompt_tokens",
                format!(
                    "the prompt is {} tokens; this daemon accepts at most {} (limits.max_prompt_tokens)",
                    prompt.len(),
                    limits.max_prompt_tokens
                ),
            ));
        }
        let ctx = engine.spec().ctx_per_slot() as usize;
        if prompt.len() >= ctx {
            return Err(invalid(
                "prompt",
                format!(
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
            stop: input.stop,
            deadline: input.deadline,
            request_id: self.request_id(),
            received: input.received,
            method: input.method,
            tenant,
            tenants,
            priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_defaults_are_valid() {
        let s = sampling(&SamplingInput::default()).expect("defaults are valid");
        assert!(s.temperature > 0.0);
    }

    #[test]
    fn bad_sampling_is_invalid_naming_the_field() {
        let cases = [
            (
                SamplingInput {
                    temperature: Some(-0.1),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingInput {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingInput {
                    top_p: Some(1.5),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingInput {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingInput {
                    min_p: Some(-1.0),
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingInput {
                    top_k: Some(-3),
                    ..Default::default()
                },
                "top_k",
            ),
            (
                SamplingInput {
                    repeat_penalty: Some(0.0),
                    ..Default::default()
                },
                "repeat_penalty",
            ),
        ];
        for (params, field) in cases {
            let err = sampling(&params).expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
