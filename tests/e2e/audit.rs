//! The HIPAA audit log, end to end: crash safety under `kill -9`, fail-closed on a full disk,
//! and no prompt text anywhere on disk or in the logs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appl_audit::{Action, Phase, StoreReader, StoredRecord, VerifyingKey};
use appl_proto::v1 as pb;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::{greedy, Daemon, Opts};

/// What a stopped daemon's store holds, after it verified.
pub(crate) struct Store {
    key: VerifyingKey,
    pub(crate) records: Vec<StoredRecord>,
    checkpoint_sizes: Vec<u64>,
}

/// Opens a stopped daemon's store, verifies all of it (signatures, hashes, order, roots) and
/// reads every record.
pub(crate) fn read_verified(dir: &Path) -> Store {
    let reader = StoreReader::open(dir).expect("open the stopped daemon's audit store");
    let key = reader.public_key().expect("the store's public key");
    let report = appl_audit::verify_store(&reader, &key).expect("verify the store");
    assert!(report.ok, "the audit store does not verify: {report}");
    let records = reader.tail(usize::MAX).expect("read the records");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.record.seq, i as u64, "records are gap-free from seq 0");
    }
    let checkpoint_sizes = reader
        .checkpoints()
        .expect("read the checkpoints")
        .iter()
        .map(|c| c.size)
        .collect();
    Store {
        key,
        records,
        checkpoint_sizes,
    }
}

fn id_of(r: &StoredRecord) -> Option<&str> {
    r.record.request_id.as_ref().map(|i| i.as_str())
}

/// Checks that every acknowledged request (id → completion tokens the client was told) has
/// a durable admitted record followed by a completed record with status OK and the same count.
fn check_acknowledged(store: &Store, acked: &BTreeMap<String, u32>) {
    let mut admitted = BTreeMap::new();
    let mut completed = BTreeMap::new();
    for r in &store.records {
        if let Some(id) = id_of(r) {
            match r.record.phase {
                Phase::Admitted => admitted.insert(id.to_owned(), r),
                Phase::Completed => completed.insert(id.to_owned(), r),
                Phase::Event => None,
            };
        }
    }
    for (id, tokens) in acked {
        let Some(c) = completed.get(id) else {
            panic!(
                "ACKNOWLEDGED RECORD LOST: request {id} got its final message, but the store \
                 has no completed record for it ({} records)",
                store.records.len()
            );
        };
        let a = admitted
            .get(id)
            .unwrap_or_else(|| panic!("request {id} has no admitted record"));
        assert!(
            a.record.seq < c.record.seq,
            "admitted before completed: {id}"
        );
        assert_eq!(c.record.status, Some(0), "request {id}: {:?}", c.record);
        assert_eq!(
            c.record.completion_tokens,
            Some(*tokens),
            "request {id}: the completed record's token count is the one the client got"
        );
        assert!(a.record.prompt_hmac.is_some() && a.record.model_sha256.is_some());
        assert!(c.record.latency_us.is_some());
    }
}

/// One request of the kind `k`; returns (request id, completion tokens) once the client holds
/// the final message.
async fn one_request(
    c: &mut pb::inference_client::InferenceClient<Channel>,
    k: usize,
    done: &Mutex<BTreeMap<String, u32>>,
) -> Result<(), tonic::Status> {
    let max = 2 + (k % 3) as u32;
    let chat = || pb::ChatRequest {
        model: String::new(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }],
        sampling: greedy("", 1).sampling,
        max_tokens: Some(max),
        ..Default::default()
    };
    let ack = |id: String, n: u32| {
        done.lock().expect("lock").insert(id, n);
    };
    match k % 4 {
        0 => {
            let r = c.generate(greedy("Count:", max)).await?.into_inner();
            ack(r.request_id, r.usage.map_or(0, |u| u.completion_tokens));
        }
        1 => {
            let mut s = c
                .generate_stream(greedy("Once upon", max))
                .await?
                .into_inner();
            while let Some(m) = s.next().await {
                let m = m?;
                if m.finish_reason != 0 {
                    ack(m.request_id, m.usage.map_or(0, |u| u.completion_tokens));
                }
            }
        }
        2 => {
            let r = c.chat(chat()).await?.into_inner();
            ack(r.request_id, r.usage.map_or(0, |u| u.completion_tokens));
        }
        _ => {
            let mut s = c.chat_stream(chat()).await?.into_inner();
            while let Some(m) = s.next().await {
                let m = m?;
                if m.finish_reason != 0 {
                    ack(m.request_id, m.usage.map_or(0, |u| u.completion_tokens));
                }
            }
        }
    }
    Ok(())
}

