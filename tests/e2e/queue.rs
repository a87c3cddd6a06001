//! The batching queue, driven through the real daemon: bounded admission, deadlines, tenant
//! limits, fairness, preemption and prefix reuse.

use std::time::{Duration, Instant};

use appl_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;

use crate::generate::collect;
use crate::harness::{greedy, Daemon, Opts};

const MODEL: &str = "model=\"gemma-3-270m\"";

fn with_tenant<T>(tenant: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !tenant.is_empty() {
        r.metadata_mut()
            .insert("x-appl-tenant", tenant.parse().expect("ascii"));
    }
    r
}

fn deadline<T>(req: &mut tonic::Request<T>, grpc_timeout: &str) {
    req.metadata_mut()
        .insert("grpc-timeout", grpc_timeout.parse().expect("ascii"));
}

fn prio(mut r: pb::GenerateRequest, p: pb::Priority) -> pb::GenerateRequest {
    r.priority = p as i32;
    r
}

/// Polls the engine status until `done` holds, for at most 30 s.
async fn wait_for(d: &Daemon, what: &str, done: impl Fn(&pb::EngineStatus) -> bool) {
    let start = Instant::now();
    loop {
        let s = d.engine_status().await;
        if done(&s) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn overload_gives_exactly_k_immediate_resource_exhausted_and_the_rest_complete() {
    let (slots, queue, k) = (2u32, 2u32, 3usize);
    let d = Daemon::start_with(Opts {
        slots,
        queue_capacity: queue,
        ..Opts::default()
    });
    let channel = d.channel().await;
    let spawn = |prompt: &'static str| {
        let mut c = pb::inference_client::InferenceClient::new(channel.clone());
        tokio::spawn(async move { c.generate(greedy(prompt, 40)).await })
    };
    // Fill the slots, then the queue, so that the count of refusals is exact.
    let mut accepted = vec![
        spawn("The history of the Roman Empire"),
        spawn("A letter to my younger self:"),
    ];
    wait_for(&d, "both slots busy", |s| s.busy_slots == slots).await;
    accepted.push(spawn("Here is a recipe for bread:"));
    accepted.push(spawn("In the year 2050, cities will"));
    wait_for(&d, "a full queue", |s| s.queued == queue).await;

    let t0 = Instant::now();
    let refused: Vec<_> = (0..k)
        .map(|_| spawn("How to plant a tree: first,"))
        .collect();
    for r in refused {
        let err = r.await.expect("task").expect_err("over capacity");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("queue is full"), "{}", err.message());
        let hint = err.metadata().get("retry-after-ms").expect("a retry hint");
        assert!(hint.to_str().expect("ascii").parse::<u64>().expect("ms") > 0);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refusals must be immediate, took {:?}",
        t0.elapsed()
    );
    for a in accepted {
        let r = a
            .await
            .expect("task")
            .expect("accepted requests complete")
            .into_inner();
        assert!(r.usage.expect("usage").completion_tokens > 0);
    }
    let s = d.engine_status().await;
    assert_eq!(s.rejected_queue_full, k as u64);
    assert_eq!(s.requests_completed, 4);
    assert_eq!(
        d.metric(&format!(
            "appl_rejections_total{{{MODEL},reason=\"queue_full\"}}"
        )),
        k as f64
    );
}

#[tokio::test]
async fn deadlines_hold_in_the_queue_and_during_generation() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    // Occupy the only slot.
    let mut long = c
        .generate_stream(greedy("Write a very long story about a dragon.", 400))
        .await
        .expect("stream")
        .into_inner();
    long.next().await.expect("a chunk").expect("ok");

    // In the queue: the deadline passes before a slot frees up. A stream shows the server's
    // answer (a unary call races tonic's own client-side timer, which reports CANCELLED).
    let mut req = tonic::Request::new(greedy("Hello", 8));
    deadline(&mut req, "300m");
    let t0 = Instant::now();
    let s = c.generate_stream(req).await.expect("stream").into_inner();
    let (_, ids, last) = collect(s).await;
    assert_eq!(last.finish_reason, pb::FinishReason::Deadline as i32);
    assert!(ids.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(d.engine_status().await.expired_in_queue, 1);
    // Unary: refused with DEADLINE_EXCEEDED (or tonic's CANCELLED "Timeout expired" if the
    // client's timer fires first); either way the request leaves the queue at once.
    let mut req = tonic::Request::new(greedy("Hello", 8));
    deadline(&mut req, "200m");
    let err = c.generate(req).await.expect_err("deadline in queue");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    wait_for(&d, "the queue empty", |s| {
        s.queued == 0 && s.requests_completed == 2
    })
    .await;
    drop(long);
    wait_for(&d, "the slot freed", |s| s.busy_slots == 0).await;

    // While generating: a final message with finish reason DEADLINE and the usage so far.
    let mut req = tonic::Request::new(greedy("Write a very long story about a dragon.", 500));
    deadline(&mut req, "1500m");
    let s = c.generate_stream(req).await.expect("stream").into_inner();
    let (_, ids, last) = collect(s).await;
    assert_eq!(last.finish_reason, pb::FinishReason::Deadline as i32);
    let u = last.usage.expect("usage");
    assert!(
        u.completion_tokens > 0 && u.completion_tokens < 500,
        "{u:?}"
    );
    assert_eq!(u.completion_tokens as usize, ids.len());
    wait_for(&d, "the slot freed after the deadline", |s| {
        s.busy_slots == 0
    })
    .await;
}

