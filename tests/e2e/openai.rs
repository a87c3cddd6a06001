//! The OpenAI-compatible HTTP API, end to end: the official `openai` Python package as the
//! client (`APPL_OPENAI_PYTHON`, a Python with `openai` installed; scripts/test.sh makes one),
//! each refusal with its status and body shape over plain HTTP, a client that drops a stream
//! mid-way freeing its slot, and the audit records saying which API a request came through.

use std::process::Command;
use std::time::{Duration, Instant};

use appl_proto::v1 as pb;
use serde_json::{json, Value};

use crate::harness::{greedy, Daemon, Opts};
use crate::http_client::{self, send, stream_until};

pub const KEY: &str = "appl_e2e_openai_0123456789abcdef0123456789abcd";
const OPERATOR_KEY: &str = "appl_e2e_openai_operator_0123456789abcdef012";
const WARD_KEY: &str = "appl_e2e_openai_ward_0123456789abcdef0123456";
const MODEL: &str = "gemma-3-270m";

fn sha256_hex(k: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

/// The HTTP API on port 0, with three keys: `sdk` (inference, tenant default), `ops`
/// (operator only) and `ward` (inference, tenant `ward`, one request at a time).
pub fn http_config() -> String {
    format!(
        r#"
[openai]
listen = "127.0.0.1:0"
metrics = true

[[tenants]]
name = "ward"
max_concurrent = 1

[[api_keys]]
name = "sdk"
sha256 = "{}"
tenant = "default"
roles = ["inference"]

[[api_keys]]
name = "ops"
sha256 = "{}"
tenant = "default"
roles = ["operator"]

[[api_keys]]
name = "ward"
sha256 = "{}"
tenant = "ward"
roles = ["inference"]
"#,
        sha256_hex(KEY),
        sha256_hex(OPERATOR_KEY),
        sha256_hex(WARD_KEY)
    )
}

fn start(slots: u32, plaintext: bool) -> Daemon {
    Daemon::start_with(Opts {
        slots,
        plaintext_tcp: plaintext,
        tls_extra: if plaintext {
            String::new()
        } else {
            "client_certs = \"optional\"".into()
        },
        extra_config: http_config(),
        ..Opts::default()
    })
}

/// Runs the SDK script with `calls`; one JSON value per call, then the model list.
fn sdk(d: &Daemon, key: Option<&str>, client_cert: bool, calls: &Value) -> Option<Vec<Value>> {
    let Ok(python) = std::env::var("APPL_OPENAI_PYTHON") else {
        eprintln!(
            "APPL_OPENAI_PYTHON is not set: the openai SDK itself was not run (scripts/test.sh \
             sets it)"
        );
        return None;
    };
    let dir = d.state_dir();
    let mut cfg = json!({
        "base_url": format!("https://localhost:{}/v1", d.openai.expect("http api").port()),
        "api_key": key,
        "ca": dir.join("ca.crt"),
        "calls": calls,
    });
    if client_cert {
        let (cert, key) = d.client_cert("e2e-inference").write(dir, "sdk-client");
        cfg["cert"] = json!(cert);
        cfg["key"] = json!(key);
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/e2e/openai_client.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .expect("run the openai SDK script");
    assert!(
        out.status.success(),
        "the SDK script failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect(),
    )
}

/// Chat and completion, whole and streamed, through the official SDK over TLS with an API key
/// (and once with a client certificate): the streamed text and usage equal the whole answer's,
/// and both equal gRPC's for the same greedy request. The audit records say `api = openai`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_chats_and_completes_like_grpc() {
    let d = start(2, false);
    let prompt = "The three primary colours are";
    let chat = [json!({"role": "user", "content": "Name a colour."})];
    let common = json!({"model": MODEL, "temperature": 0, "max_tokens": 12});
    let with = |extra: Value| {
        let mut a = common.clone();
        for (k, v) in extra.as_object().expect("object") {
            a[k] = v.clone();
        }
        a
    };
    let calls = json!([
        {"endpoint": "completion", "args": with(json!({"prompt": prompt}))},
        {"endpoint": "completion", "stream": true,
         "args": with(json!({"prompt": prompt, "stream_options": {"include_usage": true}}))},
        {"endpoint": "chat", "args": with(json!({"messages": chat}))},
        {"endpoint": "chat", "stream": true,
         "args": with(json!({"messages": chat, "stream_options": {"include_usage": true}}))},
    ]);
    let Some(out) = sdk(&d, Some(KEY), false, &calls) else {
        return;
    };
    let (completion, completion_s, chat_r, chat_s) = (&out[0], &out[1], &out[2], &out[3]);
    assert_eq!(out[4]["models"], json!([MODEL]));
    for (whole, streamed, object) in [
        (completion, completion_s, "text_completion"),
        (chat_r, chat_s, "chat.completion"),
    ] {
        assert_eq!(whole["object"], object, "{whole}");
        assert_eq!(whole["model"], MODEL);
        assert_eq!(whole["text"], streamed["text"], "{whole} vs {streamed}");
        assert_eq!(whole["finish_reason"], streamed["finish_reason"]);
        assert_eq!(whole["usage"], streamed["usage"], "{whole} vs {streamed}");
        assert!(streamed["chunks"].as_u64().unwrap_or(0) > 2, "{streamed}");
        assert_eq!(
            streamed["ids"].as_array().map(Vec::len),
            Some(1),
            "one id per stream"
        );
        assert_eq!(
            whole["usage"]["total_tokens"].as_u64(),
            Some(
                whole["usage"]["prompt_tokens"].as_u64().unwrap_or(0)
                    + whole["usage"]["completion_tokens"].as_u64().unwrap_or(0)
            )
        );
    }

    // The same greedy requests over gRPC give the same text and usage.
    let mut c = d.inference().await;
    let g = c
        .generate(greedy(prompt, 12))
        .await
        .expect("gRPC generate")
        .into_inner();
    let gc = c
        .chat(pb::ChatRequest {
            model: MODEL.into(),
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Name a colour.".into(),
            }],
            sampling: Some(pb::SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            }),
            max_tokens: Some(12),
            ..Default::default()
        })
        .await
        .expect("gRPC chat")
        .into_inner();
    for (http, grpc) in [(completion, &g), (chat_r, &gc)] {
        let u = grpc.usage.expect("usage");
        assert_eq!(http["text"], grpc.text.as_str());
        assert_eq!(http["usage"]["prompt_tokens"], u.prompt_tokens);
        assert_eq!(http["usage"]["completion_tokens"], u.completion_tokens);
        let reason = if grpc.finish_reason == pb::FinishReason::Length as i32 {
            "length"
        } else {
            "stop"
        };
        assert_eq!(http["finish_reason"], reason);
    }

    // A client certificate identifies the caller too, without a key.
    let by_cert = sdk(
        &d,
        None,
        true,
        &json!([{"endpoint": "completion", "args": with(json!({"prompt": prompt}))}]),
    )
    .expect("the SDK ran above");
    assert_eq!(by_cert[0]["text"], completion["text"]);

    // The audit log says which API each request came through.
    let records = audit_tail(&d).await;
    let openai: Vec<&Value> = records
        .iter()
        .filter(|r| r["api"] == "openai" && r["phase"] == "completed")
        .collect();
    assert_eq!(openai.len(), 5, "five HTTP requests completed: {records:?}");
    assert!(openai.iter().all(|r| r["status"] == 0), "{openai:?}");
    let actors: Vec<&str> = openai.iter().filter_map(|r| r["actor"].as_str()).collect();
    assert_eq!(
        actors.iter().filter(|a| **a == "key:sdk").count(),
        4,
        "{actors:?}"
    );
    assert!(actors.contains(&"cert:e2e-inference"), "{actors:?}");
    assert!(openai.iter().any(|r| r["action"] == "inference.chat"));
    let grpc = records
        .iter()
        .filter(|r| r["api"] == "grpc" && r["phase"] == "completed")
        .count();
    assert_eq!(grpc, 2, "{records:?}");
}

