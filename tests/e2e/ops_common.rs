//! Helpers for the tests of running the appliance (models at run time, health, import,
//! diagnose, monitoring): applctl, grpc.health, waiting for the daemon's state, demo model facts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use appl_proto::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::Daemon;

/// The `applctl` binary that `cargo build --workspace --all-targets` builds beside `appld`.
pub fn applctl() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    assert!(
        p.exists(),
        "{} is missing; build the workspace first (cargo build --workspace --all-targets)",
        p.display()
    );
    p
}

/// Runs `applctl ARGS` against `socket` (if any) and returns (exit code, stdout, stderr).
pub fn ctl(socket: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(applctl());
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    cmd.args(args)
        .env_remove("APPL_ADDR")
        .env_remove("APPL_SOCKET")
        .env_remove("APPL_MODEL_DIR");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run applctl");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The grpc.health.v1 status of `service`.
pub async fn health(d: &Daemon, service: &str) -> ServingStatus {
    let r = HealthClient::new(d.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
}

/// `Admin.Status`.
pub async fn status(d: &Daemon) -> pb::StatusResponse {
    d.admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("Admin.Status")
        .into_inner()
}

/// Polls `Admin.Status` until `f` holds, for up to two minutes (a busy machine is slow).
pub async fn wait_status(
    d: &Daemon,
    what: &str,
    f: impl Fn(&pb::StatusResponse) -> bool,
) -> pb::StatusResponse {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(d).await;
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; last status: {s:#?}\nlog:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state of model `id` in a status (`serving`, `unloading`...), or `""` when absent.
pub fn model_state<'a>(s: &'a pb::StatusResponse, id: &str) -> &'a str {
    s.models
        .iter()
        .find(|m| m.id == id)
        .map_or("", |m| m.state.as_str())
}

/// The SHA-256 of a file, in hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).expect("read the file to hash");
    hex::encode(Sha256::digest(&bytes))
}