#[tokio::test]
async fn tenant_concurrency_and_token_rate_limits_refuse_naming_the_limit() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        extra_config: r#"
[[tenants]]
name = "ward-a"
max_concurrent = 1

[[tenants]]
name = "ward-b"
tokens_per_minute = 60
"#
        .into(),
        ..Opts::default()
    });
    let mut c = d.inference().await;

    // ward-a: one request in flight at a time.
    let mut first = c
        .generate_stream(with_tenant(
            "ward-a",
            greedy("Write a very long story.", 300),
        ))
        .await
        .expect("first")
        .into_inner();
    first.next().await.expect("a chunk").expect("ok");
    let err = c
        .generate(with_tenant("ward-a", greedy("Hello", 4)))
        .await
        .expect_err("over max_concurrent");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("max_concurrent"),
        "{}",
        err.message()
    );
    assert_eq!(
        err.metadata()
            .get("x-appl-limit")
            .map(|v| v.to_str().expect("ascii")),
        Some("tenant_max_concurrent")
    );
    // Another tenant is not limited by ward-a's limit.
    c.generate(greedy("Hello", 4))
        .await
        .expect("default tenant");
    drop(first);
    let t0 = Instant::now();
    loop {
        match c.generate(with_tenant("ward-a", greedy("Hello", 4))).await {
            Ok(_) => break,
            Err(e)
                if e.code() == Code::ResourceExhausted && t0.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("ward-a should be admitted once its stream ended: {e:?}"),
        }
    }

    // ward-b: 60 tokens per minute (prompt plus completion).
    let mut spent = 0;
    let mut refused = None;
    for _ in 0..4 {
        match c
            .generate(with_tenant("ward-b", greedy("Tell me about the sea.", 40)))
            .await
        {
            Ok(r) => {
                let u = r.into_inner().usage.expect("usage");
                spent += u.prompt_tokens + u.completion_tokens;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("ward-b is refused once it has spent its budget");
    assert!(spent >= 60, "refused after only {spent} tokens");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("tokens_per_minute"),
        "{}",
        err.message()
    );
    let retry: u64 = err
        .metadata()
        .get("retry-after-ms")
        .expect("hint")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("ms");
    assert!(retry >= 1000, "the bucket refills at 1 token/s: {retry} ms");

    let st = d
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        st.rejected_tenant_concurrency >= 1 && st.rejected_tenant_rate >= 1,
        "{st:?}"
    );
    let names: Vec<_> = st.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ward-a", "ward-b", "default"]);
    assert!(d.metric("appl_tenant_rejections_total{reason=\"tenant_tokens_per_minute\"}") >= 1.0);
}

#[tokio::test]
async fn two_flooding_tenants_with_equal_weights_share_the_engine() {
    let d = Daemon::start_with(Opts {
        slots: 2,
        extra_config: "[[tenants]]\nname = \"a\"\n\n[[tenants]]\nname = \"b\"\n".into(),
        ..Opts::default()
    });
    let channel = d.channel().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let flood = |tenant: &'static str, n: usize| {
        for _ in 0..n {
            let mut c = pb::inference_client::InferenceClient::new(channel.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = c
                    .generate(with_tenant(tenant, greedy("Count from one to ten:", 6)))
                    .await;
                let _ = tx.send((tenant, r.is_ok()));
            });
        }
    };
    // Tenant a floods first: first-come-first-served would serve all of a before any of b.
    flood("a", 12);
    wait_for(&d, "a's requests queued", |s| s.busy_slots + s.queued == 12).await;
    flood("b", 12);
    wait_for(&d, "b's requests queued", |s| s.busy_slots + s.queued == 24).await;
    let mut order = Vec::new();
    while order.len() < 24 {
        let (tenant, ok) = rx.recv().await.expect("results");
        assert!(ok, "every request completes");
        order.push(tenant);
    }
    // The first completions may belong to requests that held slots before b arrived; judge
    // the next 12.
    let window = &order[2..14];
    let a = window.iter().filter(|&&t| t == "a").count();
    assert!(
        (5..=7).contains(&a),
        "a got {a} of 12 while both were waiting: {order:?}"
    );
}

