//! Models managed at run time through `appl.v1.Admin`: a model is loaded and unloaded while
//! another serves streams that all complete; a reload loads the new version beside the old one
//! when both fit, and drains the old one first when they do not; requests in flight always
//! finish; a file that changed since it was verified is refused; every action is audited with
//! its caller and the file's SHA-256.

use std::path::Path;

use appl_audit::{Action, Phase, Role};
use appl_firmware_profiles::gguf::GgufInfo;
use appl_firmware_profiles::inventory::Inventory;
use appl_firmware_profiles::sizing::{self, DeviceRef, GpuLayers, ModelSettings};
use appl_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::audit::read_verified;
use crate::harness::{greedy, model_path, Daemon, Opts};
use crate::ops_common::{health, model_state, sha256_hex, status, wait_status};

const DEFAULT: &str = "gemma-3-270m";

fn on(model: &str, prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        ..greedy(prompt, max_tokens)
    }
}

/// Reads a stream to its end: the finish reason and the tokens it carried.
async fn drain_stream(
    mut s: tonic::Streaming<pb::GenerateChunk>,
    mut tokens: usize,
) -> (i32, usize) {
    let mut reason = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("the stream ends with a final message, not an error");
        tokens += chunk.token_ids.len();
        if chunk.finish_reason != 0 {
            reason = chunk.finish_reason;
        }
    }
    (reason, tokens)
}

fn finished_normally(reason: i32) -> bool {
    reason == pb::FinishReason::Length as i32 || reason == pb::FinishReason::Stop as i32
}