/// The newest audit records, as JSON.
async fn audit_tail(d: &Daemon) -> Vec<Value> {
    let mut a = pb::audit_client::AuditClient::new(d.channel().await);
    let out = a
        .tail(pb::TailRequest { n: 200 })
        .await
        .expect("Audit.Tail")
        .into_inner();
    out.records
        .iter()
        .map(|r| serde_json::from_str(r).expect("record JSON"))
        .collect()
}

/// What is refused, at which path, with which key and body; the status and `param` expected.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Vec<u8>,
    u16,
    Option<&'a str>,
);

/// Every refusal has its status and OpenAI's error shape, `param` naming the field where one is
/// at fault, and `Retry-After` on a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_openai_shape() {
    let d = start(2, true);
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let k = Some(KEY);
    let cases: Vec<Case<'_>> = vec![
        (
            "temperature -1",
            cmpl,
            k,
            br#"{"prompt":"x","temperature":-1}"#.to_vec(),
            400,
            Some("temperature"),
        ),
        (
            "top_p 7",
            cmpl,
            k,
            br#"{"prompt":"x","top_p":7}"#.to_vec(),
            400,
            Some("top_p"),
        ),
        (
            "empty prompt",
            cmpl,
            k,
            br#"{"prompt":""}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "prompt array",
            cmpl,
            k,
            br#"{"prompt":["a","b"]}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "token prompt",
            cmpl,
            k,
            br#"{"prompt":[1,2]}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "n = 2",
            chat,
            k,
            br#"{"messages":[{"role":"user","content":"x"}],"n":2}"#.to_vec(),
            400,
            Some("n"),
        ),
        (
            "no messages",
            chat,
            k,
            br#"{"messages":[]}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "bad role",
            chat,
            k,
            br#"{"messages":[{"role":"robot","content":"x"}]}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "max_tokens over the cap",
            cmpl,
            k,
            br#"{"prompt":"x","max_tokens":100000}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens 0",
            cmpl,
            k,
            br#"{"prompt":"x","max_tokens":0}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "stop not strings",
            cmpl,
            k,
            br#"{"prompt":"x","stop":[1]}"#.to_vec(),
            400,
            Some("stop"),
        ),
        (
            "malformed body",
            cmpl,
            k,
            br#"{"prompt":"#.to_vec(),
            400,
            None,
        ),
        (
            "invalid UTF-8",
            cmpl,
            k,
            b"{\"prompt\":\"\xff\xfe\"}".to_vec(),
            400,
            None,
        ),
        ("not an object", cmpl, k, b"[]".to_vec(), 400, None),
        (
            "unknown model",
            cmpl,
            k,
            br#"{"model":"nope","prompt":"x"}"#.to_vec(),
            404,
            Some("model"),
        ),
        (
            "no key",
            cmpl,
            None,
            br#"{"prompt":"x"}"#.to_vec(),
            401,
            None,
        ),
        (
            "unknown key",
            cmpl,
            Some("appl_e2e_unknown_key_000000000000000000000"),
            br#"{"prompt":"x"}"#.to_vec(),
            401,
            None,
        ),
        (
            "operator key",
            cmpl,
            Some(OPERATOR_KEY),
            br#"{"prompt":"x"}"#.to_vec(),
            403,
            None,
        ),
        (
            "unknown path",
            "/v1/embeddings",
            k,
            b"{}".to_vec(),
            404,
            None,
        ),
    ];
    for (what, path, key, body, status, param) in cases {
        let r = send(&d, "POST", path, key, &body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let e = &r.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {e}"
        );
        assert!(
            e["type"].is_string() && e["code"].is_string(),
            "{what}: {e}"
        );
        assert_eq!(e["param"].as_str(), param, "{what}: {e}");
    }

    // A body over limits.max_message_bytes is refused from its declared length: 413.
    let mut io = http_client::connect(&d).await;
    let big = 5 << 20;
    let head = format!(
        "POST {cmpl} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(head.as_bytes()).await.expect("send head");
    let mut buf = vec![0u8; 4096];
    let n = io.read(&mut buf).await.expect("read the refusal");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("limits.max_message_bytes"), "{text}");
    assert!(
        text.contains("\"type\":\"invalid_request_error\""),
        "{text}"
    );

    // The ward tenant may run one request at a time: a second one is 429 with Retry-After.
    let long = json!({"prompt": "Write a very long story about a dragon.", "max_tokens": 400,
                      "temperature": 0, "stream": true});
    let (held, _) = stream_until(&d, cmpl, Some(WARD_KEY), long.to_string().as_bytes(), |t| {
        t.matches("data: ").count() >= 2
    })
    .await;
    let r = send(
        &d,
        "POST",
        cmpl,
        Some(WARD_KEY),
        br#"{"prompt":"x","max_tokens":2}"#,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(secs >= 1);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    drop(held);

    // Metrics ride this listener too (openai.metrics), open like health.
    let m = send(&d, "GET", "/metrics", None, b"").await;
    assert_eq!(m.status, 200, "{}", m.text());
    assert!(m.text().contains("appl_busy_slots"), "{}", m.text());

    // Health is open to anyone; the model list needs the inference role.
    let h = send(&d, "GET", "/health", None, b"").await;
    assert_eq!(
        (h.status, h.json()["status"].clone()),
        (200, json!("serving"))
    );
    assert_eq!(send(&d, "GET", "/v1/models", None, b"").await.status, 401);
    let m = send(&d, "GET", "/v1/models", k, b"").await;
    assert_eq!(m.json()["data"][0]["id"], MODEL);

    // Refused callers are on record as auth.denied, through the HTTP API.
    let denied = audit_tail(&d)
        .await
        .into_iter()
        .filter(|r| r["action"] == "auth.denied" && r["api"] == "openai")
        .count();
    assert!(
        denied >= 3,
        "no key, unknown key, operator key, models without a key"
    );
}