#[tokio::test]
async fn a_preempted_batch_request_produces_the_same_greedy_output() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        // Keep prefix reuse out of this comparison: only preemption differs between the runs.
        extra_config: "[queue]\nprefix_reuse_min_tokens = 0\n".into(),
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut batch_req = prio(
        greedy("Write a detailed story about a lighthouse keeper.", 64),
        pb::Priority::Batch,
    );
    // The repetition penalty keeps state in the sampler; it must survive the pause.
    batch_req.sampling = Some(pb::SamplingParams {
        temperature: Some(0.0),
        repeat_penalty: Some(1.3),
        ..Default::default()
    });
    let reference = c
        .generate(batch_req.clone())
        .await
        .expect("reference")
        .into_inner();
    assert_eq!(reference.usage.as_ref().expect("usage").preemptions, 0);

    let s = c
        .generate_stream(batch_req)
        .await
        .expect("batch")
        .into_inner();
    let batch = tokio::spawn(collect(s));
    wait_for(&d, "the batch request generating", |s| {
        s.busy_slots == 1 && s.tokens_generated > reference.token_ids.len() as u64 + 2
    })
    .await;
    let t0 = Instant::now();
    let inter = c
        .generate(prio(greedy("Hello", 4), pb::Priority::Interactive))
        .await
        .expect("interactive")
        .into_inner();
    let waited = t0.elapsed();
    let (text, ids, last) = batch.await.expect("task");
    let u = last.usage.expect("usage");
    assert!(u.preemptions >= 1, "the batch request was paused: {u:?}");
    assert!(
        inter.usage.expect("usage").queue_ms < 500.0,
        "the interactive request did not wait for the batch one ({waited:?})"
    );
    assert_eq!(ids, reference.token_ids, "same tokens after the pause");
    assert_eq!(text, reference.text);
    let st = d.engine_status().await;
    assert!(st.preemptions >= 1);
    assert_eq!(st.paused, 0);
    assert!(d.metric(&format!("appl_preemptions_total{{{MODEL}}}")) >= 1.0);
}