/// A small deterministic generator for kill delays (no rand dependency).
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// `kill -9` of the real daemon while 8 clients generate, again and again. After each kill:
/// the whole store verifies, every request whose client got its final message has its
/// completed record, every record seen after an earlier kill is still there unchanged, and
/// the next start's checkpoint covers everything the crashed daemon left.
///
/// `APPL_AUDIT_CRASH_ITERATIONS` changes the number of kills (default 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_audit_record() {
    let iterations: usize = std::env::var("APPL_AUDIT_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let state = tempfile::tempdir().expect("tempdir");
    let audit_dir = state.path().join("audit");
    let opts = Opts {
        audit_dir: Some(audit_dir.clone()),
        slots: 8,
        ..Opts::default()
    };
    let started = Instant::now();
    let mut rng = 0x5eed_u64;
    let mut acked: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen: Vec<[u8; 32]> = Vec::new();
    let mut key: Option<VerifyingKey> = None;
    let mut in_flight_at_kill = 0usize;
    let mut kills_with_work_in_flight = 0usize;
    let (mut t_start, mut t_first, mut t_verify) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..iterations {
        let t0 = Instant::now();
        let d = tokio::task::spawn_blocking({
            let o = opts.clone();
            move || Daemon::start_with(o)
        })
        .await
        .expect("start the daemon");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(BTreeMap::new()));
        let mut clients = Vec::new();
        for c in 0..8 {
            let mut client = d.inference().await;
            let (stop, done) = (stop.clone(), done.clone());
            clients.push(tokio::spawn(async move {
                let mut k = c;
                while !stop.load(Ordering::Relaxed) {
                    if one_request(&mut client, k, &done).await.is_err() {
                        break;
                    }
                    k += 8;
                }
            }));
        }
        // Let some requests finish and others be mid-flight, then crash: at a random moment
        // after the first answer (or after 4 s without one).
        t_start += t0.elapsed();
        let t1 = Instant::now();
        let first = Instant::now() + Duration::from_secs(4);
        while done.lock().expect("lock").is_empty() && Instant::now() < first {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t_first += t1.elapsed();
        let delay = lcg(&mut rng) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        tokio::task::spawn_blocking(move || d.kill9())
            .await
            .expect("kill -9");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .expect("clients notice the dead daemon")
                .expect("client task");
        }
        acked.extend(std::mem::take(&mut *done.lock().expect("lock")));

        let before = seen.len();
        let t2 = Instant::now();
        let store = tokio::task::spawn_blocking({
            let dir = audit_dir.clone();
            move || read_verified(&dir)
        })
        .await
        .expect("verify");
        t_verify += t2.elapsed();
        // The signing key never changes.
        assert_eq!(*key.get_or_insert(store.key), store.key, "iteration {i}");
        // Nothing seen after an earlier kill vanished or changed: the chain continues.
        assert!(
            store.records.len() >= before,
            "ACKNOWLEDGED RECORDS LOST: iteration {i}: the store shrank from {before} to {} records",
            store.records.len()
        );
        for (seq, leaf) in seen.iter().enumerate() {
            assert_eq!(
                store.records[seq].leaf, *leaf,
                "iteration {i}: record {seq} changed after a crash"
            );
        }
        seen = store.records.iter().map(|r| r.leaf).collect();
        // This run opened the log with a checkpoint over everything the last crash left.
        if i > 0 {
            assert!(
                store.checkpoint_sizes.contains(&(before as u64)),
                "iteration {i}: no checkpoint at the size the previous crash left ({before}); \
                 checkpoints: {:?}",
                store.checkpoint_sizes
            );
        }
        let starts = store
            .records
            .iter()
            .filter(|r| r.record.action == Action::DaemonStart)
            .count();
        assert_eq!(starts, i + 1, "one daemon.start per run");
        // Every acknowledged request, of this run and all earlier ones, is on disk.
        check_acknowledged(&store, &acked);
        // Requests admitted in this run that never completed were in flight at the kill.
        let run = &store.records[before..];
        let completed: HashSet<&str> = run
            .iter()
            .filter(|r| r.record.phase == Phase::Completed)
            .filter_map(id_of)
            .collect();
        let open = run
            .iter()
            .filter(|r| r.record.phase == Phase::Admitted)
            .filter_map(id_of)
            .filter(|id| !completed.contains(id))
            .count();
        in_flight_at_kill += open;
        kills_with_work_in_flight += usize::from(open > 0);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "audit crash test: {iterations} kills in {:.1} s, {} acknowledged requests all found, \
         {} records verified, {in_flight_at_kill} requests in flight at a kill \
         ({kills_with_work_in_flight} kills hit work in flight); time: starts {:.1} s, \
         to first answer {:.1} s, verification {:.1} s",
        elapsed.as_secs_f64(),
        acked.len(),
        seen.len(),
        t_start.as_secs_f64(),
        t_first.as_secs_f64(),
        t_verify.as_secs_f64(),
    );
    assert!(
        acked.len() >= iterations,
        "the clients got too few answers ({}) for the test to mean much",
        acked.len()
    );
    assert!(
        kills_with_work_in_flight >= iterations / 2,
        "most kills should hit requests in flight ({kills_with_work_in_flight} of {iterations} did)"
    );
}

