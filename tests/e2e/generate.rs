//! Generation over gRPC: unary, streaming, determinism, stop sequences, chat.

use appl_proto::v1 as pb;
use futures::StreamExt;

use crate::harness::{greedy, Daemon};

/// Collects a stream into (text, token ids, final chunk).
pub async fn collect(
    mut s: tonic::Streaming<pb::GenerateChunk>,
) -> (String, Vec<i32>, pb::GenerateChunk) {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut last = None;
    while let Some(c) = s.next().await {
        let c = c.expect("stream item");
        text.push_str(&c.text);
        ids.extend(&c.token_ids);
        if c.finish_reason != 0 {
            last = Some(c);
        }
    }
    (text, ids, last.expect("a final chunk with a finish reason"))
}

async fn prompt_len(d: &Daemon, prompt: &str) -> u32 {
    let r = d
        .inference()
        .await
        .tokenize(pb::TokenizeRequest {
            model: String::new(),
            input: Some(pb::tokenize_request::Input::Prompt(prompt.into())),
        })
        .await
        .expect("tokenize")
        .into_inner();
    r.token_ids.len() as u32
}

#[tokio::test]
async fn unary_and_streaming_generate_agree_and_report_usage() {
    let d = Daemon::start();
    let mut c = d.inference().await;
    let prompt = "Once upon a time";
    let unary = c
        .generate(greedy(prompt, 16))
        .await
        .expect("generate")
        .into_inner();
    assert!(!unary.text.trim().is_empty(), "some text came back");
    let usage = unary.usage.expect("usage");
    assert_eq!(usage.prompt_tokens, prompt_len(&d, prompt).await);
    assert_eq!(usage.completion_tokens as usize, unary.token_ids.len());
    assert!(usage.completion_tokens <= 16);
    assert!(usage.time_to_first_token_ms > 0.0);
    assert!(
        unary.finish_reason == pb::FinishReason::Length as i32
            || unary.finish_reason == pb::FinishReason::Stop as i32
    );
    assert_eq!(unary.model, "gemma-3-270m");
    assert!(!unary.request_id.is_empty());

    let stream = c
        .generate_stream(greedy(prompt, 16))
        .await
        .expect("generate_stream")
        .into_inner();
    let (text, ids, last) = collect(stream).await;
    assert_eq!(
        text, unary.text,
        "streamed greedy text equals unary greedy text"
    );
    assert_eq!(ids, unary.token_ids);
    let su = last.usage.expect("final chunk carries usage");
    assert_eq!(su.completion_tokens as usize, ids.len());
    assert_eq!(su.prompt_tokens, usage.prompt_tokens);
    assert_eq!(last.finish_reason, unary.finish_reason);

    // TCP serves the same API as the Unix socket.
    let mut tcp = pb::inference_client::InferenceClient::new(d.tcp_channel().await);
    let models = tcp
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list models over tcp")
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].id, "gemma-3-270m");
    assert_eq!(models[0].chat_template, "gemma");
    assert!(models[0].is_default);
}

#[tokio::test]
async fn greedy_is_deterministic_and_max_tokens_and_stop_are_honoured() {
    let d = Daemon::start();
    let mut c = d.inference().await;
    let prompt = "The three primary colors are";
    let a = c
        .generate(greedy(prompt, 40))
        .await
        .expect("first")
        .into_inner();
    let b = c
        .generate(greedy(prompt, 40))
        .await
        .expect("second")
        .into_inner();
    assert_eq!(
        a.text, b.text,
        "the same greedy request twice gives the same text"
    );
    assert_eq!(a.token_ids, b.token_ids);

    // max_tokens: exactly that many tokens, finish reason length.
    let short = c
        .generate(greedy(prompt, 5))
        .await
        .expect("short")
        .into_inner();
    assert_eq!(short.usage.expect("usage").completion_tokens, 5);
    assert_eq!(short.token_ids, a.token_ids[..5]);
    assert_eq!(short.finish_reason, pb::FinishReason::Length as i32);

    // A stop sequence taken from the middle of the greedy text: the output ends right before it.
    let words: Vec<&str> = a.text.split_whitespace().collect();
    assert!(
        words.len() >= 4,
        "enough text to pick a stop word from: {:?}",
        a.text
    );
    let stop_word = words[words.len() / 2];
    let cut = a.text.find(stop_word).expect("the word is in the text");
    let mut req = greedy(prompt, 40);
    req.stop = vec![stop_word.to_owned()];
    let stopped = c.generate(req).await.expect("with stop").into_inner();
    assert_eq!(stopped.text, a.text[..cut]);
    assert_eq!(stopped.finish_reason, pb::FinishReason::Stop as i32);
    assert!(!stopped.text.contains(stop_word));

    // The same through a stream: the stop string is never sent.
    let mut req = greedy(prompt, 40);
    req.stop = vec![stop_word.to_owned()];
    let (text, _, last) = collect(c.generate_stream(req).await.expect("stream").into_inner()).await;
    assert_eq!(text, a.text[..cut]);
    assert_eq!(last.finish_reason, pb::FinishReason::Stop as i32);
}

#[tokio::test]
async fn chat_is_rendered_with_the_gemma_template() {
    let d = Daemon::start();
    let mut c = d.inference().await;
    let messages = vec![pb::ChatMessage {
        role: "user".into(),
        content: "What is the capital of France?".into(),
    }];
    let t = c
        .tokenize(pb::TokenizeRequest {
            model: "gemma-3-270m".into(),
            input: Some(pb::tokenize_request::Input::Chat(pb::ChatMessages {
                messages: messages.clone(),
            })),
        })
        .await
        .expect("tokenize chat")
        .into_inner();
    assert_eq!(
        t.rendered,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );
    // BOS first, and the turn markers are single special tokens, not text.
    assert_eq!(t.pieces[0], "<bos>");
    assert_eq!(t.pieces[1], "<start_of_turn>");
    assert_eq!(
        t.pieces.iter().filter(|p| *p == "<start_of_turn>").count(),
        2
    );
    assert_eq!(t.pieces.iter().filter(|p| *p == "<end_of_turn>").count(), 1);

    let r = c
        .chat(pb::ChatRequest {
            model: "gemma-3-270m".into(),
            messages,
            sampling: Some(pb::SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            }),
            max_tokens: Some(24),
            stop: vec![],
            ..Default::default()
        })
        .await
        .expect("chat")
        .into_inner();
    assert_eq!(
        r.usage.expect("usage").prompt_tokens as usize,
        t.token_ids.len()
    );
    // The demo model is a base model, so the answer's quality is not the point; that it
    // answers, and that no template marker leaks into the text, is.
    assert!(!r.text.trim().is_empty());
    assert!(!r.text.contains("<end_of_turn>"));
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let d = Daemon::start();
    let mut h = HealthClient::new(d.channel().await);
    for service in ["", "appl.v1.Inference", "appl.v1.Admin"] {
        let s = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            s.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}