#[tokio::test]
async fn batch_steps_cut_short_for_interactive_arrivals_leave_the_batch_output_unchanged() {
    // Three slots, two batch streams: an interactive arrival finds a free slot, so what it
    // changes for the batch streams is only the cut step, put back and decoded again.
    let d = Daemon::start_with(Opts {
        slots: 3,
        extra_config: "[queue]\nprefix_reuse_min_tokens = 0\n".into(),
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let prompts = [
        "Write a detailed story about a lighthouse keeper.",
        "Explain, step by step, how a river carves a canyon.",
    ];
    let mut references = Vec::new();
    for p in prompts {
        let r = c
            .generate(prio(greedy(p, 48), pb::Priority::Batch))
            .await
            .expect("reference")
            .into_inner();
        references.push(r.token_ids);
    }
    let before = d.metric(&format!("appl_engine_steps_interrupted_total{{{MODEL}}}"));
    let mut batch = Vec::new();
    for p in prompts {
        let s = c
            .generate_stream(prio(greedy(p, 48), pb::Priority::Batch))
            .await
            .expect("batch")
            .into_inner();
        batch.push(tokio::spawn(collect(s)));
    }
    wait_for(&d, "both batch streams generating", |s| {
        s.busy_slots == 2 && s.paused == 0
    })
    .await;
    let mut cuts = 0.0;
    for _ in 0..6 {
        let r = c
            .generate(prio(greedy("Hello", 2), pb::Priority::Interactive))
            .await
            .expect("interactive")
            .into_inner();
        assert!(!r.token_ids.is_empty());
        cuts = d.metric(&format!("appl_engine_steps_interrupted_total{{{MODEL}}}")) - before;
        if cuts >= 2.0 {
            break;
        }
    }
    for (task, want) in batch.into_iter().zip(&references) {
        let (_, ids, last) = task.await.expect("task");
        assert_eq!(&ids, want, "same tokens after the cut steps");
        assert_eq!(
            last.usage.expect("usage").preemptions,
            0,
            "nothing was paused"
        );
    }
    assert!(cuts >= 1.0, "no step was cut short ({cuts})");
    // llama.cpp reports each aborted decode as an error; those reports are not logged.
    let logs = d.logs.lock().expect("log lock").join("\n");
    assert!(!logs.contains("failed to decode"), "{logs}");
    assert!(!logs.contains("removing memory module entries"), "{logs}");
}

#[tokio::test]
async fn a_shared_prompt_prefix_is_served_from_cached_kv() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let system = "You are a careful assistant in a hospital. Answer briefly, in plain words, \
                  and never give a diagnosis. If a question is about medication doses, tell \
                  the person to ask their pharmacist. Question: ";
    let q1 = format!("{system}What is a fever?");
    let q2 = format!("{system}Why do we sleep?");

    let first = c.generate(greedy(&q2, 12)).await.expect("q2").into_inner();
    assert_eq!(first.usage.as_ref().expect("usage").cached_prompt_tokens, 0);
    let before = d.engine_status().await;
    let other = c.generate(greedy(&q1, 12)).await.expect("q1").into_inner();
    let reused = other.usage.expect("usage").cached_prompt_tokens;
    assert!(
        reused >= 30,
        "the shared prefix was reused: {reused} tokens"
    );
    let after = d.engine_status().await;
    assert_eq!(
        after.tokens_prefix_reused - before.tokens_prefix_reused,
        u64::from(reused)
    );
    let prompt_q1 = u64::from(other_prompt_tokens(&other));
    assert_eq!(
        after.tokens_prefilled - before.tokens_prefilled,
        prompt_q1 - u64::from(reused),
        "only the rest of the prompt was prefilled"
    );
    // The same prompt again reuses all but its last token, and gives the same greedy output.
    let again = c
        .generate(greedy(&q2, 12))
        .await
        .expect("q2 again")
        .into_inner();
    let u = again.usage.expect("usage");
    assert!(u.cached_prompt_tokens >= reused);
    assert_eq!(again.token_ids, first.token_ids);
    assert!(d.metric(&format!("appl_tokens_prefix_reused_total{{{MODEL}}}")) >= f64::from(reused));
}

fn other_prompt_tokens(r: &pb::GenerateResponse) -> u32 {
    r.usage.as_ref().expect("usage").prompt_tokens
}

#[tokio::test]
async fn a_paused_request_whose_client_leaves_is_dropped_at_once() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut batch = c
        .generate_stream(prio(
            greedy("Write a very long story about a dragon.", 400),
            pb::Priority::Batch,
        ))
        .await
        .expect("batch")
        .into_inner();
    batch.next().await.expect("a chunk").expect("ok");
    let mut inter = c
        .generate_stream(greedy("Write a very long story about a cat.", 400))
        .await
        .expect("interactive")
        .into_inner();
    inter.next().await.expect("a chunk").expect("ok");
    wait_for(&d, "the batch request paused", |s| s.paused == 1).await;
    drop(batch);
    let dropped = Instant::now();
    wait_for(&d, "the paused request gone", |s| s.paused == 0).await;
    // Noticed at once, not when the interactive request finishes and the batch one resumes.
    assert!(
        dropped.elapsed() < Duration::from_secs(3),
        "the paused request lingered {:?}",
        dropped.elapsed()
    );
    let s = d.engine_status().await;
    assert_eq!(s.busy_slots, 1, "the interactive request keeps its slot");
    drop(inter);
    wait_for(&d, "the slot freed", |s| {
        s.busy_slots == 0 && s.requests_completed == 2
    })
    .await;
}

#[tokio::test]
async fn a_unary_call_past_its_deadline_is_deadline_exceeded_and_frees_the_slot() {
    let d = Daemon::start_with(Opts {
        slots: 1,
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut req = tonic::Request::new(greedy("Write a very long story about a dragon.", 500));
    deadline(&mut req, "1500m");
    let t0 = Instant::now();
    let err = c
        .generate(req)
        .await
        .expect_err("the deadline passes mid-generation");
    // The daemon answers DEADLINE_EXCEEDED shortly before the deadline. The client's own timer
    // fires at the deadline itself (tonic reports it as CANCELLED, "Timeout expired"); on a
    // loaded machine it can win the race, and then the daemon's answer is not read. Either way
    // the daemon must have ended the request for its deadline, which its log says.
    match err.code() {
        Code::DeadlineExceeded => {
            assert!(err.message().contains("of 500 tokens"), "{}", err.message())
        }
        Code::Cancelled => assert_eq!(err.message(), "Timeout expired", "{err:?}"),
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}: {err:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let ended_for_deadline = || {
        d.log_text().lines().any(|l| {
            l.contains("request finished")
                && l.contains(r#""method":"Generate""#)
                && l.contains("Deadline")
        })
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    while !ended_for_deadline() && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ended_for_deadline(),
        "no deadline finish in the log:\n{}",
        d.log_text()
    );
    wait_for(&d, "the slot freed after the deadline", |s| {
        s.busy_slots == 0
    })
    .await;
}
