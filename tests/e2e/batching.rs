//! Continuous batching: concurrent streams share engine steps; a dropped client frees its slot.

use std::time::{Duration, Instant};

use appl_proto::v1 as pb;
use futures::StreamExt;

use crate::generate::collect;
use crate::harness::{greedy, Daemon, Opts};

const PROMPTS: [&str; 8] = [
    "Once upon a time, in a small village,",
    "The history of the Roman Empire",
    "Here is a recipe for bread:",
    "The best way to learn a new language is",
    "In the year 2050, cities will",
    "A letter to my younger self:",
    "The main causes of the French Revolution were",
    "How to plant a tree: first,",
];

#[tokio::test]
async fn eight_concurrent_streams_complete_and_share_decode_steps() {
    let d = Daemon::start_with(Opts {
        slots: 8,
        ..Opts::default()
    });
    let channel = d.channel().await;
    let max_tokens = 48;

    // Each stream's expected prompt length, from the same tokenizer.
    let mut c = pb::inference_client::InferenceClient::new(channel.clone());
    let mut prompt_lens = Vec::new();
    for p in PROMPTS {
        let t = c
            .tokenize(pb::TokenizeRequest {
                model: String::new(),
                input: Some(pb::tokenize_request::Input::Prompt(p.into())),
            })
            .await
            .expect("tokenize")
            .into_inner();
        prompt_lens.push(t.token_ids.len() as u32);
    }

    let tasks: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let mut c = pb::inference_client::InferenceClient::new(channel.clone());
            let req = greedy(p, max_tokens);
            tokio::spawn(async move {
                let s = c.generate_stream(req).await.expect("stream").into_inner();
                collect(s).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (text, ids, last) = t.await.expect("task");
        let u = last.usage.expect("usage");
        assert_eq!(u.prompt_tokens, prompt_lens[i], "stream {i} prompt tokens");
        assert_eq!(
            u.completion_tokens as usize,
            ids.len(),
            "stream {i} completion tokens"
        );
        assert!(u.completion_tokens >= 1 && u.completion_tokens <= max_tokens);
        assert!(!text.is_empty(), "stream {i} produced text");
        assert!(
            last.finish_reason == pb::FinishReason::Length as i32
                || last.finish_reason == pb::FinishReason::Stop as i32
        );
    }

    let s = d.engine_status().await;
    assert_eq!(s.requests_completed, 8);
    assert_eq!(s.busy_slots, 0);
    // The proof of continuous batching: at least one llama_decode call carried all eight
    // sequences at once, and there were far fewer steps than tokens generated.
    assert_eq!(s.max_batch_sequences, 8, "status: {s:?}");
    assert!(
        s.steps < s.tokens_generated,
        "steps {} should be fewer than tokens generated {}",
        s.steps,
        s.tokens_generated
    );
}

#[tokio::test]
async fn a_dropped_stream_frees_its_slot_within_a_step() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut s = c
        .generate_stream(greedy("Write a very long story about a dragon.", 500))
        .await
        .expect("stream")
        .into_inner();
    // Wait until it is really generating.
    let first = s.next().await.expect("a chunk").expect("ok");
    assert!(first.finish_reason == 0);
    assert_eq!(d.engine_status().await.busy_slots, 1);
    drop(s);

    let dropped = Instant::now();
    loop {
        let st = d.engine_status().await;
        if st.busy_slots == 0 {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(2),
            "the slot is still busy {:?} after the client went away",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = d.engine_status().await;
    assert!(
        st.tokens_generated < 500,
        "generation stopped early: {st:?}"
    );

    // The one slot is free: a new request is served at once instead of queueing behind 500 tokens.
    let r = c
        .generate(greedy("Hello", 4))
        .await
        .expect("generate")
        .into_inner();
    assert!(r.usage.expect("usage").queue_ms < 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_cuts_connections_after_the_drain_timeout() {
    let mut d = Daemon::start_with(Opts {
        slots: 1,
        ctx_per_slot: 4096,
        max_tokens_cap: 4000,
        drain_timeout_secs: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut s = c
        .generate_stream(greedy("Write a very long story about a dragon.", 4000))
        .await
        .expect("stream")
        .into_inner();
    s.next().await.expect("a chunk").expect("ok");
    // The client keeps its stream open; SIGTERM must still stop the daemon, after the
    // 1 s drain timeout rather than after 4000 tokens.
    let asked = Instant::now();
    let code = tokio::task::block_in_place(|| d.terminate());
    assert_eq!(code, Some(0), "clean exit; log:\n{}", d.log_text());
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "stopped {:?} after SIGTERM",
        asked.elapsed()
    );
    assert!(d.log_text().contains("drain timeout reached"));
}