/// A client that drops its stream mid-way frees its slot within a step, as on gRPC; and a
/// stream in flight when SIGTERM comes finishes with `data: [DONE]` while the drain waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_http_stream_frees_its_slot_and_drain_lets_streams_finish() {
    let mut d = start(1, true);
    let body = json!({"model": MODEL, "prompt": "Write a very long story about a dragon.",
                      "max_tokens": 400, "temperature": 0, "stream": true});
    let (conn, seen) = stream_until(
        &d,
        "/v1/completions",
        Some(KEY),
        body.to_string().as_bytes(),
        |t| t.matches("data: ").count() >= 3,
    )
    .await;
    assert!(seen.contains("text/event-stream"), "{seen}");
    let st = d.engine_status().await;
    assert_eq!(st.busy_slots, 1);
    drop(conn);
    let dropped = Instant::now();
    let mut steps_at_drop = st.steps;
    loop {
        let st = d.engine_status().await;
        if st.busy_slots == 0 {
            assert!(
                st.tokens_generated < 400,
                "generation stopped early: {st:?}"
            );
            break;
        }
        steps_at_drop = steps_at_drop.max(st.steps.saturating_sub(1));
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "the slot is still busy {:?} after the client went away ({st:?})",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The request is recorded as cancelled, through the HTTP API.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = audit_tail(&d).await;
        let done = recs.iter().find(|r| {
            r["api"] == "openai" && r["phase"] == "completed" && r["reason"] == "client_gone"
        });
        if let Some(r) = done {
            assert_eq!(r["status"], 1, "CANCELLED: {r}");
            break;
        }
        assert!(Instant::now() < give_up, "no cancelled record: {recs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Drain: a stream in flight finishes whole; the listener takes no new connections.
    let short = json!({"model": MODEL, "prompt": "Count to five:", "max_tokens": 24,
                       "temperature": 0, "stream": true});
    let (mut conn, mut seen) = stream_until(
        &d,
        "/v1/completions",
        Some(KEY),
        short.to_string().as_bytes(),
        |t| t.matches("data: ").count() >= 1,
    )
    .await;
    let pid = d.pid();
    let finisher = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
        seen.push_str(&String::from_utf8_lossy(&rest));
        seen
    });
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent);
    let all = finisher.await.expect("reader");
    assert!(all.contains("data: [DONE]"), "the stream finished: {all}");
    assert_eq!(d.terminate(), Some(0));
}

