//! Prefix sharing across slots: requests that arrive together behind one long system prompt
//! prefill it once (the others are seeded from the slot that prefilled it), and a seeded
//! request's greedy output is what it gives alone.

use appl_proto::v1 as pb;

use crate::generate::collect;
use crate::harness::{greedy, Daemon, Opts};

const SYSTEM: &str = "You are the careful assistant of a small hospital ward. You answer in plain \
    words and short sentences, for patients and their families, who are often tired and worried. \
    You never give a diagnosis and never change a treatment. When a question is about the dose of \
    a medicine, you say that the pharmacist or the nurse on duty can answer it, and where to find \
    them: the pharmacy is on the ground floor, next to the main entrance, and the nurses' station \
    is at the end of this corridor. Visiting hours are from ten in the morning to eight in the \
    evening; children are welcome with an adult. Meals are served at eight, at noon and at six. \
    If someone feels worse, they press the red button beside the bed, and a nurse comes at once. \
    Now answer the question below in three sentences or fewer.\n\nQuestion: ";

const QUESTIONS: [&str; 4] = [
    "Why do I need to drink so much water?",
    "Can my daughter bring flowers?",
    "When is breakfast?",
    "What does the red button do?",
];

async fn prompt_tokens(d: &Daemon, text: &str) -> u64 {
    let mut c = d.inference().await;
    c.tokenize(pb::TokenizeRequest {
        model: String::new(),
        input: Some(pb::tokenize_request::Input::Prompt(text.into())),
    })
    .await
    .expect("tokenize")
    .into_inner()
    .token_ids
    .len() as u64
}

/// Runs the first `max_tokens.len()` questions at once and returns (token ids, usage) per
/// question.
async fn burst(d: &Daemon, max_tokens: &[u32]) -> Vec<(Vec<i32>, pb::Usage)> {
    let channel = d.channel().await;
    let tasks: Vec<_> = QUESTIONS
        .iter()
        .zip(max_tokens)
        .map(|(q, &n)| {
            let mut c = pb::inference_client::InferenceClient::new(channel.clone());
            let req = greedy(&format!("{SYSTEM}{q}"), n);
            tokio::spawn(async move {
                let s = c.generate_stream(req).await.expect("stream").into_inner();
                let (_, ids, last) = collect(s).await;
                (ids, last.usage.expect("usage"))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_burst_behind_one_long_system_prompt_prefills_it_once() {
    let d = Daemon::start_with(Opts {
        slots: 4,
        ..Opts::default()
    });
    let prefix = prompt_tokens(&d, SYSTEM).await;
    let mut total = 0;
    for q in QUESTIONS {
        total += prompt_tokens(&d, &format!("{SYSTEM}{q}")).await;
    }
    assert!(prefix > 150, "the system prompt is long: {prefix} tokens");
    let before = d.engine_status().await;
    let results = burst(&d, &[12; 4]).await;
    let after = d.engine_status().await;

    let cached: u64 = results
        .iter()
        .map(|(_, u)| u64::from(u.cached_prompt_tokens))
        .sum();
    // Three of the four were seeded with (nearly all of) the shared prefix; the tokenizer may
    // join the prefix's last token with a question's first.
    assert!(
        cached >= 3 * (prefix - 4),
        "cached {cached} prompt tokens, prefix {prefix}: {results:?}"
    );
    let prefilled = after.tokens_prefilled - before.tokens_prefilled;
    assert_eq!(
        prefilled + cached,
        total,
        "every prompt token was prefilled or shared"
    );
    assert!(
        prefilled < total - 2 * prefix,
        "the prefix was prefilled about once: {prefilled} of {total} prompt tokens"
    );
    assert_eq!(
        after.tokens_prefix_reused - before.tokens_prefix_reused,
        cached
    );
    for (ids, u) in &results {
        assert_eq!(u.completion_tokens as usize, ids.len());
        assert!(!ids.is_empty());
    }
}

/// A request seeded from another's prefix picks the token it picks alone: its KV for the shared
/// part is the other request's, and only its own question is prefilled. Two requests of one
/// token each, so that every run prefills the seeded request's question in a batch of its own
/// (the other has finished by then), whatever the timing: float rounding in ggml's matrix kernels depends on how rows are grouped in a batch,
/// and a longer greedy answer can drift between batch layouts whatever the KV cache holds.
#[tokio::test]
async fn a_seeded_request_picks_the_token_it_picks_alone() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        ..Opts::default()
    });
    let prefix = prompt_tokens(&d, SYSTEM).await;
    let results = burst(&d, &[1, 1]).await;
    assert!(
        results
            .iter()
            .any(|(_, u)| u64::from(u.cached_prompt_tokens) >= prefix - 4),
        "one of the two was seeded: {results:?}"
    );
    let alone = Daemon::start_with(Opts {
        slots: 1,
        extra_config: "[queue]\nprefix_reuse_min_tokens = 0\n".into(),
        ..Opts::default()
    });
    let mut c = alone.inference().await;
    for (q, (ids, _)) in QUESTIONS.iter().zip(&results) {
        let r = c
            .generate(greedy(&format!("{SYSTEM}{q}"), 1))
            .await
            .expect("alone")
            .into_inner();
        assert_eq!(&r.token_ids, ids, "{q}: the same first token alone");
    }
}

#[tokio::test]
async fn followers_of_a_leader_that_ends_first_are_seeded_from_its_cache() {
    let d = Daemon::start_with(Opts {
        slots: 4,
        ..Opts::default()
    });
    let prefix = prompt_tokens(&d, SYSTEM).await;
    // The first request stops after one token, in the step that completes its prefill, before
    // any request that waits for it is seeded: those find its prefix in its idle slot.
    let results = burst(&d, &[1, 8, 8, 8]).await;
    let seeded = results
        .iter()
        .filter(|(_, u)| u64::from(u.cached_prompt_tokens) >= prefix - 4)
        .count();
    assert!(seeded >= 3, "{results:?}");
    let st = d.engine_status().await;
    assert_eq!(st.requests_completed, 4);
    assert_eq!(st.busy_slots, 0);
}