/// A stream whose request stays in flight until the test reads it: the daemon cannot deliver
/// its last pieces (and release the model) while nobody reads.
async fn held_stream(d: &Daemon, model: &str) -> (tonic::Streaming<pb::GenerateChunk>, usize) {
    let mut s = d
        .inference()
        .await
        .generate_stream(on(model, "Once upon a time, in a quiet village,", 64))
        .await
        .expect("stream starts")
        .into_inner();
    let first = s
        .next()
        .await
        .expect("a first chunk")
        .expect("the first chunk is not an error");
    (s, first.token_ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_loaded_and_unloaded_while_another_serves_streams_that_all_complete() {
    let model = model_path();
    let mut d = Daemon::start_with(Opts {
        extra_config: format!(
            "[[models]]\nid = \"second\"\npath = \"{}\"\nslots = 2\nctx_per_slot = 256\n\
             batch_tokens = 64\nthreads = 1\nchat_template = \"gemma\"\nautoload = false\n",
            model.display()
        ),
        ..Opts::default()
    });
    let mut c = d.inference().await;
    let err = c
        .generate(on("second", "Hello", 4))
        .await
        .expect_err("not loaded yet");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Four streams on the default model run through everything that follows.
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let s = c
                    .generate_stream(greedy(&format!("Story number {i}:"), 96))
                    .await
                    .expect("stream starts")
                    .into_inner();
                drain_stream(s, 0).await
            })
        })
        .collect();

    let op = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "second".into(),
        })
        .await
        .expect("LoadModel")
        .into_inner();
    assert_eq!(op.outcome, "loaded");
    let sha = sha256_hex(&model);
    assert_eq!(op.sha256, sha);
    assert_eq!(
        health(&d, "appl.v1.Model/second").await,
        ServingStatus::Serving
    );
    let again = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "second".into(),
        })
        .await
        .expect_err("already loaded");
    assert_eq!(again.code(), Code::AlreadyExists);
    let r = c
        .generate(on("second", "Hello", 4))
        .await
        .expect("the loaded model serves")
        .into_inner();
    assert_eq!(r.model, "second");

    // Unload it while one of its requests is in flight.
    let (held, got) = held_stream(&d, "second").await;
    let unload = {
        let mut admin = d.admin().await;
        tokio::spawn(async move {
            admin
                .unload_model(pb::UnloadModelRequest {
                    id: "second".into(),
                })
                .await
        })
    };
    wait_status(&d, "second to drain", |s| {
        model_state(s, "second") == "unloading"
    })
    .await;
    let err = c
        .generate(on("second", "Hi", 4))
        .await
        .expect_err("refused while it drains");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not serving right now"), "{err:?}");
    assert!(err.metadata().get("retry-after-ms").is_some());
    assert_eq!(
        health(&d, "appl.v1.Model/second").await,
        ServingStatus::NotServing
    );
    // The request in flight finishes, every token and its final message.
    let (reason, _) = drain_stream(held, got).await;
    assert!(finished_normally(reason), "finish reason {reason}");
    let op = unload
        .await
        .expect("join")
        .expect("UnloadModel")
        .into_inner();
    assert_eq!(op.outcome, "unloaded");
    assert_eq!(op.sha256, sha);
    assert!(op.message.contains("every request"), "{}", op.message);
    let err = c.generate(on("second", "Hi", 4)).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(model_state(&status(&d).await, "second"), "");

    for s in streams {
        let (reason, tokens) = s.await.expect("join");
        assert!(finished_normally(reason), "finish reason {reason}");
        assert!(tokens > 0);
    }

    // The audit log: the operator's load and unload, with the caller and the digest.
    let dir = d.state_dir().join("audit");
    assert_eq!(d.terminate(), Some(0));
    let store = read_verified(&dir);
    let of = |action: &Action| {
        store
            .records
            .iter()
            .map(|r| &r.record)
            .filter(|r| {
                &r.action == action && r.model.as_ref().map(|m| m.as_str()) == Some("second")
            })
            .collect::<Vec<_>>()
    };
    let loads = of(&Action::ModelLoad);
    assert_eq!(
        loads.iter().map(|r| r.phase).collect::<Vec<_>>(),
        vec![Phase::Admitted, Phase::Completed]
    );
    let done = loads[1];
    assert_eq!(done.role, Role::Operator);
    assert!(done.actor.as_str().starts_with("uid:"), "{}", done.actor);
    assert_eq!(done.status, Some(0));
    assert_eq!(
        done.model_sha256.map(|d| hex::encode(d.0)),
        Some(sha.clone())
    );
    let unloads = of(&Action::admin("model.unload").expect("action"));
    assert_eq!(unloads.len(), 2, "admitted and completed");
    assert_eq!(
        unloads[1].model_sha256.map(|d| hex::encode(d.0)),
        Some(sha.clone())
    );
    // The duplicate load was refused before anything changed, so it wrote no record.
    assert_eq!(loads.len(), 2, "{loads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_loads_the_new_version_beside_the_old_when_both_fit() {
    let d = Daemon::start();
    let (held, got) = held_stream(&d, DEFAULT).await;
    let reload = {
        let mut admin = d.admin().await;
        tokio::spawn(async move {
            admin
                .reload_models(pb::ReloadModelsRequest { id: DEFAULT.into() })
                .await
        })
    };
    // The new version serves while the old one still holds the request in flight.
    wait_status(&d, "the old version to drain", |s| {
        s.models
            .iter()
            .any(|m| m.id == DEFAULT && m.state == "reloading" && m.phase == "draining")
    })
    .await;
    let r = d
        .inference()
        .await
        .generate(greedy("Hello", 4))
        .await
        .expect("served by the new version while the old one drains")
        .into_inner();
    assert_eq!(r.model, DEFAULT);
    assert_eq!(
        health(&d, &format!("appl.v1.Model/{DEFAULT}")).await,
        ServingStatus::Serving
    );
    let (reason, _) = drain_stream(held, got).await;
    assert!(finished_normally(reason), "finish reason {reason}");
    let out = reload
        .await
        .expect("join")
        .expect("ReloadModels")
        .into_inner();
    assert_eq!(out.models.len(), 1);
    assert_eq!(
        out.models[0].outcome, "reloaded_beside",
        "{:?}",
        out.models[0]
    );
    // Without an id, only models whose file changed are reloaded: none here.
    let out = d
        .admin()
        .await
        .reload_models(pb::ReloadModelsRequest { id: String::new() })
        .await
        .expect("ReloadModels")
        .into_inner();
    assert_eq!(out.models[0].outcome, "unchanged");
}

