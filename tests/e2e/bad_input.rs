//! Bad requests get the right gRPC code and a message that says what to fix.

use appl_proto::v1 as pb;
use tonic::Code;

use crate::harness::{greedy, Daemon, Opts};

fn check(
    result: Result<tonic::Response<pb::GenerateResponse>, tonic::Status>,
    code: Code,
    needles: &[&str],
) {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "message: {}", status.message());
    for n in needles {
        assert!(
            status.message().contains(n),
            "message {:?} should mention {n:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_clear_messages() {
    let d = Daemon::start_with(Opts {
        ctx_per_slot: 64,
        max_tokens_cap: 100,
        ..Opts::default()
    });
    let mut c = d.inference().await;

    let mut r = greedy("hi", 4);
    r.model = "no-such-model".into();
    check(
        c.generate(r).await,
        Code::NotFound,
        &["no-such-model", "gemma-3-270m"],
    );

    check(
        c.generate(greedy("", 4)).await,
        Code::InvalidArgument,
        &["prompt is empty"],
    );

    let mut r = greedy("hi", 4);
    r.sampling = Some(pb::SamplingParams {
        temperature: Some(-1.0),
        ..Default::default()
    });
    check(c.generate(r).await, Code::InvalidArgument, &["temperature"]);

    let mut r = greedy("hi", 4);
    r.sampling = Some(pb::SamplingParams {
        top_p: Some(1.5),
        ..Default::default()
    });
    check(c.generate(r).await, Code::InvalidArgument, &["top_p"]);

    check(
        c.generate(greedy("hi", 101)).await,
        Code::InvalidArgument,
        &["max_tokens", "101", "100"],
    );

    // A prompt longer than a slot's context: both numbers are named.
    let long = "word ".repeat(200);
    let n = c
        .tokenize(pb::TokenizeRequest {
            model: String::new(),
            input: Some(pb::tokenize_request::Input::Prompt(long.clone())),
        })
        .await
        .expect("tokenize")
        .into_inner()
        .token_ids
        .len();
    assert!(n > 64);
    check(
        c.generate(greedy(&long, 4)).await,
        Code::InvalidArgument,
        &[&format!("{n} tokens"), "64 tokens"],
    );

    // Chat with a role the templates do not know.
    let err = c
        .chat(pb::ChatRequest {
            model: String::new(),
            messages: vec![pb::ChatMessage {
                role: "wizard".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        })
        .await
        .expect_err("bad role");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("messages[0].role"));

    // The daemon is still healthy after all of that.
    let ok = c.generate(greedy("Hello", 2)).await.expect("still serving");
    assert_eq!(ok.into_inner().usage.expect("usage").completion_tokens, 2);
    // No prompt text reached the logs.
    assert!(!d.log_text().contains("word word word"));
}

/// A GenerateRequest whose prompt is raw bytes, so a test can send what a buggy client might.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGenerateRequest {
    #[prost(string, tag = "1")]
    model: String,
    #[prost(bytes = "vec", tag = "2")]
    prompt: Vec<u8>,
}

#[tokio::test]
async fn a_prompt_that_is_not_utf8_is_invalid_argument() {
    let d = Daemon::start();
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/appl.v1.Inference/Generate");
    let req = RawGenerateRequest {
        model: String::new(),
        prompt: b"Once upon a \xff\xfe time".to_vec(),
    };
    let err = grpc
        .unary::<_, pb::GenerateResponse, _>(
            tonic::Request::new(req),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("invalid UTF-8 must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("UTF-8"), "{}", err.message());
    // And the daemon keeps serving.
    let mut c = d.inference().await;
    c.generate(greedy("Hello", 2)).await.expect("still serving");
}