/// LiteLLM (PyPI `litellm`, `APPL_LITELLM_PYTHON`) routes a chat completion to appl as an
/// OpenAI-compatible backend with an API key; the answer equals the SDK's and gRPC's greedy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellm_routes_a_completion_to_appl() {
    let Ok(python) = std::env::var("APPL_LITELLM_PYTHON") else {
        eprintln!("APPL_LITELLM_PYTHON is not set: LiteLLM was not run (scripts/test.sh sets it)");
        return;
    };
    let d = start(1, false);
    let cfg = json!({
        "base_url": format!("https://localhost:{}/v1", d.openai.expect("http api").port()),
        "api_key": KEY,
        "ca": d.state_dir().join("ca.crt"),
        "model": MODEL,
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/e2e/litellm_route.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .expect("run the LiteLLM script");
    assert!(
        out.status.success(),
        "LiteLLM failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let want = d
        .inference()
        .await
        .chat(pb::ChatRequest {
            model: MODEL.into(),
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Name a colour.".into(),
            }],
            sampling: Some(pb::SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            }),
            max_tokens: Some(12),
            ..Default::default()
        })
        .await
        .expect("gRPC chat")
        .into_inner();
    assert_eq!(got["text"], want.text.as_str(), "{got}");
    let u = want.usage.expect("usage");
    assert_eq!(got["usage"]["prompt_tokens"], u.prompt_tokens);
    assert_eq!(got["usage"]["completion_tokens"], u.completion_tokens);
    let keyed = audit_tail(&d)
        .await
        .into_iter()
        .filter(|r| r["api"] == "openai" && r["actor"] == "key:sdk" && r["phase"] == "completed")
        .count();
    assert_eq!(keyed, 1, "the routed request is on record under its key");
}