/// What one demo model takes in host RAM with the harness's settings, and the margin the
/// sizing rules keep free: (weights + KV + compute, reserve).
fn one_model_on(inv: &Inventory, model: &Path) -> (u64, u64) {
    let o = Opts::default();
    let info = GgufInfo::from_path(model).expect("demo model");
    let dep = sizing::engine_deployment(&ModelSettings {
        slots: o.slots,
        ctx_per_slot: o.ctx_per_slot,
        batch_tokens: 256,
    });
    let est = sizing::estimate(&info, &dep);
    let p = sizing::fit(&est, inv, GpuLayers::Auto).expect("fits the fixture");
    let cpu = p
        .devices
        .iter()
        .find(|d| d.device == DeviceRef::Cpu)
        .expect("host RAM");
    (cpu.weights + cpu.kv + cpu.compute, cpu.reserve)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_drains_the_old_version_first_when_both_do_not_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/inventories/cpu-only.json");
    let mut inv = Inventory::from_path(&fixture).expect("fixture");
    let (usage, reserve) = one_model_on(&inv, &model_path());
    // Room for one model and half of another.
    inv.memory.available_bytes = usage + reserve + usage / 2;
    let inv_path = dir.path().join("tight.json");
    std::fs::write(&inv_path, inv.to_json()).expect("write inventory");
    let d = Daemon::start_with(Opts {
        extra_config: format!("[sizing]\ninventory = \"{}\"\n", inv_path.display()),
        ..Opts::default()
    });
    let (held, got) = held_stream(&d, DEFAULT).await;
    let reload = {
        let mut admin = d.admin().await;
        tokio::spawn(async move {
            admin
                .reload_models(pb::ReloadModelsRequest { id: DEFAULT.into() })
                .await
        })
    };
    wait_status(&d, "the old version to drain first", |s| {
        s.models
            .iter()
            .any(|m| m.id == DEFAULT && m.state == "reloading" && m.phase == "draining")
    })
    .await;
    // Out of the registry while it drains: a new request is told to retry.
    let err = d
        .inference()
        .await
        .generate(greedy("Hello", 4))
        .await
        .expect_err("nothing serves it while the old version drains");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let (reason, _) = drain_stream(held, got).await;
    assert!(finished_normally(reason), "finish reason {reason}");
    let out = reload
        .await
        .expect("join")
        .expect("ReloadModels")
        .into_inner();
    assert_eq!(
        out.models[0].outcome, "reloaded_after_drain",
        "{:?}",
        out.models[0]
    );
    let r = d
        .inference()
        .await
        .generate(greedy("Hello", 4))
        .await
        .expect("the new version serves")
        .into_inner();
    assert_eq!(r.model, DEFAULT);
    // A model neither configured nor in the model store is unknown.
    let err = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "does-not-exist".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_changed_since_it_was_verified_is_refused() {
    let store = tempfile::tempdir().expect("tempdir");
    let file = store.path().join("imported.gguf");
    std::os::unix::fs::symlink(model_path(), &file).expect("symlink the demo model");
    let sidecar = store.path().join("imported.gguf.sha256");
    std::fs::write(&sidecar, format!("{}  imported.gguf\n", "0".repeat(64))).expect("write");
    let mut d = Daemon::start_with(Opts {
        extra_config: format!("[model_store]\ndir = \"{}\"\n", store.path().display()),
        ..Opts::default()
    });
    let err = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "imported".into(),
        })
        .await
        .expect_err("the digest does not match");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for needle in ["changed on disk since it was verified", "import it again"] {
        assert!(err.message().contains(needle), "{needle:?} in {err:?}");
    }
    assert_eq!(model_state(&status(&d).await, "imported"), "");
    // With the right digest it loads, from the model store, and serves.
    let sha = sha256_hex(&model_path());
    std::fs::write(&sidecar, format!("{sha}  imported.gguf\n")).expect("write");
    let op = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "imported".into(),
        })
        .await
        .expect("LoadModel")
        .into_inner();
    assert_eq!(op.sha256, sha);
    let r = d
        .inference()
        .await
        .generate(on("imported", "Hello", 4))
        .await
        .expect("serves")
        .into_inner();
    assert_eq!(r.model, "imported");
    let dir = d.state_dir().join("audit");
    assert_eq!(d.terminate(), Some(0));
    let records = read_verified(&dir).records;
    let failed = records
        .iter()
        .map(|r| &r.record)
        .find(|r| {
            r.action == Action::ModelLoad
                && r.phase == Phase::Completed
                && r.status == Some(Code::FailedPrecondition as u32)
        })
        .expect("the refused load is recorded");
    assert_eq!(
        failed.reason.as_ref().map(|r| r.as_str()),
        Some("file_changed")
    );
    assert_eq!(failed.model_sha256.map(|d| hex::encode(d.0)), Some(sha));
}
