use super::*;

fn parse_chat(body: &str) -> Result<Parsed, RequestError> {
    parse(Kind::Chat, body.as_bytes(), Instant::now())
}

fn parse_completion(body: &str) -> Result<Parsed, RequestError> {
    parse(Kind::Completion, body.as_bytes(), Instant::now())
}

#[test]
fn a_full_chat_request_translates_field_by_field() {
    let p = parse_chat(
        r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
            "max_completion_tokens":7,"max_tokens":99,"temperature":0,"top_p":0.5,"seed":-1,
            "stop":"\n","stream":true,"stream_options":{"include_usage":true},"user":"u1",
            "n":1,"priority":"batch","presence_penalty":0,"logprobs":false,"tool_choice":"none"}"#,
    )
    .expect("valid");
    assert!(p.stream && p.include_usage);
    let i = p.input;
    assert_eq!(i.model, "m");
    assert_eq!(i.max_tokens, Some(7));
    assert_eq!(i.sampling.temperature, Some(0.0));
    assert_eq!(i.sampling.top_p, Some(0.5));
    assert_eq!(i.sampling.seed, Some(u32::MAX));
    assert_eq!(i.stop, vec!["\n".to_owned()]);
    assert_eq!(i.priority, Some(Priority::Batch));
    assert_eq!(i.method, "openai.ChatCompletionsStream");
    let PromptInput::Chat(m) = i.prompt else {
        panic!("a chat prompt")
    };
    assert_eq!(m[0].role, "system");
    assert_eq!(m[1].content, "Hi there");
}

#[test]
fn a_minimal_completion_request_takes_the_defaults() {
    let p = parse_completion(r#"{"model":"m","prompt":"Once"}"#).expect("valid");
    assert!(!p.stream && !p.include_usage);
    assert_eq!(p.input.max_tokens, None);
    assert!(p.input.stop.is_empty());
    assert!(matches!(p.input.prompt, PromptInput::Text(ref t) if t == "Once"));
}

/// Each malformed or unsupported field is refused, naming it.
#[test]
fn bad_fields_are_refused_by_name() {
    let chat = |extra: &str| format!(r#"{{"messages":[{{"role":"user","content":"x"}}]{extra}}}"#);
    let cases: Vec<(Kind, String, Option<&str>)> = vec![
        (
            Kind::Completion,
            r#"{"prompt":["a","b"]}"#.into(),
            Some("prompt"),
        ),
        (
            Kind::Completion,
            r#"{"prompt":[1,2,3]}"#.into(),
            Some("prompt"),
        ),
        (Kind::Completion, r#"{"prompt":5}"#.into(), Some("prompt")),
        (Kind::Completion, r#"{}"#.into(), Some("prompt")),
        (Kind::Chat, r#"{"messages":"hi"}"#.into(), Some("messages")),
        (
            Kind::Chat,
            r#"{"messages":[{"content":"x"}]}"#.into(),
            Some("messages"),
        ),
        (
            Kind::Chat,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.into(),
            Some("messages"),
        ),
        (Kind::Chat, chat(r#","n":2"#), Some("n")),
        (
            Kind::Chat,
            chat(r#","temperature":"hot""#),
            Some("temperature"),
        ),
        (Kind::Chat, chat(r#","top_p":"x""#), Some("top_p")),
        (Kind::Chat, chat(r#","max_tokens":-1"#), Some("max_tokens")),
        (
            Kind::Chat,
            chat(r#","max_completion_tokens":1.5"#),
            Some("max_completion_tokens"),
        ),
        (Kind::Chat, chat(r#","seed":"s""#), Some("seed")),
        (Kind::Chat, chat(r#","stop":[1]"#), Some("stop")),
        (Kind::Chat, chat(r#","stream":"yes""#), Some("stream")),
        (
            Kind::Chat,
            chat(r#","stream_options":{"include_usage":1}"#),
            Some("stream_options"),
        ),
        (Kind::Chat, chat(r#","model":7"#), Some("model")),
        (Kind::Chat, chat(r#","user":{}"#), Some("user")),
        (
            Kind::Chat,
            chat(r#","priority":"urgent""#),
            Some("priority"),
        ),
        (
            Kind::Chat,
            chat(r#","tools":[{"type":"function"}]"#),
            Some("tools"),
        ),
        (
            Kind::Chat,
            chat(r#","tool_choice":"auto""#),
            Some("tool_choice"),
        ),
        (Kind::Chat, chat(r#","logprobs":true"#), Some("logprobs")),
        (
            Kind::Chat,
            chat(r#","frequency_penalty":0.5"#),
            Some("frequency_penalty"),
        ),
        (
            Kind::Chat,
            chat(r#","response_format":{"type":"json_object"}"#),
            Some("response_format"),
        ),
        (
            Kind::Completion,
            r#"{"prompt":"x","echo":true}"#.into(),
            Some("echo"),
        ),
        (
            Kind::Completion,
            r#"{"prompt":"x","best_of":3}"#.into(),
            Some("best_of"),
        ),
        (
            Kind::Completion,
            r#"{"prompt":"x","suffix":"y"}"#.into(),
            Some("suffix"),
        ),
        (Kind::Chat, "[1,2]".into(), None),
        (Kind::Chat, "{\"messages\":".into(), None),
    ];
    for (kind, body, field) in cases {
        let err = parse(kind, body.as_bytes(), Instant::now()).expect_err(&body);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{body}");
        assert_eq!(err.field(), field, "{body}: {err}");
        if let Some(f) = field {
            assert!(err.to_string().contains(f), "{body}: {err}");
        }
    }
}

#[test]
fn a_body_that_is_not_utf8_is_refused() {
    let err =
        parse(Kind::Completion, b"{\"prompt\":\"\xff\"}", Instant::now()).expect_err("bad utf-8");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn answers_have_the_shape_the_sdks_read() {
    let head = Head::new(Kind::Chat, "r1", "m");
    let usage = Usage {
        prompt_tokens: 3,
        completion_tokens: 2,
        ..Usage::default()
    };
    let w = head.whole("hi", FinishReason::Length, &usage);
    assert_eq!(w["id"], "chatcmpl-r1");
    assert_eq!(w["object"], "chat.completion");
    assert_eq!(w["choices"][0]["message"]["content"], "hi");
    assert_eq!(w["choices"][0]["finish_reason"], "length");
    assert_eq!(w["usage"]["total_tokens"], 5);
    let c = head.chunk(Some(""), true, None);
    assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
    assert!(c["choices"][0]["finish_reason"].is_null());
    let c = head.chunk(None, false, Some(FinishReason::Stop));
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(head.usage_chunk(&usage)["choices"], json!([]));
    let t = Head::new(Kind::Completion, "r2", "m").whole("x", FinishReason::Stop, &usage);
    assert_eq!(t["object"], "text_completion");
    assert_eq!(t["choices"][0]["text"], "x");
}
