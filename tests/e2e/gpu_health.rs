//! Live GPU health with a fake GPU: the daemon sizes against a recorded RTX 4090 inventory (so
//! the demo model's layers sit on GPU0) and reads a recorded health file that the test
//! rewrites. Throttling shows as a warning and nothing stops; an uncorrectable ECC error takes
//! the model out of service (grpc.health per model, UNAVAILABLE naming the GPU and the error),
//! keeps new models off that GPU, and is recorded in the audit log.

use std::path::{Path, PathBuf};

use appl_audit::{Action, Phase};
use appl_firmware_profiles::health::recorded::RecordedSample;
use appl_firmware_profiles::health::{GpuHealth, Throttle};
use appl_firmware_profiles::inventory::GpuVendor;
use appl_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::audit::read_verified;
use crate::harness::{greedy, model_path, Daemon, Opts};
use crate::ops_common::{health, model_state, sha256_hex, wait_status};

const DEFAULT: &str = "gemma-3-270m";
const GPU_NAME: &str = "NVIDIA GeForce RTX 4090";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/inventories")
        .join(name)
}

/// A healthy GPU0 as NVML would report it.
pub fn healthy_gpu() -> GpuHealth {
    let mut g = GpuHealth::new(0, GpuVendor::Nvidia, GPU_NAME);
    g.memory_total_bytes = 24 << 30;
    g.memory_used_bytes = 2 << 30;
    g.utilization_pct = Some(40.0);
    g.temperature_c = Some(55.0);
    g.power_w = Some(210.0);
    g.power_limit_w = Some(450.0);
    g.ecc_corrected = Some(0);
    g.ecc_uncorrected = Some(0);
    g
}

/// Replaces the recorded health file whole (the daemon never reads half of it).
pub fn write_health(path: &Path, gpu: &GpuHealth) {
    let tmp = path.with_extension("tmp");
    let s = RecordedSample {
        gpus: vec![gpu.clone()],
    };
    std::fs::write(&tmp, s.to_json()).expect("write health");
    std::fs::rename(&tmp, path).expect("rename health");
}

/// A daemon on the recorded RTX 4090 with a recorded health file sampled every 100 ms, and a
/// second model configured but not loaded.
pub fn daemon_on_a_fake_gpu(dir: &Path) -> (Daemon, PathBuf) {
    let recorded = dir.join("health.json");
    write_health(&recorded, &healthy_gpu());
    let d = Daemon::start_with(Opts {
        extra_config: format!(
            "[sizing]\ninventory = \"{}\"\n[health]\ninterval_ms = 100\nrecorded = \"{}\"\n\
             [[models]]\nid = \"second\"\npath = \"{}\"\nslots = 1\nctx_per_slot = 256\n\
             batch_tokens = 64\nthreads = 1\nautoload = false\n",
            fixture("rtx-4090.json").display(),
            recorded.display(),
            model_path().display()
        ),
        ..Opts::default()
    });
    (d, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_fault_takes_the_model_on_it_out_of_service_and_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut d, recorded) = daemon_on_a_fake_gpu(dir.path());
    let service = format!("appl.v1.Model/{DEFAULT}");
    let s = wait_status(&d, "a health sample", |s| s.gpus.len() == 1).await;
    assert_eq!(s.gpus[0].name, GPU_NAME);
    assert_eq!(s.gpus[0].models, vec![DEFAULT.to_owned()]);
    let m = s.models.iter().find(|m| m.id == DEFAULT).expect("model");
    assert_eq!((m.state.as_str(), m.gpus.clone()), ("serving", vec![0]));
    assert_eq!(health(&d, &service).await, ServingStatus::Serving);

    // Throttling is a warning: status says so, and the model serves on.
    let mut gpu = healthy_gpu();
    gpu.throttle = vec![Throttle::Thermal];
    write_health(&recorded, &gpu);
    wait_status(&d, "the throttling warning", |s| {
        s.gpus[0].warnings.iter().any(|w| w.contains("thermal"))
    })
    .await;
    assert_eq!(
        d.metric("appl_gpu_throttled{gpu=\"0\",reason=\"thermal\"}"),
        1.0
    );
    let mut c = d.inference().await;
    c.generate(greedy("Hello", 4))
        .await
        .expect("a throttled GPU still serves");
    assert_eq!(health(&d, &service).await, ServingStatus::Serving);

    // An uncorrectable ECC error is a fault.
    gpu.ecc_uncorrected = Some(2);
    write_health(&recorded, &gpu);
    let s = wait_status(&d, "the model out of service", |s| {
        model_state(s, DEFAULT) == "faulted"
    })
    .await;
    assert!(!s.gpus[0].faults.is_empty(), "{:?}", s.gpus[0]);
    assert_eq!(health(&d, &service).await, ServingStatus::NotServing);
    let err = c
        .generate(greedy("Hello", 4))
        .await
        .expect_err("the model is out of service");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    for needle in ["GPU0", GPU_NAME, "uncorrectable ECC"] {
        assert!(err.message().contains(needle), "{needle:?} in {err:?}");
    }
    assert_eq!(d.metric("appl_gpu_fault{gpu=\"0\"}"), 1.0);
    assert_eq!(
        d.metric(&format!("appl_model_serving{{model=\"{DEFAULT}\"}}")),
        0.0
    );
    // A fault is latched: a clean reading does not put the model back.
    write_health(&recorded, &healthy_gpu());
    let samples = d.metric("appl_health_samples_total");
    wait_status(&d, "two more samples", |_| {
        d.metric("appl_health_samples_total") >= samples + 2.0
    })
    .await;
    let err = c.generate(greedy("Hello", 4)).await.expect_err("latched");
    assert_eq!(err.code(), Code::Unavailable);
    // Nothing new goes onto that GPU.
    let err = d
        .admin()
        .await
        .load_model(pb::LoadModelRequest {
            id: "second".into(),
        })
        .await
        .expect_err("the GPU has a fault");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("GPU0 has a fault"), "{err:?}");
    // The daemon as a whole still answers (status, other services).
    assert_eq!(health(&d, "appl.v1.Admin").await, ServingStatus::Serving);

    let audit = d.state_dir().join("audit");
    assert_eq!(d.terminate(), Some(0));
    let records = read_verified(&audit).records;
    let fault = records
        .iter()
        .map(|r| &r.record)
        .find(|r| r.action == Action::admin("hardware.fault").expect("action"))
        .expect("the fault is recorded");
    assert_eq!(
        fault.reason.as_ref().map(|r| r.as_str()),
        Some("gpu0:ecc_uncorrectable")
    );
    assert_eq!(fault.model.as_ref().map(|m| m.as_str()), Some(DEFAULT));
    assert_eq!(
        fault.model_sha256.map(|d| hex::encode(d.0)),
        Some(sha256_hex(&model_path()))
    );
    assert_eq!(fault.status, Some(Code::Unavailable as u32));
    let refused = records
        .iter()
        .map(|r| &r.record)
        .find(|r| {
            r.action == Action::ModelLoad && r.phase == Phase::Completed && r.status != Some(0)
        })
        .expect("the refused load is recorded");
    assert_eq!(
        refused.reason.as_ref().map(|r| r.as_str()),
        Some("gpu_fault")
    );
    // Refused before the file was read, it still names the file by its known digest.
    assert_eq!(
        refused.model_sha256.map(|d| hex::encode(d.0)),
        Some(sha256_hex(&model_path()))
    );
}