/// Stops the daemon with SIGTERM once the client's connection is closed (a graceful stop
/// waits for open connections), without blocking the runtime the connection runs on.
async fn stop(
    d: Daemon,
    c: pb::inference_client::InferenceClient<Channel>,
) -> (Daemon, Option<i32>) {
    drop(c);
    tokio::task::spawn_blocking(move || {
        let mut d = d;
        let code = d.terminate();
        (d, code)
    })
    .await
    .expect("terminate")
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with a file of zeros until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).expect("create the filler");
    let block = vec![0u8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    // Smaller pieces, down to single bytes, so that not even a page is left.
    for size in [4096usize, 512, 1] {
        while f.write(&block[..size]).is_ok_and(|n| n > 0) {}
    }
    let _ = f.sync_all();
    p
}

async fn health(ch: Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
}

async fn wait_for_health(d: &Daemon, want: ServingStatus, within: Duration) {
    let give_up = Instant::now() + within;
    loop {
        let all = health(d.channel().await, "").await == want
            && health(d.channel().await, "appl.v1.Inference").await == want;
        if all {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "health did not become {want:?} within {within:?}; log:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit store's file system fills up while the daemon runs: inference is refused with
/// UNAVAILABLE naming the audit log, health goes NOT_SERVING, status shows why. Space comes
/// back: the daemon serves again by itself, and no acknowledged record was lost.
///
/// Needs root (it mounts a tmpfs); `APPL_TEST_NO_MOUNT=1` skips it where that is impossible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_fails_closed_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("audit-fs");
    let _fs = match Tmpfs::mount(&mnt, "16m") {
        Ok(fs) => fs,
        Err(e) if std::env::var_os("APPL_TEST_NO_MOUNT").is_some() => {
            eprintln!("skipped (APPL_TEST_NO_MOUNT): cannot mount a tmpfs: {e}");
            return;
        }
        Err(e) => panic!(
            "this test mounts a 16 MiB tmpfs and needs root; mount failed: {e} \
             (set APPL_TEST_NO_MOUNT=1 to skip it)"
        ),
    };
    let audit_dir = mnt.join("audit");
    let d = Daemon::start_with(Opts {
        audit_dir: Some(audit_dir.clone()),
        // The OpenAI-compatible API too, with an API key: it fails closed the same way.
        tls_extra: "client_certs = \"optional\"".into(),
        extra_config: crate::openai::http_config(),
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let mut acked = BTreeMap::new();
    let mut ask = |r: pb::GenerateResponse| {
        acked.insert(r.request_id, r.usage.map_or(0, |u| u.completion_tokens));
    };
    ask(c
        .generate(greedy("Hello", 2))
        .await
        .expect("serving before the disk fills")
        .into_inner());
    wait_for_health(&d, ServingStatus::Serving, Duration::from_secs(1)).await;

    let filler = fill(&mnt);
    // Appends may still fit in a page sled already has; soon one needs a new one and fails.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut served_while_full = 0;
    let refusal = loop {
        match c.generate(greedy("Hello", 2)).await {
            Ok(r) => {
                served_while_full += 1;
                ask(r.into_inner())
            }
            Err(s) => break s,
        }
        assert!(
            Instant::now() < give_up,
            "the daemon kept serving with a full audit disk; log:\n{}",
            d.log_text()
        );
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("audit log cannot write"),
        "the refusal says why: {}",
        refusal.message()
    );
    wait_for_health(&d, ServingStatus::NotServing, Duration::from_secs(5)).await;
    // Every inference call is refused while the disk is full, streaming included.
    let e = c.generate(greedy("Hello", 2)).await.expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c
        .generate_stream(greedy("Hello", 2))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The HTTP API answers 503, OpenAI-shaped, and its health says so.
    let r = crate::http_client::send(
        &d,
        "POST",
        "/v1/completions",
        Some(crate::openai::KEY),
        br#"{"prompt":"Hello","max_tokens":2}"#,
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "audit_unavailable",
        "{}",
        r.text()
    );
    let h = crate::http_client::send(&d, "GET", "/health", None, b"").await;
    assert_eq!(h.status, 503, "{}", h.text());
    let status = d
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("Admin.Status works while inference is refused")
        .into_inner();
    assert_eq!(status.audit_state, "failed");
    assert!(!status.audit_reason.is_empty());
    assert!(
        d.log_text().contains("the audit log cannot write"),
        "the log says why"
    );

    // Space returns: the daemon recovers by itself (it retries every second).
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    wait_for_health(&d, ServingStatus::Serving, Duration::from_secs(15)).await;
    eprintln!(
        "fail-closed: {served_while_full} requests fit after the disk filled; then refused: \
         {:?}; status reason: {:?}; serving again {:.2} s after space returned",
        refusal.message(),
        status.audit_reason,
        freed.elapsed().as_secs_f64()
    );
    ask(c
        .generate(greedy("Hello", 2))
        .await
        .expect("serving again")
        .into_inner());
    let status = d
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("Admin.Status")
        .into_inner();
    assert_eq!(status.audit_state, "serving");
    assert!(status.audit_records > 0);

    let (_d, code) = stop(d, c).await;
    assert_eq!(code, Some(0), "a clean stop");
    let store = read_verified(&audit_dir);
    check_acknowledged(&store, &acked);
    let last = store.records.last().expect("records");
    assert_eq!(last.record.action, Action::DaemonStop);
    assert_eq!(
        store.checkpoint_sizes.last().copied(),
        Some(store.records.len() as u64),
        "the stop signed a checkpoint over every record"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .expect("read_dir")
            .map_while(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Prompts carrying a unique marker go through every inference call (and a refused one). The
/// marker appears in no file under the daemon's state directory, sled's files included, and in
/// no log line; the records carry an HMAC of the prompt that the appliance's key reproduces.
#[tokio::test]
async fn no_prompt_text_reaches_the_audit_store_or_the_logs() {
    let d = Daemon::start_with(Opts {
        extra_config: "[[tenants]]\nname = \"clinic-a\"\n".into(),
        ..Opts::default()
    });
    let state_dir = d.state_dir().to_owned();
    let audit_dir = state_dir.join("audit");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos())
        ^ u128::from(std::process::id());
    let marker = format!("PHIMARK{nonce:x}");
    let prompt = format!("Patient {marker} reports chest pain.");
    let chat = |stream_tag: &str| pb::ChatRequest {
        model: String::new(),
        messages: vec![
            pb::ChatMessage {
                role: "system".into(),
                content: format!("Notes for {marker}"),
            },
            pb::ChatMessage {
                role: "user".into(),
                content: format!("{prompt} {stream_tag}"),
            },
        ],
        sampling: greedy("", 1).sampling,
        max_tokens: Some(3),
        ..Default::default()
    };
    let mut c = d.inference().await;
    let mut ids = Vec::new();
    let mut tenant_req = tonic::Request::new(greedy(&prompt, 3));
    tenant_req
        .metadata_mut()
        .insert("x-appl-tenant", "clinic-a".parse().expect("ascii"));
    let tenant_id = c
        .generate(tenant_req)
        .await
        .expect("generate")
        .into_inner()
        .request_id;
    ids.push(tenant_id.clone());
    let mut s = c
        .generate_stream(greedy(&prompt, 3))
        .await
        .expect("stream")
        .into_inner();
    while let Some(m) = s.next().await {
        let m = m.expect("chunk");
        if m.finish_reason != 0 {
            ids.push(m.request_id);
        }
    }
    ids.push(
        c.chat(chat("a"))
            .await
            .expect("chat")
            .into_inner()
            .request_id,
    );
    let mut s = c.chat_stream(chat("b")).await.expect("chat").into_inner();
    while let Some(m) = s.next().await {
        let m = m.expect("chunk");
        if m.finish_reason != 0 {
            ids.push(m.request_id);
        }
    }
    c.tokenize(pb::TokenizeRequest {
        model: String::new(),
        input: Some(pb::tokenize_request::Input::Prompt(prompt.clone())),
    })
    .await
    .expect("tokenize");
    // Refused requests carry the marker too: their errors must not echo it.
    let mut bad = greedy(&prompt, 0);
    bad.stop = vec![marker.clone()];
    let e = c.generate(bad).await.expect_err("max_tokens 0");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(!e.message().contains(&marker), "{}", e.message());
    let mut bad_tenant = tonic::Request::new(greedy(&prompt, 3));
    bad_tenant
        .metadata_mut()
        .insert("x-appl-tenant", "no spaces allowed".parse().expect("ascii"));
    let e = c.generate(bad_tenant).await.expect_err("bad tenant");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("x-appl-tenant"), "{}", e.message());

    // ListModels shows the GGUF's SHA-256, which the records carry.
    let models = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list models")
        .into_inner()
        .models;
    let sha = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(crate::harness::model_path()).expect("model");
        std::io::copy(&mut f, &mut h).expect("hash the model");
        hex::encode(h.finalize())
    };
    assert_eq!(models[0].sha256, sha);

    let logs = d.logs.clone();
    let (_d, code) = stop(d, c).await;
    assert_eq!(code, Some(0), "a clean stop");
    let log_text = logs.lock().expect("log lock").join("\n");

    // The marker is nowhere under the state directory: not in sled's files, keys, checkpoints.
    let files = files_under(&state_dir);
    assert!(
        files.iter().any(|f| f.starts_with(audit_dir.join("db"))),
        "sled's files are among those searched: {files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "prompt text found in {}",
            f.display()
        );
        assert!(!f.to_string_lossy().contains(&marker));
    }
    // The search itself works: the marker is found where it is.
    assert!(contains(prompt.as_bytes(), marker.as_bytes()));
    assert!(!log_text.is_empty());
    assert!(!log_text.contains(&marker), "prompt text found in the logs");

    let store = read_verified(&audit_dir);
    let acked: BTreeMap<String, u32> = store
        .records
        .iter()
        .filter(|r| r.record.phase == Phase::Completed)
        .filter_map(|r| Some((id_of(r)?.to_owned(), r.record.completion_tokens?)))
        .filter(|(id, _)| ids.contains(id))
        .collect();
    assert_eq!(
        acked.len(),
        ids.len(),
        "every request has its completed record"
    );
    check_acknowledged(&store, &acked);
    let tenant_rec = store
        .records
        .iter()
        .find(|r| id_of(r) == Some(tenant_id.as_str()))
        .expect("the tenant's request");
    // The actor is the verified identity (root on the Unix socket, a gateway), the tenant the
    // one it named.
    assert_eq!(tenant_rec.record.actor.as_str(), "uid:0");
    assert_eq!(
        tenant_rec.record.tenant.as_ref().map(|t| t.as_str()),
        Some("clinic-a")
    );
    assert!(tenant_rec
        .record
        .roles
        .as_ref()
        .is_some_and(|r| r.as_str().contains("gateway")));
    assert_eq!(
        tenant_rec.record.model_sha256.map(|d| hex::encode(d.0)),
        Some(sha.clone())
    );
    assert!(store
        .records
        .iter()
        .any(|r| r.record.action == Action::InferenceTokenize));
    assert!(store
        .records
        .iter()
        .any(|r| r.record.action == Action::ModelLoad
            && r.record.model_sha256.map(|d| hex::encode(d.0)) == Some(sha.clone())));
    assert_eq!(
        store.records.last().map(|r| r.record.action.clone()),
        Some(Action::DaemonStop)
    );
    // The appliance's key reproduces the prompt's HMAC (correlation without the text).
    let log = appl_audit::AuditLog::open(&audit_dir, appl_audit::AuditConfig::default())
        .expect("open the stopped store");
    let want = log.prompt_hmac(prompt.as_bytes());
    assert_eq!(tenant_rec.record.prompt_hmac, Some(want));
}
